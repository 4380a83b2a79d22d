"""Keyset chunk planning: boundaries from one ordered pass over the key, never OFFSET."""

from __future__ import annotations

from sqlalchemy import Engine, Table, func, literal_column, select

from custody.chunks.models import KeyValue
from custody.identifiers import check_column

KeyRange = tuple[KeyValue | None, KeyValue | None]


def plan_key_ranges(
    engine: Engine, table: Table, key_column: str, chunk_size: int
) -> list[KeyRange]:
    """Split ``table`` into ranges of ``chunk_size`` keys, as ``(lower, upper]`` pairs.

    The first range is open below; the last ends at the largest key present now, so a resumed
    job re-checks exactly the rows it planned. An empty table gives no ranges. Keys must be
    unique for chunks to have exactly ``chunk_size`` rows (non-unique keys still give correct,
    only uneven, chunks).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    key = table.c[check_column(table, key_column)]
    numbered = select(key.label("k"), func.row_number().over(order_by=key).label("rn")).subquery()
    boundaries_q = (
        select(numbered.c.k).where(literal_column("rn") % chunk_size == 0).order_by(numbered.c.k)
    )
    with engine.connect() as connection:
        boundaries = [_key(v) for v in connection.execute(boundaries_q).scalars()]
        maximum = connection.execute(select(func.max(key))).scalar()
    if maximum is None:
        return []
    uppers = [b for i, b in enumerate(boundaries) if i == 0 or b != boundaries[i - 1]]
    if not uppers or uppers[-1] != _key(maximum):
        uppers.append(_key(maximum))
    lowers: list[KeyValue | None] = [None, *uppers[:-1]]
    return list(zip(lowers, uppers, strict=True))


def _key(value: object) -> KeyValue:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"keyset chunking needs an integer or text key, got {type(value).__name__}")
    return value
