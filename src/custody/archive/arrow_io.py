"""PostgreSQL rows to Arrow and back through COPY CSV, typed from the archive's column list.

The C parsers on both ends (PostgreSQL's COPY, Arrow's CSV reader and writer) do the work, so
rows never become Python objects. Types with an exact Arrow counterpart keep it (integers,
floats, booleans, numeric(p,s) as decimal128 where 0 <= s <= p <= 38, dates, timestamps); every
other type travels in PostgreSQL's own exact text form (see ``custody.archive.columns``) and is
parsed back by PostgreSQL on restore. A batch holding a value Arrow cannot represent (infinity,
a BC or after-9999 date or timestamp, a NaN in a numeric(p,s)) keeps that column as text in that
object; each field's metadata says which form it holds. Whether a round trip is exact is never
assumed: every archived batch is loaded back and compared by its canonical hash.
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql
from sqlalchemy.engine import URL

from custody.archive.columns import SESSION_SETTINGS, ArchiveColumn, is_fallible
from custody.pgclient import rechunk, snapshot_copy_out

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

FORMAT_VERSION = "2"
# Arrow's CSV reader drops a UTF-8 byte order mark at the start of its input: the stream gets
# a first line of its own, skipped, so a BOM at the start of the first value is data.
_LEAD = b"custody\n"


def read_arrow(
    conn: psycopg.Connection[Any],
    url: URL,
    columns: list[ArchiveColumn],
    source: sql.Composable,
    where: sql.Composable,
) -> pa.Table:
    """``SELECT columns FROM source WHERE where`` as Arrow, in the connection's transaction.

    With psql on PATH, psql joins the snapshot and moves the rows; Arrow parses the stream as it
    arrives, so neither the rows nor the CSV text ever exist as Python objects. Call inside a
    REPEATABLE READ transaction: a batch with values Arrow cannot hold is read a second time.
    """
    query = sql.SQL("COPY (SELECT {cols} FROM {src} WHERE {where}) TO STDOUT (FORMAT csv)").format(
        cols=sql.SQL(", ").join(c.select_expr() for c in columns), src=source, where=where
    )
    conn.execute(SESSION_SETTINGS)
    types = {c.name: c.arrow_type() for c in columns}
    try:
        table = _read(conn, url, query, columns, types)
        stored = {c.name: c.arrow for c in columns}
    except pa.ArrowInvalid:  # its message quotes the value: dropped here, not chained
        table = None
    if table is None:
        fallible = [c for c in columns if is_fallible(c.arrow)]
        types |= {c.name: pa.string() for c in fallible}
        table = _read(conn, url, query, columns, types)
        stored = {c.name: c.arrow for c in columns}
        for column in fallible:
            index = table.schema.get_field_index(column.name)
            try:
                native = pc.cast(table.column(index), column.arrow_type())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                stored[column.name] = "text"
                continue
            table = table.set_column(index, column.name, native)
    return with_metadata(table, columns, stored)


def with_metadata(
    table: pa.Table, columns: list[ArchiveColumn], stored: dict[str, str]
) -> pa.Table:
    """The table with each field's PostgreSQL type and stored form in its Parquet metadata."""
    fields = [
        table.schema.field(c.name).with_metadata({
            "pg_type": c.pg_type, "custody.stored_as": stored[c.name],
            "custody.generated": "true" if c.generated else "false",
            "custody.identity": c.identity,
        })
        for c in columns
    ]  # fmt: skip
    described = [
        {"name": c.name, "pg_type": c.pg_type, "stored_as": stored[c.name]} for c in columns
    ]
    schema = pa.schema(fields, metadata={
        "custody.archive_format": FORMAT_VERSION,
        "custody.columns": json.dumps(described, ensure_ascii=False),
        "custody.text_form": "PostgreSQL output with client_encoding=UTF8, TimeZone=UTC, "
        "DateStyle=ISO, IntervalStyle=postgres, extra_float_digits=1, bytea_output=hex, "
        "lc_monetary=C; xml as stored (declaration kept); reg* as OIDs",
    })  # fmt: skip
    return pa.Table.from_arrays(table.columns, schema=schema)


