"""Both stores: checksums recorded, retention enforced, listing relative to the prefix."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from custody.storage import (
    LockMode,
    ObjectLockedError,
    ObjectStore,
    Retention,
    sha256_hex,
)
from custody.storage.local import LocalStore
from custody.storage.s3 import S3Store, ensure_bucket
from tests.support.seaweed import S3Server


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    if request.param == "local":
        yield LocalStore(tmp_path / "objects")
        return
    server: S3Server = request.getfixturevalue("s3_server")
    client = server.client()
    bucket = f"stores-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    ensure_bucket(client, bucket, object_lock=True)
    yield S3Store(client, bucket, "tenant-a/archive")


def test_put_records_the_sha256_and_reads_back(store: ObjectStore) -> None:
    data = b"parquet bytes \x00\xff" * 1000
    info = store.put("lab/2026/01/a1.parquet", data)
    assert info.sha256 == sha256_hex(data) and info.size == len(data)
    assert store.get("lab/2026/01/a1.parquet", info.version_id) == data
    head = store.head("lab/2026/01/a1.parquet")
    assert head is not None and head.sha256 == sha256_hex(data) and head.size == len(data)
    assert store.head("lab/2026/01/missing.parquet") is None
    store.put("lab/2026/02/a2.parquet", b"x")
    assert sorted(o.key for o in store.list("lab")) == [
        "lab/2026/01/a1.parquet",
        "lab/2026/02/a2.parquet",
    ]


def test_compliance_retention_refuses_deletion(store: ObjectStore) -> None:
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    info = store.put("locked.parquet", b"keep me", retention=Retention(LockMode.COMPLIANCE, until))
    head = store.head("locked.parquet")
    assert head is not None and head.retention is not None
    assert head.retention.mode is LockMode.COMPLIANCE and head.retention.retain_until == until
    with pytest.raises(ObjectLockedError):
        store.delete("locked.parquet", info.version_id)
    assert store.get("locked.parquet", info.version_id) == b"keep me"


def test_an_unlocked_object_can_be_deleted(store: ObjectStore) -> None:
    info = store.put("scratch.bin", b"temporary")
    store.delete("scratch.bin", info.version_id)
    assert store.head("scratch.bin") is None
