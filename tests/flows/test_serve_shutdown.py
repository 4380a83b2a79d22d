"""`custody serve` stops cleanly on SIGTERM (what systemd, Kubernetes and `kill` send)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.support.env import custody_env
from tests.support.prefect_server import api_call, shared_prefect_server

pytestmark = pytest.mark.xdist_group("deployed-custody")


@pytest.mark.slow
def test_custody_serve_stops_cleanly_on_sigterm(
    request: pytest.FixtureRequest, pg_store: Engine, tmp_path: Path
) -> None:
    server = shared_prefect_server(request)
    env = server.client_env(**custody_env(store_url=pg_store.url.render_as_string()))
    custody = str(Path(sys.executable).parent / "custody")
    proc = subprocess.Popen(
        [custody, "serve", "audit-maintenance", "--no-schedules"], cwd=tmp_path,
        env=env | {"PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        # The deployment may be on the shared server already (another test served it): wait for
        # serve's own word that it is ready, then for the registration.
        url = f"{server.api_url}/deployments/name/audit-maintenance/audit-maintenance"
        deadline = time.monotonic() + 120
        while not any("Stop with Ctrl-C or SIGTERM" in line for line in list(lines)):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.3)
        while api_call("GET", url).status_code != 200:
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not register"
            time.sleep(0.3)
        time.sleep(2)  # the runner is polling for work now
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(lines)
    assert proc.returncode == 0, output
    assert "never awaited" not in output and "Traceback" not in output, output
    assert "Stopping: no new flow runs" in output
