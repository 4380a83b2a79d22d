"""Order-independent content hashes of row sets, computed the same way on both sides.

Each row is serialised canonically and hashed with SHA-256; the first 8 bytes, read as an
integer, are summed modulo 2**64. A sum (unlike XOR) does not let two equal rows cancel out,
and the row count travels beside it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Iterable, Sequence
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson

_MASK = 2**64 - 1
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS | orjson.OPT_SORT_KEYS


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return {"$dec": str(value.normalize()) if value.is_finite() else str(value)}
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            return {"$ts": value.astimezone(dt.UTC).isoformat()}
        return {"$ts": value.isoformat()}
    if isinstance(value, dt.date | dt.time):
        return {"$t": value.isoformat()}
    if isinstance(value, dt.timedelta):
        return {"$td": [value.days, value.seconds, value.microseconds]}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$b": bytes(value).hex()}
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return {"$r": repr(value)}


def _float(value: Any) -> Any:
    # orjson writes NaN and ±Infinity as null: they would hash like NULL.
    if isinstance(value, float) and not math.isfinite(value):
        return {"$f": repr(value)}
    return value


def row_bytes(row: Sequence[Any]) -> bytes:
    """Canonical bytes of one row (values in column order)."""
    return orjson.dumps([_float(v) for v in row], default=_default, option=_OPTIONS)


class Fingerprint:
    """Accumulates a count and an order-independent hash of rows."""

    __slots__ = ("count", "total")

    def __init__(self) -> None:
        """Start empty (count 0, hash 0)."""
        self.count = 0
        self.total = 0

    def add(self, row: Sequence[Any]) -> None:
        """Fold one row in."""
        digest = hashlib.sha256(row_bytes(row)).digest()
        self.total = (self.total + int.from_bytes(digest[:8], "big")) & _MASK
        self.count += 1

    def add_all(self, rows: Iterable[Sequence[Any]]) -> None:
        """Fold many rows in."""
        for row in rows:
            self.add(row)

    @property
    def hexdigest(self) -> str:
        """The hash as 16 hex digits."""
        return f"{self.total:016x}"
