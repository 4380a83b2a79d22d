"""Which rows a retention policy makes eligible, cut into keyset batches."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from custody.chunks.planner import KeyRange
from custody.migration.catalog import TableInfo


@dataclass(frozen=True)
class EligibleRows:
    """A policy's reach on one table now: for the dry-run plan and the progress artifact."""

    rows: int
    bytes_estimate: int


def _eligible(info: TableInfo, time_column: str, cutoff: datetime) -> sql.Composed:
    return sql.SQL("FROM {t} WHERE {c} < {cutoff}").format(
        t=sql.Identifier(info.schema, info.name),
        c=sql.Identifier(time_column),
        cutoff=sql.Literal(cutoff),
    )


def count_eligible(
    conn: psycopg.Connection[Any], info: TableInfo, time_column: str, cutoff: datetime
) -> EligibleRows:
    """Exact count and a size estimate of the eligible rows."""
    row = conn.execute(
        sql.SQL("SELECT count(*) {e}").format(e=_eligible(info, time_column, cutoff))
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
    eligible = _eligible(info, time_column, cutoff)
    uppers: list[Any] = []
    while True:
        after = (
            sql.SQL("AND {k} > {last}").format(k=key, last=sql.Literal(uppers[-1]))
            if uppers
            else sql.SQL("")
        )
        found = conn.execute(
            sql.SQL("SELECT {k} {e} {after} ORDER BY {k} OFFSET {skip} LIMIT 1").format(
                k=key, e=eligible, after=after, skip=sql.Literal(batch_size - 1)
            )
        ).fetchone()
        if found is None:
            break
        uppers.append(found[0])
    last = conn.execute(sql.SQL("SELECT max({k}) {e}").format(k=key, e=eligible)).fetchone()
    if last is None or last[0] is None:
        return []
    if not uppers or uppers[-1] != last[0]:
        uppers.append(last[0])
    lowers: list[Any] = [None, *uppers[:-1]]
    return list(zip(lowers, uppers, strict=True))
