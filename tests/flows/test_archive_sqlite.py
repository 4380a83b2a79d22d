"""archive-to-s3 and restore-from-archive on SQLite, into a local file:// object store."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import TaskRun
from sqlalchemy import Engine, select, text

from custody.archive.generic import manifest_table
from custody.audit import Keyring, verify_chain
from custody.db import get_engine
from custody.fingerprint import Fingerprint
from custody.identifiers import reflect_table
from custody.storage import open_store, sha256_hex
from custody.synth import write_ehr
from flows.archive import (
    ArchiveParams,
    RestoreParams,
    RetentionPolicy,
    archive_to_s3,
    restore_from_archive,
)
from tasks.archive import ArchiveRefusedError, describe_archive_table
from tests.support.env import TEST_KEYS, set_custody_env

KEYRING = Keyring("k1", {k: v.encode() for k, v in TEST_KEYS.items()})
CUTOFF = dt.date(2025, 11, 1)  # the synthetic access log spans 2024-11 to 2026-11


def digest(engine: Engine, old: bool | None = None) -> tuple[int, str]:
    """Count and content hash of access_log rows as stored (all, or only those before CUTOFF)."""
    table = reflect_table(engine, "access_log")  # the stored values, as the archive sees them
    fingerprint = Fingerprint()
    query = select(table)
    if old is not None:  # custody's UTCDateTime text sorts as time
        before = table.c.accessed_at < f"{CUTOFF:%Y-%m-%d}T00:00:00.000000Z"
        query = query.where(before if old else ~before)
    with engine.connect() as conn:
        fingerprint.add_all(conn.execute(query))
    return fingerprint.count, fingerprint.hexdigest


@pytest.fixture
def ehr(
    prefect_api: str, sqlite_store: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Engine:
    url = f"sqlite:///{tmp_path / 'ehr.db'}"
    set_custody_env(
        monkeypatch,
        store_url=sqlite_store.url.render_as_string(hide_password=False),
        connections={"ehr": url},
    )
    monkeypatch.setenv("CUSTODY_OBJECT_STORE_URL", (tmp_path / "objects").as_uri())
    engine = get_engine(url)
    write_ehr(engine, patients_n=40, results_per_patient=10, accesses_per_patient=25)
    return engine


def test_archive_restore_and_rerun_on_sqlite(ehr: Engine, sqlite_store: Engine) -> None:
    before, eligible = digest(ehr), digest(ehr, old=True)
    assert 300 < eligible[0] < 700  # about half of the 1,000 rows
    policy = RetentionPolicy(
        name="access_log", table="access_log", timestamp_column="accessed_at", cutoff=CUTOFF
    )
    params = ArchiveParams(database="ehr", policies=[policy], batch_size=150, job_id="sq-1")

    result = archive_to_s3(params)

    assert result.status == "success", result.model_dump_json()
    [done] = result.policies
    assert done.rows_archived == eligible[0] and done.orphans == []
    assert digest(ehr, old=True) == (0, "0000000000000000")  # every eligible row left
    assert digest(ehr, old=False)[0] == before[0] - eligible[0]
    with ehr.connect() as conn:
        entries = conn.execute(select(manifest_table)).mappings().all()
    assert len(entries) == done.batches == -(-eligible[0] // 150)
    assert {e["status"] for e in entries} == {"verified"}
    assert sum(e["row_count"] for e in entries) == eligible[0]
    store = open_store()
    archived = Fingerprint()
    for entry in entries:  # each object: its bytes as recorded, zstd Parquet, its rows
        data = store.get(entry["object_key"])
        assert sha256_hex(data) == entry["sha256"] == store.head(entry["object_key"]).sha256  # type: ignore[union-attr]
        parquet = pq.ParquetFile(io.BytesIO(data))
        assert parquet.metadata.row_group(0).column(0).compression == "ZSTD"
        rows = parquet.read().to_pylist()
        assert [r["access_id"] for r in rows] == sorted(r["access_id"] for r in rows)  # key order
        archived.add_all(tuple(r.values()) for r in rows)
        assert entry["object_key"].startswith("archive/access_log/20")
    assert (archived.count, archived.hexdigest) == eligible  # the objects hold exactly those rows

    again = archive_to_s3(params)  # same job: nothing redone, nothing uploaded twice
    assert again.policies[0].already_verified == done.batches
    assert len(list(store.list("archive"))) == done.batches

    restored = restore_from_archive(RestoreParams(database="ehr", table="access_log"))
    assert restored == {"objects": done.batches, "rows_inserted": eligible[0]}
    assert digest(ehr) == before  # every row back, equal by content hash
    twice = restore_from_archive(RestoreParams(database="ehr", table="access_log"))
    assert twice == {"objects": done.batches, "rows_inserted": 0}
    assert verify_chain(sqlite_store, KEYRING).ok


def test_a_text_time_column_must_hold_timestamps(ehr: Engine) -> None:
    with ehr.begin() as conn:
        conn.execute(text("UPDATE access_log SET accessed_at = 'yesterday' WHERE access_id = 7"))
    with pytest.raises(ArchiveRefusedError, match=r"1 value\(s\) that are not ISO 8601"):
        describe_archive_table.fn("ehr", "public", "access_log", "accessed_at")
    with pytest.raises(ArchiveRefusedError, match="only its default schema"):
        describe_archive_table.fn("ehr", "hospital", "access_log", "accessed_at")


def test_restoring_an_unknown_archive_fails_at_once_naming_it(ehr: Engine) -> None:
    state = restore_from_archive(
        RestoreParams(database="ehr", archive_ids=["feedface00"]), return_state=True
    )
    assert state.is_failed()
    assert "no verified archive with id(s) ['feedface00']" in str(state.message), state.message
    # A refusal is the same every time: the task is not retried (retries are for lost
    # connections), so the user reads the error without waiting through them.
    runs = asyncio.run(_task_runs(str(state.state_details.flow_run_id)))
    assert [r.run_count for r in runs if r.name.startswith("restore-archived-table")] == [1]


async def _task_runs(flow_run_id: str) -> list[TaskRun]:
    async with get_client() as client:
        return await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
