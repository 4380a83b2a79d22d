"""Export a table to the object store as JSON Lines, one verified object per chunk.

This is the library half of the worked example in the README ("Write a new flow"); the flow is
``flows/examples/export_table.py`` and its task ``tasks/examples/export.py``. Everything a new
chunked job needs from custody shows here: the chunk work is a frozen dataclass of *names*
(connection, table, columns, object-store URL), never URLs, rows or secrets, so Prefect can
pass it to any worker; it does one key range idempotently (the same range always writes the
same object key, so a re-run replaces rather than duplicates); and it returns counts and hashes
of both sides, so the chunk engine can decide whether the chunk verified.

Verification: each exported line is fingerprinted as it is written, and again after reading the
object back from the store. The store also checks the upload's SHA-256 on arrival; the read-back
proves the object now at that key is complete and holds every row of the range exactly once.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
from sqlalchemy import select

from custody.chunks import Chunk, ChunkOutcome
from custody.db import get_engine
from custody.errors import InvalidIdentifierError
from custody.fingerprint import Fingerprint
from custody.identifiers import check_column, reflect_table
from custody.settings import get_settings
from custody.storage import check_key_part, join_key, open_store
from custody.transfer.generic import BATCH_ROWS, range_filter


def exported_columns(engine: Any, table: str, key_column: str, exclude: Sequence[str]) -> list[str]:
    """The columns an export writes, in table order: all but ``exclude``.

    Raises:
        InvalidIdentifierError: the table, the key or an excluded column does not exist, or the
            key column is excluded (each exported row must carry its key).
    """
    reflected = reflect_table(engine, table)
    check_column(reflected, key_column)
    for column in exclude:
        check_column(reflected, column)
    if key_column in exclude:
        raise InvalidIdentifierError(
            f"key column {key_column!r} cannot be excluded: every exported row carries its key"
        )
    return [str(c.name) for c in reflected.columns if c.name not in exclude]  # plain str for JSON


def _jsonable(value: Any) -> Any:
    """JSON for the values orjson does not write itself (it writes datetimes, UUIDs, lists)."""
    if isinstance(value, Decimal):
        return str(value)  # exact: "3.0100" stays "3.0100"
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(type(value).__name__)


def json_line(columns: Sequence[str], row: Sequence[Any]) -> bytes:
    """One row as one line of JSON (control characters inside strings are escaped).

    Raises:
        TypeError: a column holds a type JSON export does not write; names the column and the
            type, never the value.
    """
    try:
        return orjson.dumps(dict(zip(columns, row, strict=True)), default=_jsonable) + b"\n"
    except orjson.JSONEncodeError:
        for column, value in zip(columns, row, strict=True):
            try:
                orjson.dumps(value, default=_jsonable)
            except orjson.JSONEncodeError:
                kind = type(value).__name__
                raise TypeError(f"column {column!r}: type {kind} has no JSON form") from None
        raise


def object_key(prefix: str, table: str, chunk_no: int) -> str:
    """Where a chunk's object goes: the same key for the same chunk, run after run."""
    return join_key(prefix, f"{check_key_part(table, 'table')}-{chunk_no:06d}.jsonl")


@dataclass(frozen=True)
class ExportRangeWork:
    """Chunk work: write one key range of a table as a JSON Lines object and read it back.

    A chunk is held in memory whole (one object per chunk): size chunks accordingly.
    """

    source: str
    table: str
    key_column: str
    columns: tuple[str, ...]
    prefix: str
    destination: str | None = None

    def __call__(self, chunk: Chunk) -> ChunkOutcome:
        """Export the chunk's key range and verify the stored object line by line."""
        engine = get_engine(get_settings().connection_url(self.source))
        table = reflect_table(engine, self.table)
        key = table.c[check_column(table, self.key_column)]
        query = (
            select(*(table.c[check_column(table, c)] for c in self.columns))
            .where(range_filter(table, self.key_column, chunk.lower, chunk.upper))
            .order_by(key)
        )
        written, lines = Fingerprint(), []
        with engine.connect() as connection:
            for row in connection.execution_options(yield_per=BATCH_ROWS).execute(query):
                line = json_line(self.columns, row)
                written.add((line.decode(),))
                lines.append(line)
        store = open_store(self.destination)
        where = object_key(self.prefix, self.table, chunk.chunk_no)
        info = store.put(where, b"".join(lines))  # the store checks the SHA-256 on arrival
        stored = Fingerprint()
        for line in store.get(where, info.version_id).splitlines(keepends=True):
            stored.add((line.decode(),))
        details: dict[str, str | int] = {"object_key": where, "bytes": info.size}
        details |= {"sha256": info.sha256} if info.sha256 else {}
        details |= {"version_id": info.version_id} if info.version_id else {}
        return ChunkOutcome(
            source_count=written.count,
            source_hash=written.hexdigest,
            target_count=stored.count,
            target_hash=stored.hexdigest,
            details=details,
        )
