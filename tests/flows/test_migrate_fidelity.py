"""migrate-tables on a table full of traps, into a LATIN1 database: exact, and a change caught.

The traps are the ones that once made the fingerprint lie or fail: an enum (hashed by OID), a
regclass (copied as an OID), a column named ``t`` (the row alias), a generated column (left out),
an XML declaration (dropped by xml's binary form), -0 (equal to 0 for float hashing) and
non-ASCII text into a LATIN1 target (garbled while verifying).
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from sqlalchemy import Engine

from flows.migrate import MigrateParams, migrate_tables
from tests.support.artifacts import read_artifacts
from tests.support.env import set_custody_env
from tests.support.pgcompare import differences, mutate_one, reverify

TRAPS = """
CREATE TYPE mood AS ENUM ('süß', 'sauer');
CREATE TABLE other (x int);
CREATE TABLE traps (
    id int PRIMARY KEY, t text, m mood, r regclass, x xml, f float8, g int GENERATED ALWAYS AS
    (length(t)) STORED);
INSERT INTO traps SELECT i, 'café ' || i, CASE WHEN i % 2 = 0 THEN 'süß' ELSE 'sauer' END::mood,
    'public.other', '<?xml version="1.0"?><a>é</a>', CASE WHEN i = 3 THEN float8 '-0' ELSE i END
FROM generate_series(1, 9) i;
"""


def test_traps_migrate_exactly_into_latin1_and_a_mutation_is_caught(
    prefect_api: str,
    pg_store: Engine,
    pg_databases,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = pg_databases.create("tsrc")
    dst_name = f"custody_test_tdst_latin1_{id(src) % 100000}"
    with psycopg.connect(pg_databases.admin_url, autocommit=True) as conn:
        conn.execute(
            f"CREATE DATABASE \"{dst_name}\" ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' "
            "TEMPLATE template0"
        )
    pg_databases.created.append(dst_name)
    dst = f"{pg_databases.admin_url.rsplit('/', 1)[0]}/{dst_name}"
    with psycopg.connect(src, autocommit=True) as conn:
        conn.execute(TRAPS)  # type: ignore[arg-type]
    set_custody_env(
        monkeypatch,
        store_url=pg_store.url.render_as_string(hide_password=False),
        connections={"src": src, "dst": dst},
    )
    result = migrate_tables(
        MigrateParams(source="src", target="dst", chunk_size=3, job_id="traps-1")
    )
    assert result.status == "success", result.model_dump_json()
    assert differences(src, dst) == []
    traps = next(t for t in result.tables if t.table == "traps")
    assert traps.notes == ["r: regclass compared by schema-qualified name, not by OID"]
    report = asyncio.run(read_artifacts(key_like="migration-report-traps-1"))
    assert "traps.r: regclass compared by schema-qualified name" in str(report[-1].data)
    assert traps.quality is not None and traps.quality.success

    mutate_one(dst, "public", "traps", "f", "'0'", "id = 3")  # -0 becomes 0
    assert reverify("src", "dst", "public", "traps", store=pg_store, job_id=traps.job_id) == [0]
