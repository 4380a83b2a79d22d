"""A migration cancelled through the API while it runs, and the re-run that finishes it.

Cancellation needs something that watches for it: here the flow is served in a child process
against the session's Prefect server, as ``custody serve`` does (``serve(flow.to_deployment())``),
and its runner kills the flow run's process when the run is set to Cancelling.

Not ``migrate_tables.serve()``: in Prefect 3.8 that path cloudpickles the flow function by value
into the run's process, without the module globals its string annotations name (``flows/migrate.py``
uses ``from __future__ import annotations``), and every run fails parameter validation.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest
from prefect.settings import PREFECT_API_URL
from sqlalchemy import Engine, select

from custody.audit import Keyring, verify_chain
from custody.db import get_engine
from custody.quality import preload as preload_quality_checks
from custody.store.tables import job_chunks
from flows.migrate import MigrateParams, migrate_tables
from tests.support.approval import audit_rows, flow_run_state
from tests.support.env import TEST_KEYS, custody_env, set_custody_env
from tests.support.kill import processed_per_chunk, verified_chunks
from tests.support.pagila import table_digests
from tests.support.tables import make_keys

ROOT = Path(__file__).resolve().parents[2]
KEYRING = Keyring("k1", {k: v.encode() for k, v in TEST_KEYS.items()})
CHUNKS = 30
SERVE = (
    "from prefect import serve; from flows.migrate import migrate_tables; "
    "serve(migrate_tables.to_deployment(name='cancel-test'))"
)
# Each chunk's COPY into the target waits 0.2 s, so the run is still busy when cancelled.
SLOW_TARGET = """
CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL);
CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN PERFORM pg_sleep(0.2); RETURN NULL; END $$;
CREATE TRIGGER slow BEFORE INSERT ON items FOR EACH STATEMENT EXECUTE FUNCTION slow();
"""


def _wait(condition, what: str, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _deployment_id(api: str, server: subprocess.Popen[bytes]) -> str:
    found: dict[str, str] = {}

    def registered() -> bool:
        assert server.poll() is None, "the serve process exited"
        response = httpx.get(f"{api}/deployments/name/migrate-tables/cancel-test", timeout=30)
        if response.status_code == 200:
            found["id"] = response.json()["id"]
        return "id" in found

    _wait(registered, "the served deployment")
    return found["id"]


def _cancelled(run_id: str) -> bool:
    state = flow_run_state(run_id)["type"]
    assert state not in ("COMPLETED", "FAILED", "CRASHED"), f"the run ended {state}, not cancelled"
    return bool(state == "CANCELLED")


def _range_digest(url: str, lower: int | None, upper: int) -> tuple[int, str]:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*), md5(string_agg(id || ':' || label, ',' ORDER BY id)) FROM items "
            "WHERE id > %s AND id <= %s",
            (lower if lower is not None else -1, upper),
        ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


@pytest.mark.slow
def test_a_cancelled_migration_stays_consistent_and_a_rerun_finishes_it(
    prefect_api: str,
    pg_store: Engine,
    pg_databases,  # type: ignore[no-untyped-def]
    monkeypatch,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    src, dst = pg_databases.create("src"), pg_databases.create("dst")
    store_url = pg_store.url.render_as_string(hide_password=False)
    env = {
        **os.environ,
        **custody_env(store_url, {"src": src, "dst": dst}),
        "PREFECT_API_URL": prefect_api,
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    api = str(PREFECT_API_URL.value()).rstrip("/")
    with (tmp_path / "serve.log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-c", SERVE], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            make_keys(get_engine(src), CHUNKS * 2_500)
            with psycopg.connect(dst, autocommit=True) as conn:
                conn.execute(SLOW_TARGET)
            params = {"source": "src", "target": "dst", "tables": ["items"], "chunk_size": 2_500,
                      "max_concurrency": 2, "job_id": "cancel-1"}  # fmt: skip
            created = httpx.post(
                f"{api}/deployments/{_deployment_id(api, server)}/create_flow_run",
                json={"parameters": {"params": params}},
                timeout=30,
            )
            run_id = created.json()["id"]
            _wait(lambda: verified_chunks(pg_store) >= 2, "two verified chunks")
            assert flow_run_state(run_id)["type"] == "RUNNING"
            cancel = httpx.post(
                f"{api}/flow_runs/{run_id}/set_state",
                json={"state": {"type": "CANCELLING"}},
                timeout=30,
            )  # what the UI's Cancel button does
            assert cancel.json()["status"] == "ACCEPT"
            preload_quality_checks()  # the re-run's GX import, while the runner waits for exit
            _wait(lambda: _cancelled(run_id), "the run to be cancelled")
        finally:
            server.terminate()
            server.wait(60)

    with pg_store.connect() as c:
        chunks = {r.chunk_no: r for r in c.execute(select(job_chunks))}
    verified = {n for n, r in chunks.items() if r.status == "verified"}
    assert 2 <= len(verified) < CHUNKS, "the run was not cancelled mid-way"
    for n in verified:  # a verified chunk is really there, as counted and hashed
        row = chunks[n]
        lower = None if row.lower_key is None else int(row.lower_key)
        assert _range_digest(dst, lower, int(row.upper_key)) == _range_digest(
            src, lower, int(row.upper_key)
        )
        assert row.target_count == row.source_count == 2_500
    assert processed_per_chunk(pg_store, "data.migration.chunk_processed") == {
        n: 1 for n in verified
    }
    [cancelled] = audit_rows(pg_store, "data.migration.cancelled")
    assert cancelled.correlation_id == run_id and cancelled.resource_id == "cancel-1"
    assert cancelled.details["chunks"]["verified"] == len(verified)  # counted after the kill

    with psycopg.connect(dst, autocommit=True) as conn:
        conn.execute("DROP TRIGGER slow ON items")
    set_custody_env(monkeypatch, store_url=store_url, connections={"src": src, "dst": dst})
    result = migrate_tables(MigrateParams(**params))
    assert result.status == "success", result.model_dump_json()
    [table] = result.tables
    assert (table.already_verified, table.verified_now) == (len(verified), CHUNKS - len(verified))
    assert processed_per_chunk(pg_store, "data.migration.chunk_processed") == {
        n: 1 for n in range(CHUNKS)
    }
    assert table_digests(src) == table_digests(dst)
    assert verify_chain(pg_store, KEYRING).ok
