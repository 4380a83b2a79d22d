"""archive-to-s3 and restore-from-archive against PostgreSQL and the SeaweedFS server."""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine

from custody.audit import Keyring, verify_chain
from custody.storage import ObjectLockedError, open_store
from custody.storage.s3 import ensure_bucket
from flows.archive import (
    ArchiveParams,
    RestoreParams,
    RetentionPolicy,
    archive_to_s3,
    restore_from_archive,
)
from tests.support.env import TEST_KEYS, set_custody_env
from tests.support.kill import (
    flow_command,
    kill_when,
    ledger,
    processed_per_chunk,
    run_to_end,
    verified_chunks,
)
from tests.support.labs import eligible_before, make_lab_results
from tests.support.pagila import table_digests
from tests.support.seaweed import S3Server, pick_base, seaweed_server

KEYRING = Keyring("k1", {k: v.encode() for k, v in TEST_KEYS.items()})
CUTOFF = date(2026, 3, 1)
CUTOFF_S = 59 * 86_400  # 2026-03-01 in seconds after 2026-01-01


def policy(**overrides: object) -> RetentionPolicy:
    values: dict[str, object] = {
        "name": "lab_results",
        "table": "lab_results",
        "timestamp_column": "collected_at",
        "cutoff": CUTOFF,
    }
    return RetentionPolicy(**(values | overrides))


