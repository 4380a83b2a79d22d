"""archive-to-s3 and restore-from-archive against PostgreSQL and the SeaweedFS server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

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
from tests.support.labs import eligible_before, make_lab_results
from tests.support.pagila import table_digests
from tests.support.seaweed import S3Server

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
    bucket = "arch-" + request.node.name.lower().replace("_", "-")[-40:].strip("-[]")
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
    assert table_digests(hospital) == before
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

    original = S3Store.put
    corrupted: list[str] = []

    def put_then_corrupt(self: S3Store, key: str, data: bytes, **kw: object):  # type: ignore[no-untyped-def]
        info = original(self, key, data, **kw)  # type: ignore[arg-type]
        if not corrupted:  # the first object rots in place: same version id, other bytes
            corrupted.append(key)
            monkeypatch.setattr(self, "get", lambda k, v=None: data[:-7] + b"\x00" * 7)
        return info

    monkeypatch.setattr(S3Store, "put", put_then_corrupt)
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
