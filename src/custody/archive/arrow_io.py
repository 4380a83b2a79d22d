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
from dataclasses import dataclass

import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql


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

    def select(self) -> sql.Composable:
        """The expression COPY reads: timestamps in ISO 8601, as Arrow parses them."""
        column = sql.Identifier(self.name)
        if self.pg_type == "timestamp with time zone":
            return sql.SQL(
                """to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
            ).format(c=column)
        if self.pg_type == "timestamp without time zone":
            return sql.SQL("""to_char({c}, 'YYYY-MM-DD"T"HH24:MI:SS.US')""").format(c=column)
        return column


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
    columns: list[ColumnType],
    source: sql.Composable,
    where: sql.Composable,
) -> pa.Table:
    """``SELECT columns FROM source WHERE where`` as Arrow, in the connection's snapshot."""
    query = sql.SQL("COPY (SELECT {cols} FROM {src} WHERE {where}) TO STDOUT (FORMAT csv)").format(
        cols=sql.SQL(", ").join(c.select() for c in columns), src=source, where=where
    )
    buffer = io.BytesIO()
    with conn.cursor().copy(query) as copy:
        for block in copy:
            buffer.write(block)
    buffer.seek(0)
    return pacsv.read_csv(
        buffer,
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
    """COPY an Arrow table into ``target`` (same column names), in the current transaction."""
    buffer = io.BytesIO()
    if table.num_rows:
        pacsv.write_csv(
            table,
            buffer,
            write_options=pacsv.WriteOptions(include_header=False, quoting_style="all_valid"),
        )
    copy_in = sql.SQL("COPY {t} ({cols}) FROM STDIN (FORMAT csv)").format(
        t=target, cols=sql.SQL(", ").join(sql.Identifier(n) for n in table.column_names)
    )
    with conn.cursor().copy(copy_in) as copy:
        view = buffer.getbuffer()
        for start in range(0, len(view), 1 << 20):
            copy.write(view[start : start + (1 << 20)])