@pytest.fixture
def hospital(
    prefect_api: str,
    pg_store: Engine,
    pg_databases,
    s3_server: S3Server,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A hospital database ``ehr`` and a locked, versioned bucket as the object store."""
    ehr = pg_databases.create("ehr")
    set_custody_env(
        monkeypatch,
        store_url=pg_store.url.render_as_string(hide_password=False),
        connections={"ehr": ehr},
    )
    bucket = "arch-" + uuid.uuid4().hex[:12]
    ensure_bucket(s3_server.client(), bucket, object_lock=True)
    monkeypatch.setenv("CUSTODY_OBJECT_STORE_URL", f"s3://{bucket}/hospital-a")
    monkeypatch.setenv("CUSTODY_S3_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("CUSTODY_S3_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("CUSTODY_S3_SECRET_ACCESS_KEY", s3_server.secret_key)
    yield ehr


def _count(url: str, where: str = "true") -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM lab_results WHERE {where}").fetchone()
    assert row is not None
    return int(row[0])


def _manifest(url: str) -> list[tuple[str, str, int, str, str, str | None]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT archive_id, status, row_count, object_key, sha256, version_id "
            "FROM custody.archive_manifest ORDER BY key_lower NULLS FIRST"
        ).fetchall()


@pytest.mark.slow
def test_a_million_rows_archive_locked_and_restore_exactly(
    hospital: str,
    pg_databases,
    pg_store: Engine,  # type: ignore[no-untyped-def]
) -> None:
    rows = 1_000_000
    make_lab_results(hospital, rows)
    before = table_digests(hospital)
    eligible = eligible_before(rows, CUTOFF_S)

    result = archive_to_s3(ArchiveParams(
        database="ehr", policies=[policy()], batch_size=100_000, object_lock="compliance",
        job_id="arch-1m",
    ))  # fmt: skip

    assert result.status == "success", result.model_dump_json()
    [done] = result.policies
    assert done.rows_archived == eligible and done.orphans == []
    assert _count(hospital) == rows - eligible
    assert _count(hospital, "collected_at < '2026-03-01'") == 0  # only non-eligible rows stay
    entries = _manifest(hospital)
    assert len(entries) == done.batches == 8 and sum(e[2] for e in entries) == eligible
    assert {e[1] for e in entries} == {"verified"}

    store = open_store()
    for _, _, _, key, sha256, _ in entries:
        head = store.head(key)
        assert head is not None and head.sha256 == sha256 and head.retention is not None
        assert head.retention.mode.value == "compliance"
        assert key.startswith("archive/lab_results/2026/0") and key.endswith(".parquet")
    with pytest.raises(ObjectLockedError):  # the server itself refuses
        store.delete(entries[0][3], entries[0][5])

    restored = restore_from_archive(RestoreParams(database="ehr", table="lab_results"))
    assert restored == {"objects": 8, "rows_inserted": eligible}
    assert table_digests(hospital) == before  # every row back, types and values exact
    again = restore_from_archive(RestoreParams(database="ehr", table="lab_results"))
    assert again == {"objects": 8, "rows_inserted": 0}  # idempotent
    assert _count(hospital) == rows
    assert verify_chain(pg_store, KEYRING).ok


def test_dry_run_plans_and_changes_nothing(hospital: str) -> None:
    make_lab_results(hospital, 20_000)
    before = table_digests(hospital)
    result = archive_to_s3(ArchiveParams(
        database="ehr", policies=[policy(cutoff=date(2026, 1, 2))], batch_size=5_000,
        dry_run=True, job_id="dry-1",
    ))  # fmt: skip
    assert result.status == "planned"
    [plan] = result.plan
    assert (plan.eligible_rows, plan.objects) == (eligible_before(20_000, 86_400), 3)
    assert table_digests(hospital) == before
    assert list(open_store().list("archive")) == []


def test_an_object_corrupted_after_upload_is_caught_and_redone(
    hospital: str, monkeypatch: pytest.MonkeyPatch, pg_store: Engine
) -> None:
    make_lab_results(hospital, 30_000)
    before = table_digests(hospital)
    from custody.storage.s3 import S3Store

    original_put, original_get = S3Store.put, S3Store.get
    corrupted: list[str] = []
    rotten: set[str | None] = set()

    def put_then_corrupt(self: S3Store, key: str, data: bytes, **kw: object):  # type: ignore[no-untyped-def]
        info = original_put(self, key, data, **kw)  # type: ignore[arg-type]
        if not corrupted:  # the first object rots in place: same version id, other bytes
            corrupted.append(key)
            rotten.add(info.version_id)
        return info

    def read_rotten(self: S3Store, key: str, version_id: str | None = None) -> bytes:
        data = original_get(self, key, version_id)
        # The store still reports the checksum it recorded at upload; only the bytes rotted, for
        # as long as that version is read (a retry must upload afresh, not reuse it).
        return data[:-7] + b"\x00" * 7 if version_id in rotten else data

    monkeypatch.setattr(S3Store, "put", put_then_corrupt)
    monkeypatch.setattr(S3Store, "get", read_rotten)
    result = archive_to_s3(ArchiveParams(
        database="ehr", policies=[policy(cutoff=date(2026, 1, 2))], batch_size=5_000,
        job_id="rot-1",
    ))  # fmt: skip
    assert corrupted, "no object was corrupted"
    assert result.status == "success"
    eligible = eligible_before(30_000, 86_400)
    assert _count(hospital) == 30_000 - eligible
    restore_from_archive(RestoreParams(database="ehr", table="lab_results"))
    assert table_digests(hospital) == before
    assert verify_chain(pg_store, KEYRING).ok


def _manifest_rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        found = conn.execute("SELECT to_regclass('custody.archive_manifest')").fetchone()
        if found is None or found[0] is None:
            return 0
        row = conn.execute("SELECT count(*) FROM custody.archive_manifest").fetchone()
    return int(row[0]) if row else 0


def _one_more_batch_then_random(store: Engine) -> Callable[[], bool]:
    """True a random 0-1 s after the next batch is verified: somewhere inside a later batch."""
    start, delay, seen = verified_chunks(store), random.uniform(0, 1), {}

    def condition() -> bool:
        if "at" not in seen:
            if verified_chunks(store) <= start:
                return False
            seen["at"] = time.monotonic()
        return time.monotonic() > seen["at"] + delay

    return condition


@pytest.mark.slow
def test_sigkill_five_times_then_rerun_converges(
    hospital: str, pg_store: Engine, prefect_api: str
) -> None:
    """One job, killed at five different points in turn; the sixth run finishes it."""
    rows = 60_000
    make_lab_results(hospital, rows)
    before = table_digests(hospital)
    eligible = eligible_before(rows, 3 * 86_400)  # 37,028 rows: 10 batches
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    params = ArchiveParams(
        database="ehr", policies=[policy(cutoff=date(2026, 1, 4))], batch_size=4_000,
        object_lock="governance", job_id="kill-five",
    ).model_dump(mode="json")  # fmt: skip
    args = flow_command("flows.archive", "archive_to_s3", "ArchiveParams", params)
    kill_points: list[Callable[[], bool]] = [
        lambda: verified_chunks(pg_store) >= 1,  # between batches
        lambda: _manifest_rows(hospital) >= 3,  # manifest written, often before its delete
        lambda: len(list(open_store().list("archive"))) >= 5,  # uploaded, maybe no manifest
        lambda: verified_chunks(pg_store) >= 6,
    ]
    for condition in [*kill_points, _one_more_batch_then_random(pg_store)]:
        kill_when(args, env, condition)
    done_before = {n for n, (status, _, _) in ledger(pg_store).items() if status == "verified"}
    assert 6 <= len(done_before) < 10
    result = run_to_end(args, env)

    assert result["status"] == "success", result
    [policy_result] = result["policies"]
    assert policy_result["orphans"] == []  # an upload cut off before its manifest was reused
    assert policy_result["already_verified"] == len(done_before)
    assert processed_per_chunk(pg_store, "data.archival.batch_completed") == {
        n: 1 for n in range(policy_result["batches"])
    }
    assert _count(hospital) == rows - eligible  # nothing eligible left, nothing else gone
    entries = _manifest(hospital)
    assert {e[1] for e in entries} == {"verified"} and sum(e[2] for e in entries) == eligible
    restored = restore_from_archive(RestoreParams(database="ehr", table="lab_results"))
    assert restored["rows_inserted"] == eligible  # each row archived exactly once
    assert table_digests(hospital) == before
    assert verify_chain(pg_store, KEYRING).ok


def test_retention_check_names_archives_locked_too_briefly(
    hospital: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from custody.cli import main

    make_lab_results(hospital, 12_000)
    result = archive_to_s3(ArchiveParams(
        database="ehr", policies=[policy(cutoff=date(2026, 1, 2), keep_archived_days=30)],
        batch_size=5_000, object_lock="governance", job_id="short-lock",
    ))  # fmt: skip
    assert result.status == "success"
    ids = {e[0] for e in _manifest(hospital)}

    assert main(["archive", "retention", "--database", "ehr", "--keep-days", "30"]) == 0
    assert "3 archive(s) checked, 0 short of 30 days" in capsys.readouterr().out
    assert main(["archive", "retention", "--database", "ehr"]) == 1  # HIPAA's six years
    out = capsys.readouterr().out
    assert "3 archive(s) checked, 3 short of 2190 days" in out
    assert all(f"{archive_id}  archive/lab_results/2026/01/" in out for archive_id in ids)
    assert "lock ends too early" in out


@pytest.mark.slow
def test_s3_server_stopped_mid_run_then_rerun_converges(
    prefect_api: str, pg_store: Engine, pg_databases, tmp_path: Path,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    ehr = pg_databases.create("ehr")
    set_custody_env(
        monkeypatch,
        store_url=pg_store.url.render_as_string(hide_password=False),
        connections={"ehr": ehr},
    )
    rows = 60_000
    make_lab_results(ehr, rows)
    before = table_digests(ehr)
    eligible = eligible_before(rows, 3 * 86_400)
    params = ArchiveParams(
        database="ehr", policies=[policy(cutoff=date(2026, 1, 4))], batch_size=4_000,
        max_concurrency=1, continue_on_error=False, job_id="s3-outage",
    )  # fmt: skip
    root, base = tmp_path / "s3", pick_base()
    with seaweed_server(root, base) as s3:
        ensure_bucket(s3.client(), "outage", object_lock=False)
        monkeypatch.setenv("CUSTODY_OBJECT_STORE_URL", "s3://outage/hospital-a")
        monkeypatch.setenv("CUSTODY_S3_ENDPOINT_URL", s3.endpoint_url)
        monkeypatch.setenv("CUSTODY_S3_ACCESS_KEY_ID", s3.access_key)
        monkeypatch.setenv("CUSTODY_S3_SECRET_ACCESS_KEY", s3.secret_key)

        def stop_after_three_batches() -> None:
            while verified_chunks(pg_store) < 3:
                time.sleep(0.02)
            s3.process.terminate()

        stopper = threading.Thread(target=stop_after_three_batches, daemon=True)
        stopper.start()
        state = archive_to_s3(params, return_state=True)
        stopper.join(timeout=60)
    first = state.result(raise_on_failure=False)
    assert state.is_failed() and first.status == "partial_failure"
    [outage] = first.policies
    assert outage.failed > 0 and outage.verified_now >= 3
    archived_so_far = sum(e[2] for e in _manifest(ehr) if e[1] == "verified")
    assert _count(ehr) == rows - archived_so_far  # failed batches kept every row

    with seaweed_server(root, base):  # the same server, back with its data
        result = archive_to_s3(params)
        assert result.status == "success", result.model_dump_json()
        assert _count(ehr) == rows - eligible
        restored = restore_from_archive(RestoreParams(database="ehr", table="lab_results"))
    assert restored["rows_inserted"] == eligible
    assert table_digests(ehr) == before
    assert verify_chain(pg_store, KEYRING).ok
