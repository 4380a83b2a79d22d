"""The read-back's binary COPY: every encodable value lands exactly, and a change is seen."""

from __future__ import annotations

import io
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from custody.archive.arrow_io import read_arrow
from custody.archive.checks import inspect_table
from custody.archive.columns import SESSION_SETTINGS, ArchiveColumn, checked_type, fingerprint
from custody.archive.pgbinary import binary_copy_types, write_binary
from custody.archive.work import _parquet, connect

TABLE = """
CREATE TABLE t (
    id bigint PRIMARY KEY, i2 smallint, i4 integer, f4 real, f8 double precision, b boolean,
    d date, ts timestamp, tz timestamptz NOT NULL, n124 numeric(12,4), n180 numeric(18,0),
    n153 numeric(15,3), n162 numeric(16,2), n11 numeric(1,1), v varchar(20), tx text)
"""
ROWS = """
INSERT INTO t SELECT g, (g % 65535) - 32767, g * 7919 - 2000000000, g / 3.0, -g / 7.0,
  g % 2 = 0, date '1999-12-31' + (g - 500) * 37, timestamp '1999-12-31 23:59:59.999999'
  + (g - 500) * interval '1 day 1.000001 seconds', timestamptz '2000-01-01 00:00Z'
  - g * interval '13 hours 0.5 seconds', (g - 500) * 1.2345, (g - 500) * 999999999999999,
  (g - 500) * 1234567890.123, (g - 500) * 123456789012.34, (g % 19 - 9) / 10.0,
  'v' || g, repeat('é✓', g % 5) || CASE WHEN g % 11 = 0 THEN '' ELSE 'x"y,z' || chr(10) END
FROM generate_series(1, 1000) g;
INSERT INTO t (id, tz) VALUES (0, '1970-01-01 00:00Z');  -- every other column NULL
UPDATE t SET i2 = NULL, f8 = NULL, b = NULL, n124 = NULL, v = NULL WHERE id % 9 = 0;
UPDATE t SET f8 = 'NaN', f4 = '-Infinity', n124 = 0, tx = '' WHERE id = 7;
"""


@pytest.fixture
def loaded(pg_url: str) -> Any:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(TABLE)
        conn.execute(ROWS)
    url = make_url(pg_url)
    conn = connect(url)
    checked = inspect_table(conn, "public", "t", "tz")
    columns = list(checked.columns)
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        table = read_arrow(conn, url, columns, checked.source, sql.SQL("true"))
    data = _parquet(table)
    back = pq.ParquetFile(io.BytesIO(data)).read()
    yield conn, columns, back
    conn.close()


def _load(conn: psycopg.Connection[Any], columns: list[ArchiveColumn], table: pa.Table) -> Any:
    with conn.transaction():
        conn.execute(SESSION_SETTINGS)
        conn.execute(
            sql.SQL("CREATE TEMP TABLE rb ({cols}) ON COMMIT DROP").format(
                cols=sql.SQL(", ").join(
                    sql.SQL("{} {}").format(
                        sql.Identifier(c.name), sql.SQL(checked_type(c.pg_type))
                    )
                    for c in columns
                )
            )
        )
        write_binary(conn, table, columns, sql.Identifier("rb"))
        return fingerprint(conn, columns, sql.SQL("rb t"))


def _source(conn: psycopg.Connection[Any], columns: list[ArchiveColumn]) -> Any:
    with conn.transaction():
        conn.execute(SESSION_SETTINGS)
        return fingerprint(conn, columns, sql.SQL("t t"))


def test_every_encodable_value_is_received_exactly(loaded: Any) -> None:
    conn, columns, back = loaded
    assert binary_copy_types(columns, back.schema)
    assert _load(conn, columns, back) == _source(conn, columns)
    # Slices start mid-buffer (offsets, bit-packed booleans): the same rows, the same hash.
    sliced = pa.concat_tables([back.slice(0, 3), back.slice(3, 500), back.slice(503)])
    assert _load(conn, columns, sliced) == _source(conn, columns)


@pytest.mark.parametrize("column", ["i4", "f8", "b", "d", "ts", "tz", "n124", "n180", "v"])
def test_one_changed_value_changes_the_fingerprint(loaded: Any, column: str) -> None:
    conn, columns, back = loaded
    index = back.schema.get_field_index(column)
    values = back.column(index)
    ids = back.column("id").to_pylist()
    target = ids.index(1)
    other = next(
        j for j, v in enumerate(values.to_pylist()) if v is not None and v != values[target].as_py()
    )
    first = pc.equal(back.column("id"), pa.scalar(1, pa.int64()))
    changed = pc.if_else(first, values[other], values)  # row 1 takes another row's value
    mutated = back.set_column(index, back.schema.field(index), changed)
    assert _load(conn, columns, mutated) != _source(conn, columns)


def test_other_forms_are_left_to_the_text_load(loaded: Any) -> None:
    _, columns, back = loaded
    as_text = back.set_column(
        back.schema.get_field_index("tz"), "tz", back.column("tz").cast(pa.string())
    )
    assert not binary_copy_types(columns, as_text.schema)  # a batch kept as PostgreSQL text
    wide = [ArchiveColumn(name="n", pg_type="numeric(18,2)", canon="send")]
    assert not binary_copy_types(wide, pa.schema([("n", pa.decimal128(18, 2))]))  # > uint64
    other = [ArchiveColumn(name="u", pg_type="uuid", canon="send")]
    assert not binary_copy_types(other, pa.schema([("u", pa.string())]))
