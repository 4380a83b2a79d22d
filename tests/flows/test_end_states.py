"""Runs that stop as planned end Failed or Cancelled without an ERROR in their logs.

Served from a child process against the session's loopback Prefect server, as ``custody serve``
serves them: an approval denied (Cancelled), an approval nobody gives in time (Failed) and a
migration with a chunk the target refuses (Failed, partial_failure). Each run's logs are read
back from the Prefect API, as the Logs tab shows them: no record at ERROR or above (but the
refused chunk's own task run), and no "cannot be resolved into an exception".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from custody.db import get_engine
from tests.support.env import custody_env
from tests.support.pagila import table_digests
from tests.support.postgres import DatabaseFactory
from tests.support.prefect_server import (
    ROOT,
    PrefectServer,
    api_call,
    shared_prefect_server,
    start_shared_prefect_server,
)
from tests.support.tables import make_keys

pytestmark = pytest.mark.xdist_group("deployed-custody")

SERVE = (
    "from prefect import serve; from flows.migrate import migrate_tables; "
    "from tests.support.end_states import approval_timeout_probe; "
    "serve(migrate_tables.to_deployment(name='end-states'), "
    "approval_timeout_probe.to_deployment(name='end-states'))"
)
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _poll(check: Callable[[], Any], what: str | Callable[[], str], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, (
            f"timed out waiting for {what if isinstance(what, str) else what()}"
        )
        time.sleep(0.3)
    return found


def _run(api: str, deployment: str, params: dict[str, Any]) -> str:
    found = api_call("GET", f"{api}/deployments/name/{deployment}/end-states")
    found.raise_for_status()
    response = api_call(
        "POST", f"{api}/deployments/{found.json()['id']}/create_flow_run",
        json={"parameters": params},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _state(api: str, run_id: str) -> dict[str, Any]:
    state: dict[str, Any] = api_call("GET", f"{api}/flow_runs/{run_id}").json()["state"]
    return state


def _registered(url: str, proc: subprocess.Popen[bytes]) -> bool:
    return api_call("GET", url).status_code == 200 or proc.poll() is not None


def _final(api: str, run_id: str) -> dict[str, Any] | None:
    state = _state(api, run_id)
    return state if state["type"] in FINAL else None


def _logged_end(api: str, run_id: str) -> bool:
    return any("stopped as planned" in x["message"] for x in run_logs(api, run_id))


def _log_text(api: str, run_id: str) -> str:
    return f"the end of {run_id}'s logs: {[x['message'] for x in run_logs(api, run_id)]}"


def run_artifacts(api: str, run_id: str) -> list[dict[str, Any]]:
    """The run's artifacts as the API has them (latest version of each key)."""
    body = {"artifacts": {"flow_run_id": {"any_": [run_id]}}, "limit": 200}
    response = api_call("POST", f"{api}/artifacts/filter", json=body)
    response.raise_for_status()
    return [a for a in response.json() if a["key"]]


def run_logs(api: str, run_id: str, min_level: int = 0) -> list[dict[str, Any]]:
    """The run's log records as the Prefect API (and the UI's Logs tab) has them."""
    body = {"logs": {"flow_run_id": {"any_": [run_id]}, "level": {"ge_": min_level}},
            "sort": "TIMESTAMP_ASC", "limit": 200}  # fmt: skip
    response = api_call("POST", f"{api}/logs/filter", json=body)
    response.raise_for_status()
    return list(response.json())


