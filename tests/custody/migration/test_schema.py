"""Load-time BRIN indexes: added where a key has no index, dropped before post-data counts."""

from __future__ import annotations

import psycopg
from sqlalchemy import Engine

from custody.db import get_engine
from custody.migration.schema import add_load_indexes, constraint_count, drop_load_indexes

LONG_NAME = "lab_result_observations_" + "x" * 39  # 63 bytes: no room for a prefix


def _indexes(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
        ).fetchall()
    return dict(rows)


def test_load_index_goes_only_where_the_key_has_no_index(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE bare (id bigint, note text)")
        conn.execute("CREATE TABLE keyed (id bigint PRIMARY KEY, note text)")
        conn.execute(f'CREATE TABLE "{LONG_NAME}" (k int)')
    engine: Engine = get_engine(pg_url)
    before = constraint_count(engine, "public")
    keys = {
        "bare": "id",
        "keyed": "id",
        LONG_NAME: "k",
    }
    assert add_load_indexes(engine, "public", keys) == 2
    assert add_load_indexes(engine, "public", keys) == 0  # idempotent: a resumed job re-runs it
    added = {n: d for n, d in _indexes(pg_url).items() if n.startswith("custody_load_")}
    assert len(added) == 2 and all("USING brin" in d for d in added.values())
    assert any("ON public.bare USING brin (id)" in d for d in added.values())

    assert drop_load_indexes(engine, "public") == 2
    assert constraint_count(engine, "public") == before
    assert set(_indexes(pg_url)) == {"keyed_pkey"}
