"""One key range copied and verified, through psql and without it: the same rows either way."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import Engine

import custody.migration.pgcopy as pgcopy
import custody.pgclient as pgclient
from custody.chunks import Chunk
from custody.db import get_engine
from custody.migration.catalog import describe_table
from tests.support.env import set_custody_env
from tests.support.pagila import table_digests
from tests.support.pgcompare import differences, mutate_one, reverify
from tests.support.tables import make_items


@pytest.mark.parametrize("psql_on_path", [True, False])
def test_a_range_lands_verified_with_or_without_psql(
    psql_on_path: bool,
    pg_store: Engine,
    pg_databases,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, dst = pg_databases.create("src"), pg_databases.create("dst")
    set_custody_env(
        monkeypatch,
        store_url=pg_store.url.render_as_string(hide_password=False),
        connections={"src": src, "dst": dst},
    )
    make_items(get_engine(src), 5_000)
    with psycopg.connect(dst, autocommit=True) as conn:  # same shape, no key: as pre-data leaves it
        conn.execute(
            "CREATE TABLE items (id bigint, label text NOT NULL, amount numeric(12,2), "
            "at timestamptz, payload bytea)"
        )
    monkeypatch.setattr(pgclient, "has_client_tool", lambda name: psql_on_path)
    info = describe_table(get_engine(src), "public", "items")
    work = pgcopy.PgRangeCopy("src", "dst", info)

    first = work(Chunk(job_id="j", chunk_no=0, lower=None, upper=2_000, attempt=1))
    rest = work(Chunk(job_id="j", chunk_no=1, lower=2_000, upper=5_000, attempt=1))
    again = work(Chunk(job_id="j", chunk_no=1, lower=2_000, upper=5_000, attempt=2))  # a retry

    assert first.verified and rest.verified and again.verified
    assert (first.target_count, rest.target_count, again.target_count) == (2_000, 3_000, 3_000)
    assert rest.target_hash == again.target_hash != first.target_hash
    assert table_digests(src) == table_digests(dst)  # the retry replaced its range, no duplicates


def test_a_changed_target_value_is_reported_by_reverification(
    pg_store: Engine,
    pg_databases,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, dst = pg_databases.create("src"), pg_databases.create("dst")
    set_custody_env(
        monkeypatch,
        store_url=pg_store.url.render_as_string(hide_password=False),
        connections={"src": src, "dst": dst},
    )
    make_items(get_engine(src), 300)
    with psycopg.connect(dst, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE items (id bigint, label text NOT NULL, amount numeric(12,2), "
            "at timestamptz, payload bytea)"
        )
    info = describe_table(get_engine(src), "public", "items")
    assert pgcopy.PgRangeCopy("src", "dst", info)(
        Chunk(job_id="j", chunk_no=0, lower=None, upper=None, attempt=1)
    ).verified
    assert differences(src, dst) == []
    assert reverify("src", "dst", "public", "items") == []

    mutate_one(dst, "public", "items", "payload")
    assert differences(src, dst) == ["items: rows differ", "items.payload: values differ"]
    assert reverify("src", "dst", "public", "items") == [0]


@pytest.mark.parametrize("method", ["record", "text"])
def test_a_column_named_like_the_row_alias_does_not_narrow_the_row_hash(
    method: str, pg_url: str
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE x (r int, t int, other text); INSERT INTO x VALUES (1, 1, 'a')")
        query = psycopg.sql.SQL("SELECT r, t, other FROM x")
        before = pgcopy.fingerprint(conn.cursor(), query, method=method)
        returned = pgcopy.fingerprint_returning(
            conn.cursor(), psycopg.sql.SQL("SELECT r, t, other FROM x"), method=method
        )
        conn.execute("UPDATE x SET other = 'b'")
        after = pgcopy.fingerprint(conn.cursor(), query, method=method)
    assert before == returned and before != after
