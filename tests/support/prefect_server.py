"""A real ``prefect server start`` on loopback, with its own home, port and database.

The deployment tests need what users run: a server process, ``prefect deploy`` and a worker as
separate processes talking to it over HTTP. One such server serves every test that asks for it
in a session (``shared_prefect_server``) and is stopped when the session ends. It boots in the
background (``start_shared_prefect_server``) while a test prepares its data: on two busy cores
the boot takes 15-30 s, mostly imports and the migrations of a fresh database.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = ROOT / "infra" / "prefect" / "setup_server.py"
STARTUP_TIMEOUT_S = 180

#: Services the tests do not use; off, they leave the CPU to the flows (2 cores). The scheduler
#: stays on (the tests check that schedules deployed switched off create no runs), and so do
#: the task-run recorder, the repossessor (concurrency leases) and the triggers (automations:
#: `custody automations install` is tested here).
_UNUSED_SERVICES = (
    "FOREMAN", "LATE_RUNS", "PAUSE_EXPIRATIONS", "CANCELLATION_CLEANUP",
    "EVENT_PERSISTER",
)  # fmt: skip


@dataclass
class PrefectServer:
    """A server process: its API URL and the environment a client process needs to reach it."""

    api_url: str
    home: Path
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str] = field(default_factory=dict)

    def client_env(self, **extra: str) -> dict[str, str]:
        """This process's environment pointed at the server (for prefect CLI / worker children).

        Drops the test session's own PREFECT_* and CUSTODY_* variables, so a child sees only
        this server and the settings given in ``extra``.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CUSTODY_"))}
        return env | self.env | {"PREFECT_API_URL": self.api_url} | extra

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT_S) -> PrefectServer:
        """Block until ``/health`` answers; a clear error with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prefect server exited:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.2)
        raise RuntimeError(f"prefect server not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the server's process group (it spawns uvicorn), SIGKILL if it lingers."""
        _stop_group(self.process)

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's log, for assertion messages."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def api_call(method: str, url: str, **kwargs: object) -> httpx.Response:
    """One REST call, retried as Prefect's own client retries while the server is busy.

    A SQLite-backed server under load answers 503 now and then ("database is locked"); any
    real caller of the API has to retry those, so the tests do too.
    """
    for attempt in range(8):
        response = httpx.request(method, url, timeout=30, **kwargs)  # type: ignore[arg-type]
        if response.status_code not in (429, 502, 503):
            return response
        time.sleep(0.5 * 2**attempt)
    return response


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_prefect_server(root: Path) -> PrefectServer:
    """Launch ``prefect server start`` on a free loopback port; does not wait for it."""
    home = root / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | env
    # The UI and the API must agree on the port: set it, not --port (FACTS.md).
    server_env |= {
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
        "PREFECT_UI_ENABLED": "true",  # tests/flows/test_ui_tour.py drives it in Chromium
    }
    for service in _UNUSED_SERVICES:
        server_env[f"PREFECT_SERVER_SERVICES_{service}_ENABLED"] = "false"
    log = root / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start"],
            env=server_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return PrefectServer(f"http://127.0.0.1:{port}/api", home, process, log, env)


def _stop_group(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


_SERVER = pytest.StashKey[PrefectServer]()
_SETUP = pytest.StashKey[list[str]]()
_DEPLOYED = pytest.StashKey["DeployedProject"]()


def start_shared_prefect_server(request: pytest.FixtureRequest) -> PrefectServer:
    """The session's server, launched on first use (not waited for); stopped at session end.

    A plain session fixture imported into two test modules would start two servers; keeping it
    in the config stash makes every module share one.
    """
    stash = request.config.stash
    if _SERVER not in stash:
        root = Path(tempfile.mkdtemp(prefix="custody-prefect-server-"))
        server = start_prefect_server(root)
        stash[_SERVER] = server
        request.config.add_cleanup(lambda: shutil.rmtree(root, ignore_errors=True))
        request.config.add_cleanup(server.stop)  # cleanups run last-in first-out
    return stash[_SERVER]


def shared_prefect_server(request: pytest.FixtureRequest) -> PrefectServer:
    """The session's server, healthy."""
    return start_shared_prefect_server(request).wait_healthy()


@dataclass
class DeployedProject:
    """The session's server after ``infra/prefect/setup_server.py`` and ``prefect deploy --all``."""

    server: PrefectServer
    setup_output: list[str]
    deploy_seconds: float

    def deployment_ids(self) -> dict[str, str]:
        """Deployment name -> id, read from the server now."""
        found = api_call("POST", f"{self.server.api_url}/deployments/filter", json={})
        found.raise_for_status()
        return {d["name"]: d["id"] for d in found.json()}


def set_up_custody(request: pytest.FixtureRequest) -> PrefectServer:
    """The shared server after the setup script (schedules off); the pool exists from here on."""
    server = shared_prefect_server(request)
    if _SETUP not in request.config.stash:
        request.config.stash[_SETUP] = run_setup(server, "--schedules", "off")
    return server


def deployed_custody(
    request: pytest.FixtureRequest, while_deploying: Callable[[], None] | None = None
) -> DeployedProject:
    """The shared server with custody set up (schedules off) and every deployment deployed.

    Exactly what the README tells a user to run: the setup script, then ``prefect deploy
    --all`` from the checkout's root in a process of its own. ``while_deploying`` runs while
    the deploy does (e.g. starting a worker, which only needs the pool).
    """
    stash = request.config.stash
    server = set_up_custody(request)
    if _DEPLOYED in stash:
        if while_deploying:
            while_deploying()
        return stash[_DEPLOYED]
    started = time.monotonic()
    log = server.home.parent / "deploy.log"
    with log.open("wb") as out:
        deploy = subprocess.Popen(
            [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
            cwd=ROOT,
            env=server.client_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        if while_deploying:
            while_deploying()
        deploy.wait(timeout=300)
    finally:
        if deploy.poll() is None:
            deploy.kill()
            deploy.wait()
    if deploy.returncode != 0:
        raise RuntimeError(f"prefect deploy --all failed:\n{log.read_text()[-5000:]}")
    stash[_DEPLOYED] = DeployedProject(server, stash[_SETUP], time.monotonic() - started)
    return stash[_DEPLOYED]


def run_setup(server: PrefectServer, *args: str) -> list[str]:
    """Run infra/prefect/setup_server.py's ``main`` in this process against ``server``."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    spec = importlib.util.spec_from_file_location("custody_setup_server", SETUP_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = io.StringIO()
    with temporary_settings({PREFECT_API_URL: server.api_url}), redirect_stdout(out):
        code = module.main(list(args))
    if code != 0:
        raise RuntimeError(f"setup_server.py {' '.join(args)} exited {code}:\n{out.getvalue()}")
    return out.getvalue().splitlines()