def _read(
    conn: psycopg.Connection[Any],
    url: URL,
    query: sql.Composed,
    columns: list[ArchiveColumn],
    types: dict[str, pa.DataType],
) -> pa.Table:
    with _copy_out(conn, url, query) as blocks:
        lead: list[bytes | bytearray | memoryview] = [_LEAD]
        stream = io.BufferedReader(
            _BlockStream(rechunk(_chain(lead, blocks), _BLOCK)), buffer_size=_BLOCK
        )
        return _parse_csv(stream, columns, types)


def _chain(
    first: list[bytes | bytearray | memoryview], rest: Iterable[bytes | bytearray | memoryview]
) -> Iterator[bytes | bytearray | memoryview]:
    yield from first
    yield from rest


def _copy_out(
    conn: psycopg.Connection[Any], url: URL, copy_out: sql.Composed
) -> contextlib.AbstractContextManager[Iterable[bytes | bytearray | memoryview]]:
    """COPY data in this transaction's snapshot: psql joins it when on PATH, else this conn."""
    return snapshot_copy_out(conn, url, copy_out, SESSION_SETTINGS.split("; "), block_size=_BLOCK)


def _parse_csv(
    stream: io.BufferedIOBase, columns: list[ArchiveColumn], types: dict[str, pa.DataType]
) -> pa.Table:
    return pacsv.read_csv(
        stream,
        read_options=pacsv.ReadOptions(
            column_names=[c.name for c in columns], skip_rows=1, block_size=16 << 20
        ),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=types,
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,  # "" is an empty string, unquoted nothing is NULL
            true_values=["t"],
            false_values=["f"],
        ),
    )


def write_arrow(
    conn: psycopg.Connection[tuple[object, ...]], table: pa.Table, target: sql.Composable
) -> None:
    """COPY an Arrow table into ``target`` (same column names), in the current transaction.

    Written a slice of rows at a time, so the CSV text is never held whole.
    """
    copy_in = sql.SQL("COPY {t} ({cols}) FROM STDIN (FORMAT csv)").format(
        t=target, cols=sql.SQL(", ").join(sql.Identifier(n) for n in table.column_names)
    )
    options = pacsv.WriteOptions(include_header=False, quoting_style="all_valid")
    with conn.cursor().copy(copy_in) as copy:
        for batch in _utc_text(table).to_batches(max_chunksize=_WRITE_ROWS):
            buffer = io.BytesIO()
            pacsv.write_csv(batch, buffer, write_options=options)
            copy.write(buffer.getbuffer())


_BLOCK = 1 << 20
_WRITE_ROWS = 8192


class _BlockStream(io.RawIOBase):
    """A readable file over blocks of bytes, for Arrow's streaming CSV reader."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._blocks = blocks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        if not self._pending:
            self._pending = memoryview(next(self._blocks, b""))
        target = memoryview(buffer).cast("B")
        size = min(len(target), len(self._pending))
        target[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def _utc_text(table: pa.Table) -> pa.Table:
    """Zoned timestamps as UTC text with a ``Z``: Arrow's CSV writer formats them 30x slower.

    The cast to a naive timestamp keeps the UTC wall time; the ``Z`` keeps PostgreSQL from
    reading it in the session's time zone.
    """
    for index, field in enumerate(table.schema):
        if pa.types.is_timestamp(field.type) and field.type.tz is not None:
            text = table.column(index).cast(pa.timestamp(field.type.unit)).cast(pa.string())
            table = table.set_column(
                index, field.name, pc.binary_join_element_wise(text, _string("Z"), _string(""))
            )
    return table


def _string(text: str) -> pa.StringScalar:
    """An Arrow string scalar built from buffers.

    ``pa.scalar`` and ``pa.array`` on Python objects import pandas on first use (seconds of
    CPU, once per process, in the middle of the first batch): Arrow-only code never needs it.
    """
    data = text.encode()
    offsets = pa.py_buffer(struct.pack("<ii", 0, len(data)))
    array = pa.StringArray.from_buffers(1, offsets, pa.py_buffer(data))
    scalar = array[0]
    assert isinstance(scalar, pa.StringScalar)
    return scalar