@pytest.fixture
def served(
    request: pytest.FixtureRequest,
    pg_store: Engine,
    pg_databases: DatabaseFactory,
    tmp_path: Path,
) -> Iterator[tuple[PrefectServer, dict[str, str]]]:
    """migrate-tables and the timeout probe served by a child process; three databases."""
    start_shared_prefect_server(request)
    urls = {name: pg_databases.create(name) for name in ("src", "full", "picky")}
    make_keys(get_engine(urls["src"]), 3_000)
    make_keys(get_engine(urls["full"]), 10)  # a target that already has rows: approval needed
    with psycopg.connect(urls["picky"], autocommit=True) as conn:  # refuses one row
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL "
                     "CONSTRAINT no_k1234 CHECK (label <> 'k1234'))")  # fmt: skip
    server = shared_prefect_server(request)
    env = server.client_env(
        **custody_env(store_url=pg_store.url.render_as_string(hide_password=False),
                      connections=urls),
        CUSTODY_APPROVAL_POLL_SECONDS="1", PREFECT_RUNNER_POLL_FREQUENCY="1",
    )  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVE], cwd=ROOT, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        api = server.api_url
        for name in ("migrate-tables", "approval-timeout-probe"):
            url = f"{api}/deployments/name/{name}/end-states"
            _poll(partial(_registered, url, proc), f"{name} served")
        assert proc.poll() is None, log.read_text(errors="replace")[-4000:]
        yield server, urls
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        print(f"--- serve.log ---\n{log.read_text(errors='replace')[-6000:]}")


@pytest.mark.slow
def test_denied_timed_out_and_partly_failed_runs_log_no_error(
    served: tuple[PrefectServer, dict[str, str]],
) -> None:
    server, urls = served
    api = server.api_url
    migrate = {"source": "src", "tables": ["items"], "chunk_size": 1_000}
    before = table_digests(urls["full"])
    ask = {"replace_existing": True, "require_approval": True, "job_id": "deny-1"}
    denied = _run(api, "migrate-tables", {"params": {**migrate, "target": "full", **ask}})
    partly = _run(api, "migrate-tables", {"params": {**migrate, "target": "picky"}})
    late = _run(api, "approval-timeout-probe", {})

    _poll(lambda: _state(api, denied)["type"] == "PAUSED", "the run to pause for approval")
    answer = {"run_input": {"approver": "jdoe", "approved": False, "reason": ""}}
    assert api_call("POST", f"{api}/flow_runs/{denied}/resume", json=answer).json()["status"] == (
        "ACCEPT"
    )
    runs = {denied: "CANCELLED", partly: "FAILED", late: "FAILED"}
    states = {r: _poll(partial(_final, api, r), r) for r in runs}
    assert {r: s["type"] for r, s in states.items()} == runs, states
    assert "denied by jdoe" in states[denied]["message"]
    assert "partial_failure" in states[partly]["message"]
    assert table_digests(urls["full"]) == before  # denied: nothing touched

    by_key = {a["key"]: a for a in run_artifacts(api, denied)}
    assert "waiting for approval" in by_key["migration-plan-deny-1"]["data"]
    assert "dry run" not in by_key["migration-plan-deny-1"]["data"]
    assert "Denied** by `jdoe`" in by_key["approval-deny-1"]["data"]
    assert "paused" not in by_key["approval-deny-1"]["data"]
    assert "Not approved in time" in run_artifacts(api, late)[0]["data"]
    keys = {a["key"] for a in run_artifacts(api, partly)}
    assert {f"migrate-{partly}-audit", f"migrate-{partly}-audit-summary"} <= keys, keys
    assert not any(k.startswith("migrate-migrate") for k in keys), keys

    for run_id in runs:  # the engine's last word on the run arrives as one INFO line
        _poll(partial(_logged_end, api, run_id), partial(_log_text, api, run_id), timeout=30)
        errors = run_logs(api, run_id, min_level=40)
        if run_id == partly:  # the chunk the target refused is an error, and says which
            assert {e["name"] for e in errors} == {"prefect.task_runs"}, errors
            assert all(
                f"ChunkFailedError: chunk migrate-{partly}.items#1" in e["message"] for e in errors
            )
        else:
            assert errors == [], [e["message"][:300] for e in errors]
        assert not any("cannot be resolved" in x["message"] for x in run_logs(api, run_id))
