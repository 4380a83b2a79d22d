"""PostgreSQL rows to Arrow and back through COPY CSV, typed from the catalog.

The C parsers on both ends (PostgreSQL's COPY, Arrow's CSV reader and writer) do the work, so
rows never become Python objects. Types with an exact Arrow counterpart keep it (integers,
numeric(p,s) as decimal128, timestamps, dates, booleans, floats, text); every other type travels
in PostgreSQL's own text form and is parsed back by PostgreSQL on restore. Whether a round trip
is exact is not assumed: every archived batch is loaded back and compared by content hash.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from psycopg import sql
from sqlalchemy.engine import URL

from custody.migration.pgcopy import SESSION_SETTINGS, copy_out_blocks
from custody.pgclient import rechunk

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer


@dataclass(frozen=True)
class ColumnType:
    """One column: its PostgreSQL type as the catalog prints it and its Arrow type."""

    name: str
    pg_type: str

    @property
    def arrow(self) -> pa.DataType:
        """Arrow type of the column in the Parquet object."""
        exact = _EXACT.get(self.pg_type)
        if exact is not None:
            return exact
        numeric = re.fullmatch(r"numeric\((\d+),(\d+)\)", self.pg_type)
        if numeric and int(numeric[1]) <= 38:
            return pa.decimal128(int(numeric[1]), int(numeric[2]))
        return pa.string()


_EXACT: dict[str, pa.DataType] = {
    "smallint": pa.int16(),
    "integer": pa.int32(),
    "bigint": pa.int64(),
    "real": pa.float32(),
    "double precision": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "text": pa.string(),
    "timestamp with time zone": pa.timestamp("us", tz="UTC"),
    "timestamp without time zone": pa.timestamp("us"),
}


def column_types(
    conn: psycopg.Connection[tuple[object, ...]], schema: str, table: str
) -> list[ColumnType]:
    """The table's columns in order, with ``format_type`` names (domains resolved to theirs)."""
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = format('%%I.%%I', %s::text, %s::text)::regclass "
        "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (schema, table),
    ).fetchall()
    return [ColumnType(str(name), str(pg_type)) for name, pg_type in rows]


def read_arrow(
    conn: psycopg.Connection[tuple[object, ...]],
    url: URL,
    columns: list[ColumnType],
    source: sql.Composable,
    where: sql.Composable,
) -> pa.Table:
    """``SELECT columns FROM source WHERE where`` as Arrow, in the connection's snapshot.

    With psql on PATH, psql joins the snapshot and moves the rows (see ``copy_out_blocks``);
    Arrow parses the stream as it arrives, so neither the rows nor the CSV text ever exist as
    Python objects. Timestamps travel in PostgreSQL's ISO output, which Arrow parses itself
    (offset included), under the pinned session settings.
    """
    query = sql.SQL("COPY (SELECT {cols} FROM {src} WHERE {where}) TO STDOUT (FORMAT csv)").format(
        cols=sql.SQL(", ").join(sql.Identifier(c.name) for c in columns), src=source, where=where
    )
    with conn.transaction():
        conn.execute(SESSION_SETTINGS)
        with copy_out_blocks(conn, url, query) as blocks:
            stream = io.BufferedReader(_BlockStream(rechunk(blocks, _BLOCK)), buffer_size=_BLOCK)
            return _parse_csv(stream, columns)


def _parse_csv(stream: io.BufferedIOBase, columns: list[ColumnType]) -> pa.Table:
    return pacsv.read_csv(
        stream,
        read_options=pacsv.ReadOptions(column_names=[c.name for c in columns], block_size=16 << 20),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types={c.name: c.arrow for c in columns},
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
            table = table.set_column(index, field.name, pc.binary_join_element_wise(text, "Z", ""))
    return table
