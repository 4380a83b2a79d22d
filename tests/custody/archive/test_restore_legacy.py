"""Archives verified before canonical hashing (no ``hash_method``) still restore, checked."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb
from sqlalchemy.engine import make_url

from custody.archive import manifest
from custody.archive.generic import ArchiveRestoreError
from custody.archive.restore import restore_object
from custody.archive.work import ArchiveRangeWork, ArchiveTarget, connect
from custody.chunks.models import Chunk
from custody.db import get_engine
from custody.migration.catalog import describe_table
from custody.migration.pgcopy import fingerprint
from custody.settings import reset_settings_cache
from custody.storage import LockMode, open_store
from tests.support.pagila import table_digests

CUTOFF = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def test_an_archive_from_before_hash_methods_restores_and_is_checked(  # type: ignore[no-untyped-def]
    pg_databases, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = pg_databases.create("legacy")
    monkeypatch.setenv("CUSTODY_CONNECTIONS__OLD", url)
    monkeypatch.setenv("CUSTODY_OBJECT_STORE_URL", f"file://{tmp_path}/objects")
    reset_settings_cache()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE labs (id int PRIMARY KEY, ts timestamptz NOT NULL, v numeric(6,2));"
            "INSERT INTO labs SELECT g, '2026-01-01'::timestamptz + g * interval '1 day', g / 3.0"
            " FROM generate_series(1, 90) g"
        )
        manifest.ensure_manifest(conn)
    before = table_digests(url)
    info = describe_table(get_engine(url), "public", "labs")
    with psycopg.connect(url) as conn, conn.cursor() as cur:  # the old content hash
        old = fingerprint(
            cur,
            sql.SQL("SELECT id, ts, v FROM labs WHERE ts < {c}").format(c=sql.Literal(CUTOFF)),
            method=info.hash_method,
        )
    work = ArchiveRangeWork("old", "p", info, "ts", CUTOFF, "phi", "HIPAA",
                            ArchiveTarget(None, "archive", LockMode.NONE, 1))  # fmt: skip
    assert work(Chunk(job_id="legacy", chunk_no=0, lower=None, upper=None)).verified
    with psycopg.connect(url, autocommit=True) as conn:  # as an older custody recorded it
        conn.execute(
            "UPDATE custody.archive_manifest SET hash_method = NULL, content_hash = %s, "
            "columns = %s",
            (old[1], Jsonb([{"name": c, "type": "-"} for c in info.columns])),
        )
    with connect(make_url(url)) as conn:
        [row] = manifest.find(conn, table="labs")
        assert row.hash_method is None and row.row_count == old[0] == 58
        with pytest.raises(ArchiveRestoreError, match="hash method None"):
            restore_object(conn, open_store(), row)  # without the older description: refused
        wrong = manifest.ManifestRow(**{**row.__dict__, "content_hash": str(int(old[1]) + 1)})
        with pytest.raises(ArchiveRestoreError, match="do not hash to the manifest"):
            restore_object(conn, open_store(), wrong, legacy=info)
        assert table_digests(url) != before  # still archived: nothing restored
        assert restore_object(conn, open_store(), row, legacy=info) == 58
    assert table_digests(url) == before
