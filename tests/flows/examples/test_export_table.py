"""The worked example (export-table) does what the README promises a newcomer.

It runs, is audited (events chained, chain verifies), chunked (ledger rows, one object per
chunk), verified (both sides' hashes recorded), resumable (a chunk fails mid-way; the same job id
then skips the verified chunks) and leaves its artifacts; bad input fails before anything is
written. Resuming after a SIGKILL is the chunk engine's, tested with copy-table and archive.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any

import orjson
import psycopg
import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, func, select

from custody.audit import Keyring, verify_chain
from custody.db import get_engine
from custody.errors import InvalidIdentifierError
from custody.examples.export import exported_columns
from custody.storage import open_store
from custody.storage.s3 import ensure_bucket
from custody.store.tables import audit_log, dead_letters, job_chunks, jobs
from flows.examples.export_table import ExportTableParams, export_table
from tests.support.artifacts import read_artifacts
from tests.support.env import TEST_KEYS, set_custody_env
from tests.support.kill import ledger, processed_per_chunk
from tests.support.labs import make_lab_results
from tests.support.seaweed import S3Server

KEYRING = Keyring("k1", {k: v.encode() for k, v in TEST_KEYS.items()})
ROWS = 3_000


@pytest.fixture
def hospital(
    prefect_api: str,
    pg_store: Engine,
    pg_databases: Any,
    s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """A hospital database ``ehr`` with lab_results, and a bucket as the object store."""
    ehr = pg_databases.create("ehr")
    make_lab_results(ehr, ROWS)  # NULLs, quotes, newlines, unicode, bytea, arrays, jsonb
    bucket = "exp-" + uuid.uuid4().hex[:12]
    ensure_bucket(s3_server.client(), bucket, object_lock=False)
    set_custody_env(
        monkeypatch,
        store_url=pg_store.url.render_as_string(hide_password=False),
        connections={"ehr": ehr},
    )
    monkeypatch.setenv("CUSTODY_OBJECT_STORE_URL", f"s3://{bucket}/site-a")
    monkeypatch.setenv("CUSTODY_S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("CUSTODY_S3_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("CUSTODY_S3_SECRET_ACCESS_KEY", s3_server.secret_key)
    return {"ehr": ehr, "bucket": bucket}


def exported(job_id: str) -> list[dict[str, Any]]:
    """Every exported row, read back from the objects of one job."""
    store = open_store()
    rows: list[dict[str, Any]] = []
    for info in store.list(f"exports/{job_id}/"):
        rows += [orjson.loads(line) for line in store.get(info.key).splitlines()]
    return rows


def params(**overrides: Any) -> ExportTableParams:
    values = {"source": "ehr", "table": "lab_results", "key_column": "result_id",
              "exclude_columns": ["patient_id"], "chunk_size": 1_000}  # fmt: skip
    return ExportTableParams(**(values | overrides))


def test_export_is_chunked_verified_audited_and_leaves_artifacts(
    hospital: dict[str, str], pg_store: Engine
) -> None:
    state = export_table(params(job_id="exp-1"), return_state=True)
    result = state.result()
    assert (result.total, result.successful, result.failed, result.rows) == (3, 3, 0, ROWS)

    rows = exported("exp-1")
    assert sorted(r["result_id"] for r in rows) == list(range(1, ROWS + 1))
    assert all("patient_id" not in r for r in rows)
    with psycopg.connect(hospital["ehr"]) as conn:  # 1155 = 3*5*7*11: every awkward value set
        src = conn.execute("SELECT note, payload, tags, extra, value_numeric, collected_at "
                           "FROM lab_results WHERE result_id = 1155").fetchone()  # fmt: skip
    assert src is not None
    got = next(r for r in rows if r["result_id"] == 1155)
    assert got["note"] == src[0] and "\n" in got["note"]
    assert base64.b64decode(got["payload"]) == src[1]
    assert (got["tags"], got["extra"]) == (src[2], src[3])
    assert got["value_numeric"] == str(src[4])
    assert got["collected_at"] == src[5].isoformat()

    with pg_store.connect() as c:
        chunks = c.execute(select(job_chunks).where(job_chunks.c.job_id == "exp-1")).all()
        recipe = c.execute(select(jobs.c.work).where(jobs.c.job_id == "exp-1")).scalar_one()
        events = c.execute(
            select(audit_log.c.action, audit_log.c.details).order_by(audit_log.c.seq)
        ).all()
    assert [(r.status, r.source_count, r.source_hash == r.target_hash) for r in chunks] == [
        ("verified", 1_000, True)
    ] * 3
    assert recipe["work"] == "custody.examples.export:ExportRangeWork"  # replayable letters
    actions = [e.action for e in events]
    assert actions[0] == "data.export.started" and actions[-1] == "data.export.completed"
    assert actions.count("data.export.chunk_processed") == 3
    assert "patient_id" in events[0].details["excluded"]
    keys = {e.details["object_key"] for e in events if e.action.endswith("chunk_processed")}
    assert keys == {f"exports/exp-1/lab_results-00000{n}.jsonl" for n in range(3)}
    assert verify_chain(pg_store, KEYRING).ok

    run_id = str(state.state_details.flow_run_id)
    artifact_keys = {a.key for a in asyncio.run(read_artifacts(flow_run_id=run_id))}
    assert {"export-lab-results-summary", "export-lab-results-report",
            "export-lab-results-location", "export-lab-results-audit"} <= artifact_keys  # fmt: skip


def test_a_chunk_fails_midway_and_the_same_job_id_finishes_only_the_rest(
    hospital: dict[str, str], pg_store: Engine
) -> None:
    # One row in the middle holds a value the export cannot write: its chunk fails, the job
    # stops (continue_on_error off), and the rest of the plan waits in the ledger.
    with psycopg.connect(hospital["ehr"], autocommit=True) as conn:
        conn.execute("ALTER TABLE lab_results ADD COLUMN analyzer_ip inet")  # the instrument's
        conn.execute("UPDATE lab_results SET analyzer_ip = '10.1.2.3' WHERE result_id = 1400")
    job = params(chunk_size=250, max_concurrency=1, continue_on_error=False, job_id="exp-fail")
    state = export_table(job, return_state=True)
    assert state.is_failed() and "7 of 12 chunks failed" in (state.message or "")
    before = ledger(pg_store)
    assert [before[n][0] for n in range(12)] == ["verified"] * 5 + ["failed"] + ["pending"] * 6
    with pg_store.connect() as c:
        letter = c.execute(
            select(dead_letters.c.item_ref, dead_letters.c.error_type, dead_letters.c.error)
        ).one()
    assert letter == (
        "exp-fail#5",
        "TypeError",
        "column 'analyzer_ip': type IPv4Address has no JSON form",
    )

    with psycopg.connect(hospital["ehr"], autocommit=True) as conn:  # the data are put right
        conn.execute("UPDATE lab_results SET analyzer_ip = NULL WHERE result_id = 1400")
    result = export_table(job)  # same job id: resumes
    assert (result.skipped, result.successful, result.failed) == (5, 7, 0)
    after = ledger(pg_store)
    assert all(after[n] == before[n] for n in range(5))  # verified chunks were left alone
    assert processed_per_chunk(pg_store, "data.export.chunk_processed") == {n: 1 for n in range(12)}
    with pg_store.connect() as c:
        assert c.execute(select(dead_letters.c.replayed_at)).scalar_one() is not None
    ids = [r["result_id"] for r in exported("exp-fail")]
    assert sorted(ids) == list(range(1, ROWS + 1))  # every row exactly once
    assert verify_chain(pg_store, KEYRING).ok


def test_bad_input_fails_before_anything_is_written(
    hospital: dict[str, str], pg_store: Engine
) -> None:
    with pytest.raises(ValidationError, match="job_id"):
        params(job_id="has:colon")
    with pytest.raises(ValidationError, match="NUL"):
        params(exclude_columns=["patient_id\x00"])
    ehr = get_engine(hospital["ehr"])
    with pytest.raises(InvalidIdentifierError, match="cannot be excluded"):
        exported_columns(ehr, "lab_results", "result_id", ["result_id"])

    state = export_table(params(exclude_columns=["patient_ssn"]), return_state=True)
    assert state.is_failed()
    assert "column 'patient_ssn' does not exist in table 'lab_results'" in (state.message or "")
    with pg_store.connect() as c:
        assert c.execute(select(func.count()).select_from(jobs)).scalar_one() == 0
        assert c.execute(select(func.count()).select_from(audit_log)).scalar_one() == 0
    assert list(open_store().list("")) == []
