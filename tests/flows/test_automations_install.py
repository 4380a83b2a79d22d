"""`custody automations install`: webhook block and critical-result automation in one command.

Against the session's loopback `prefect server start`, with a webhook on a loopback HTTP server:
`custody labs stage --example critical`, then an ingestion run, and the notification arrives.
The latency printed (critical result audited -> webhook received) is the figure in the README.
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from custody.cli import main
from custody.store.tables import audit_log
from tests.support.env import custody_env
from tests.support.prefect_server import api_call, shared_prefect_server

pytestmark = pytest.mark.xdist_group("deployed-custody")
CUSTODY = str(Path(sys.executable).parent / "custody")
INGEST = (
    "from flows.ingest_lab_results import IngestParams, ingest_lab_results\n"
    "s = ingest_lab_results(IngestParams(source='store:inbox'))\n"
    "print(s.results, s.critical)"
)


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[tuple[datetime, str]]]]:
    """A loopback HTTP server recording (arrival time, body) of each POST."""
    received: list[tuple[datetime, str]] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            received.append((datetime.now(UTC), body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()


def test_install_refuses_without_a_server(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    # Other tests in this process may have pointed Prefect's settings context at a server.
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(["automations", "install", "--block", "on-call"]) == 2
    assert "PREFECT_API_URL is not set" in capsys.readouterr().err


@pytest.mark.slow
def test_one_command_installs_the_automation_and_a_staged_example_notifies(
    request: pytest.FixtureRequest,
    pg_store: Engine,
    tmp_path: Path,
    webhook: tuple[str, list[tuple[datetime, str]]],
) -> None:
    url, received = webhook
    server = shared_prefect_server(request)
    store_url = pg_store.url.render_as_string(hide_password=False)
    settings = custody_env(store_url=store_url) | {
        "CUSTODY_OBJECT_STORE_URL": f"file://{tmp_path / 'objects'}"
    }
    env = server.client_env(**settings)
    install = [CUSTODY, "automations", "install", "--block", "on-call", "--webhook-url", url]
    for _ in range(2):  # installing again replaces, it does not duplicate
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "custody-critical-lab-result" in done.stdout and server.api_url in done.stdout
    found = api_call("POST", f"{server.api_url}/automations/filter", json={}).json()
    [automation] = [a for a in found if a["name"] == "custody-critical-lab-result"]
    try:
        staged = subprocess.run([CUSTODY, "labs", "stage", "--example", "critical"], env=env,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert staged.returncode == 0 and staged.stdout.startswith("store:inbox/"), staged.stderr
        # In a process of its own, as a deployment runs it: Prefect's events client is a
        # process-wide service, bound to whichever server this test process used first.
        ingest = subprocess.run([sys.executable, "-c", INGEST], env=env, capture_output=True,
                                text=True, timeout=180)  # fmt: skip
        assert ingest.returncode == 0, ingest.stderr[-3000:]
        assert ingest.stdout.split()[-2:] == ["1", "1"], ingest.stdout  # results, critical
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        api_call("DELETE", f"{server.api_url}/automations/{automation['id']}")
    with pg_store.connect() as conn:
        seq, detected = conn.execute(
            select(audit_log.c.seq, audit_log.c.occurred_at).where(
                audit_log.c.action == "lab.critical_result.detected"
            )
        ).one()
    [(arrived, body)] = received
    latency = (arrived - detected).total_seconds()
    print(f"critical result audited -> webhook received: {latency:.2f} s")
    assert f"audit_log seq {seq} " in body and latency < 15
    assert "MRN-EXAMPLE" not in body and "EXAMPLE^TEST" not in body and "6.8" not in body
