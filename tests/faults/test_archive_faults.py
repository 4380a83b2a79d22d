"""archive-to-s3 with its database connection dropped before a delete, and with a full disk.

SIGKILL at five points and an S3 server stopped mid-run are in tests/flows/test_archive.py.
Here the object store is a ``file://`` directory, as in the embedded default.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine

from custody.audit import verify_chain
from custody.storage import open_store, sha256_hex
from flows.archive import (
    ArchiveParams,
    RestoreParams,
    RetentionPolicy,
    archive_to_s3,
    restore_from_archive,
)
from tests.faults.conftest import (
    KEYRING,
    events_per_resource,
    ledger_rows,
    libpq_url,
    open_dead_letters,
)
from tests.support.env import set_custody_env
from tests.support.faults import (
    FaultThread,
    chunk_waiting,
    hold_lock,
    pause_chunk,
    stray_files,
    terminate,
    tmpfs,
    wait_for_backends,
)
from tests.support.labs import eligible_before, make_lab_results
from tests.support.pagila import table_digests

ROWS = 20_000
ELIGIBLE = eligible_before(ROWS, 86_400)  # before 2026-01-02: 12,342 rows
POLICY = RetentionPolicy(
    name="lab_results", table="lab_results", timestamp_column="collected_at",
    cutoff=date(2026, 1, 2),
)  # fmt: skip


def _hospital(pg_store: Engine, pg_databases, monkeypatch: pytest.MonkeyPatch, objects: Path):  # type: ignore[no-untyped-def]
    ehr = pg_databases.create("ehr")
    set_custody_env(
        monkeypatch,
        store_url=pg_store.url.render_as_string(hide_password=False),
        connections={"ehr": ehr},
    )
    monkeypatch.setenv("CUSTODY_OBJECT_STORE_URL", objects.as_uri())
    make_lab_results(ehr, ROWS)
    return ehr


def _count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM lab_results").fetchone()
    return int(row[0]) if row else -1


def _manifest(url: str) -> list[tuple[str, int, str, str]]:
    """(status, rows, object key, sha256) of every manifest row."""
    with psycopg.connect(url) as conn:
        return conn.execute(  # type: ignore[return-value]
            "SELECT status, row_count, object_key, sha256 FROM custody.archive_manifest"
        ).fetchall()


def _store_matches_manifest(url: str) -> None:
    """Every stored object is a verified manifest row's, with its bytes, and nothing else."""
    store = open_store()
    entries = _manifest(url)
    assert {status for status, *_ in entries} <= {"verified"}
    stored = {o.key for o in store.list("archive")}
    assert stored == {key for _, _, key, _ in entries}
    for _, _, key, sha in entries:
        assert sha256_hex(store.get(key)) == sha


def _restored_exactly(ehr: str, before: dict[str, tuple[int, str]], pg_store: Engine) -> None:
    restored = restore_from_archive(RestoreParams(database="ehr", table="lab_results"))
    assert restored["rows_inserted"] == ELIGIBLE  # each row archived exactly once
    assert table_digests(ehr) == before
    assert verify_chain(pg_store, KEYRING).ok


def test_connection_dropped_before_the_delete_commits_then_the_batch_is_redone(
    prefect_api: str, pg_store: Engine, pg_databases, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:  # fmt: skip
    """The object is stored and read back; the verified delete waits on a lock; its connection
    is terminated. The batch is retried: the stored object is verified again, then deleted."""
    ehr = _hospital(pg_store, pg_databases, monkeypatch, tmp_path / "objects")
    before = table_digests(ehr)
    job = "fault-archive-conn"
    with hold_lock(ehr, "LOCK TABLE lab_results IN SHARE MODE") as lock:  # reads pass, deletes wait

        def script() -> None:
            delete = wait_for_backends(ehr, "WITH t AS (DELETE FROM%")
            assert _count(ehr) == ROWS  # the batch is uploaded and waits: nothing deleted yet
            assert terminate(ehr, delete) == 1
            lock.release()

        faults = FaultThread(script)
        result = archive_to_s3(
            ArchiveParams(database="ehr", policies=[POLICY], batch_size=5_000,
                          max_concurrency=1, job_id=job)
        )  # fmt: skip
        faults.join()

    assert result.status == "success", result.model_dump_json()
    [policy] = result.policies
    assert (policy.verified_now, policy.failed, policy.orphans) == (3, 0, [])
    chunks = ledger_rows(pg_store, f"{job}.lab_results")
    assert chunks == {0: ("verified", 2), 1: ("verified", 1), 2: ("verified", 1)}
    assert events_per_resource(pg_store, "data.archival.batch_completed") == {
        f"{job}.lab_results#{n}": 1 for n in range(3)
    }
    assert _count(ehr) == ROWS - ELIGIBLE
    _store_matches_manifest(ehr)
    _restored_exactly(ehr, before, pg_store)


@pytest.mark.slow
def test_disk_full_fails_batches_cleanly_and_a_rerun_with_room_converges(
    prefect_api: str, pg_store: Engine, pg_databases, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:  # fmt: skip
    """Two batches land, then the store's disk fills (8 KiB left: objects are cut short). The
    failed batches keep their rows, nothing partial is left; after a remount, the re-run
    finishes the job."""
    objects = tmp_path / "objects"
    with tmpfs(objects, 4 << 20) as disk:
        ehr = _hospital(pg_store, pg_databases, monkeypatch, objects)
        before = table_digests(ehr)
        job = "fault-archive-disk"
        params = ArchiveParams(
            database="ehr", policies=[POLICY], batch_size=2_000, max_concurrency=1, job_id=job
        )

        def script() -> None:
            third = pause_chunk(libpq_url(pg_store), f"{job}.lab_results", 2)
            chunk_waiting(libpq_url(pg_store))
            disk.fill(leave_bytes=8 << 10)
            third.release()

        faults = FaultThread(script)
        state = archive_to_s3(params, return_state=True)
        faults.join()
        first = state.result(raise_on_failure=False)
        assert state.is_failed() and first.status == "partial_failure"
        [policy] = first.policies
        batches = policy.batches
        assert (policy.verified_now, policy.failed) == (2, batches - 2) and batches == 7
        assert policy.orphans == []
        assert stray_files(objects) == []  # no temp file, no object without its checksum
        _store_matches_manifest(ehr)
        archived = sum(rows for _, rows, _, _ in _manifest(ehr))
        assert _count(ehr) == ROWS - archived  # the failed batches kept every row
        assert open_dead_letters(pg_store) == batches - 2

        disk.grow(64 << 20)  # the operator makes room
        result = archive_to_s3(params)
        assert result.status == "success", result.model_dump_json()
        [policy] = result.policies
        assert (policy.already_verified, policy.verified_now) == (2, batches - 2)
        assert events_per_resource(pg_store, "data.archival.batch_completed") == {
            f"{job}.lab_results#{n}": 1 for n in range(batches)
        }
        assert open_dead_letters(pg_store) == 0  # settled by the verified re-run
        assert _count(ehr) == ROWS - ELIGIBLE
        assert stray_files(objects) == []
        _store_matches_manifest(ehr)
        _restored_exactly(ehr, before, pg_store)
