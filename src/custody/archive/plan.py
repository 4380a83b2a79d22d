"""Which rows a retention policy makes eligible, cut into keyset batches."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from custody.archive.checks import table_oid
from custody.chunks.planner import KeyRange
from custody.migration.catalog import TableInfo


@dataclass(frozen=True)
class EligibleRows:
    """A policy's reach on one table now: for the dry-run plan and the progress artifact."""

    rows: int
    bytes_estimate: int


def _eligible(
    conn: psycopg.Connection[Any], info: TableInfo, time_column: str, cutoff: datetime
) -> sql.Composed:
    """``FROM table WHERE time < cutoff``; ``ONLY`` for a plain table (children are their own)."""
    _, relkind = table_oid(conn, info.schema, info.name)
    table = sql.Identifier(info.schema, info.name)
    return sql.SQL("FROM {only}{t} WHERE {c} < {cutoff}").format(
        only=sql.SQL("ONLY " if relkind == "r" else ""),
        t=table,
        c=sql.Identifier(time_column),
        cutoff=sql.Literal(cutoff),
    )


def _key_bound(conn: psycopg.Connection[Any], info: TableInfo) -> sql.Composable:
    """How a batch bound is read: integers as they are, every other key as its exact text.

    The ledger keeps bounds as integers or text; PostgreSQL reads the text back as the key's
    type when a batch compares against it (uuid, timestamps, text, numeric, ...).
    """
    key = sql.Identifier(info.key_column or "")
    kind = conn.execute(
        "SELECT t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "WHERE a.attrelid = format('%%I.%%I', %s::text, %s::text)::regclass AND a.attname = %s",
        (info.schema, info.name, info.key_column),
    ).fetchone()
    if kind is not None and kind[0] in ("int2", "int4", "int8"):
        return key
    return sql.SQL("{k}::text").format(k=key)


def count_eligible(
    conn: psycopg.Connection[Any], info: TableInfo, time_column: str, cutoff: datetime
) -> EligibleRows:
    """Exact count and a size estimate of the eligible rows."""
    row = conn.execute(
        sql.SQL("SELECT count(*) {e}").format(e=_eligible(conn, info, time_column, cutoff))
    ).fetchone()
    width = conn.execute(
        "SELECT COALESCE(sum(avg_width), 0) FROM pg_stats WHERE schemaname = %s AND tablename = %s",
        (info.schema, info.name),
    ).fetchone()
    assert row is not None and width is not None
    rows = int(row[0])
    return EligibleRows(rows, rows * int(width[0] or 0))


def plan_eligible_ranges(
    conn: psycopg.Connection[Any],
    info: TableInfo,
    time_column: str,
    cutoff: datetime,
    batch_size: int,
) -> list[KeyRange]:
    """Key ranges of about ``batch_size`` eligible rows each, found by seeking along the key."""
    if info.key_column is None:
        raise ValueError(f"table {info.name!r} needs a single-column primary key to archive")
    key = sql.Identifier(info.key_column)
    bound = _key_bound(conn, info)
    eligible = _eligible(conn, info, time_column, cutoff)
    uppers: list[Any] = []
    while True:
        after = (
            sql.SQL("AND {k} > {last}").format(k=key, last=sql.Literal(uppers[-1]))
            if uppers
            else sql.SQL("")
        )
        found = conn.execute(
            sql.SQL("SELECT {b} {e} {after} ORDER BY {k} OFFSET {skip} LIMIT 1").format(
                b=bound, k=key, e=eligible, after=after, skip=sql.Literal(batch_size - 1)
            )
        ).fetchone()
        if found is None:
            break
        uppers.append(found[0])
    last = conn.execute(
        sql.SQL("SELECT {b} {e} ORDER BY {k} DESC LIMIT 1").format(b=bound, k=key, e=eligible)
    ).fetchone()
    if last is None or last[0] is None:
        return []
    if not uppers or uppers[-1] != last[0]:
        uppers.append(last[0])
    lowers: list[Any] = [None, *uppers[:-1]]
    return list(zip(lowers, uppers, strict=True))
