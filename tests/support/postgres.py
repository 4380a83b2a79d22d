"""A PostgreSQL server for the tests: the machine's own, or a private cluster started here.

Order: ``CUSTODY_TEST_PG_URL`` if set; else the server at 127.0.0.1:5432 (user postgres, trust);
else a throwaway cluster made with the local ``initdb``; else a clear failure saying what to
install. Never a silent skip.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
INSTALL_HINT = (
    "PostgreSQL is needed for the tests and none was found: nothing answers at "
    "127.0.0.1:5432 and no initdb is installed. Install it (Debian: apt-get install "
    "postgresql) or point CUSTODY_TEST_PG_URL at a server where the user may create databases."
)


def _reachable(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _initdb() -> str | None:
    found = shutil.which("initdb")
    if found:
        return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return candidates[-1] if candidates else None


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yield an admin URL (database ``postgres``) of a running server."""
    explicit = os.environ.get("CUSTODY_TEST_PG_URL")
    if explicit:
        if not _reachable(explicit):
            raise RuntimeError("CUSTODY_TEST_PG_URL is set but the server does not answer")
        yield explicit
        return
    if _reachable(DEFAULT_URL):
        yield DEFAULT_URL
        return
    _bindir()  # fails saying what to install before anything is created
    with _private_cluster() as url:
        yield url


@contextlib.contextmanager
def _private_cluster() -> Iterator[str]:
    root = Path(tempfile.mkdtemp(prefix="custody-pg-"))
    try:
        yield start_cluster(root)
    finally:
        stop_cluster(root, mode="immediate")
        shutil.rmtree(root, ignore_errors=True)


def _bindir() -> Path:
    initdb = _initdb()
    if initdb is None:
        raise RuntimeError(INSTALL_HINT)
    return Path(initdb).parent


def _as_postgres(root: Path) -> list[str]:
    """initdb and postgres refuse to run as root: run them as the postgres user instead."""
    if os.geteuid() != 0:
        return []
    shutil.chown(root, "postgres", "postgres")
    return ["runuser", "-u", "postgres", "--"]


def start_cluster(root: Path, port: int | None = None) -> str:
    """Start a trust-auth cluster kept under ``root`` on loopback; return its admin URL.

    The first start runs initdb; starting again with the same root and port restarts the same
    cluster (``infra/dev/services`` keeps one this way between sessions).
    """
    bindir, data = _bindir(), root / "data"
    port = port or _free_port()
    root.mkdir(parents=True, exist_ok=True)
    as_user = _as_postgres(root)
    if not (data / "PG_VERSION").exists():
        subprocess.run(
            [*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
             "--no-sync"],
            check=True,
            capture_output=True,
        )  # fmt: skip
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-w",
         "-l", str(root / "log"), "start"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    deadline = time.monotonic() + 30
    while not _reachable(url):
        if time.monotonic() > deadline:
            raise RuntimeError(f"private PostgreSQL did not start; see {root / 'log'}")
        time.sleep(0.2)
    return url


def stop_cluster(root: Path, mode: str = "fast") -> None:
    """Stop the cluster under ``root`` (its data stay for the next start)."""
    subprocess.run(
        [*_as_postgres(root), str(_bindir() / "pg_ctl"), "-D", str(root / "data"), "-m", mode,
         "stop"],
        capture_output=True,
    )  # fmt: skip


class DatabaseFactory:
    """Creates fresh databases on a server and drops them all at the end of the session."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def create(self, label: str = "db") -> str:
        name = f"custody_test_{label}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        base = self.admin_url.rsplit("/", 1)[0]
        return f"{base}/{name}"

    def drop_all(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            for name in self.created:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()
