"""An independent comparison of a MySQL database with its PostgreSQL migration.

Reads both servers with its own SQL (MariaDB through its driver, PostgreSQL through psycopg),
and applies the documented cast rules itself, written out as expected values: it shares no code
with the product's plan, conversion or fingerprint.
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import psycopg

from tests.support.mariadb import connect


def expected_value(
    data_type: str, column_type: str, raw: Any, booleans: bool, is_json: bool = False
) -> Any:
    """What the README's cast rules say PostgreSQL must hold for one MySQL value."""
    if raw is None:
        return None
    if is_json:
        return ("json", json.loads(raw))
    if data_type == "tinyint" and column_type.startswith("tinyint(1)") and booleans:
        return raw != 0
    if data_type == "timestamp":
        return raw.replace(tzinfo=dt.UTC)
    if data_type == "set":
        return raw.split(",") if raw else []
    if data_type == "time":
        return raw  # compared as timedelta: PG time is turned back into one below
    if data_type == "bit":  # bit(n): the bits as a number; bit(64) needs numeric(20)
        number = int.from_bytes(raw, "big")
        return Decimal(number) if column_type == "bit(64)" else number
    if data_type == "bigint" and "unsigned" in column_type:
        return Decimal(raw)
    return raw


def _target_value(value: Any) -> Any:
    value = _json_pair(value)
    if isinstance(value, dt.time):
        return dt.timedelta(
            hours=value.hour, minutes=value.minute, seconds=value.second,
            microseconds=value.microsecond,
        )  # fmt: skip
    return value


_DATES = {"date", "datetime", "timestamp"}
_GEOMETRY = {"geometry", "point", "linestring", "polygon", "multipoint", "multilinestring",
             "multipolygon", "geometrycollection"}  # fmt: skip


def _key(row: list[Any]) -> str:
    return json.dumps(row, default=repr, sort_keys=True)


def mysql_rows(
    mysql_url: str,
    table: str,
    booleans: set[str],
    jsons: set[str] = frozenset(),  # type: ignore[assignment]
) -> tuple[list[str], list[list[Any]]]:
    """Columns and expected PostgreSQL values of every row of a MySQL table."""
    with connect(mysql_url) as conn:
        cur = conn.cursor()
        cur.execute("SET time_zone = '+00:00'")
        cur.execute(
            "SELECT column_name, data_type, column_type FROM information_schema.columns "
            "WHERE table_schema = DATABASE() AND table_name = ? ORDER BY ordinal_position",
            (table,),
        )
        columns = cur.fetchall()
        select = []
        for name, dtype, _ in columns:
            q = "`" + name.replace("`", "``") + "`"
            # The rule: zero and partial-zero dates (year, month or day 0) arrive as NULL.
            zero = f"YEAR({q}) = 0 OR MONTH({q}) = 0 OR DAYOFMONTH({q}) = 0"
            if dtype in _DATES:
                select.append(f"IF({zero}, NULL, {q})")
            elif dtype in _GEOMETRY:  # the rule: geometry arrives as its WKB
                select.append(f"ST_AsBinary({q})")
            else:
                select.append(q)
        cur.execute(f"SELECT {', '.join(select)} FROM `{table.replace('`', '``')}`")
        rows = [
            [
                expected_value(dtype, ctype, v, name in booleans, name in jsons)
                for (name, dtype, ctype), v in zip(columns, row, strict=True)
            ]
            for row in cur.fetchall()
        ]
    return [c[0] for c in columns], rows


def pg_rows(
    pg_url: str, schema: str, table: str, columns: list[str], jsons: set[str]
) -> list[list[Any]]:
    """Every row of the migrated table, columns in the source's order."""

    def read(c: str) -> str:
        quoted = '"' + c.replace('"', '""') + '"'
        return (
            f"CASE WHEN {quoted} IS NULL THEN NULL ELSE ARRAY['json', {quoted}::text] END"
            if c in jsons
            else quoted
        )

    with psycopg.connect(pg_url) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        query = "SELECT {} FROM {}.{}".format(
            ", ".join(read(c) for c in columns),
            '"' + schema + '"',
            '"' + table.replace('"', '""') + '"',
        )
        return [[_target_value(v) for v in row] for row in conn.execute(query).fetchall()]


def _json_pair(value: Any) -> Any:
    if isinstance(value, list) and len(value) == 2 and value[0] == "json":
        return ("json", json.loads(value[1]))
    return value


def assert_table_equal(
    mysql_url: str,
    pg_url: str,
    schema: str,
    table: str,
    booleans: set[str],
    jsons: set[str] = frozenset(),  # type: ignore[assignment]
) -> int:
    """Every row equal under the cast rules (as multisets); returns the row count."""
    columns, expected = mysql_rows(mysql_url, table, booleans, jsons)
    actual = pg_rows(pg_url, schema, table, columns, jsons)
    assert len(actual) == len(expected), f"{table}: {len(actual)} rows, expected {len(expected)}"
    got, want = sorted(map(_key, actual)), sorted(map(_key, expected))
    if got != want:
        diffs = [
            f"{col}: {a!r} != {b!r}"
            for g, w in zip(sorted(actual, key=_key), sorted(expected, key=_key), strict=True)
            for col, a, b in zip(columns, g, w, strict=True)
            if _key([a]) != _key([b])
        ]
        raise AssertionError(f"{table} differs: {diffs[:20]}")
    return len(expected)
