"""Each archived column: how its values are compared exactly, and how Parquet holds them.

The archive is the proof that rows may be deleted, so the comparison between the object and the
source must not hide a difference. Every column is reduced to a canonical byte string, computed
by PostgreSQL on both sides with the same SQL:

- ``send``: the type's binary send function (``int4send``, ``numeric_send``, ``textsend``, ...):
  the exact value, never a collation-aware comparison and never a normalising text rendering.
  Text is sent in the client encoding, which custody always sets to UTF8.
- ``xml``: the stored document itself (``xml::text`` is a binary coercion). Both xml's text output
  and its send function drop a ``<?xml version="1.0"?>`` declaration.
- ``oid``: reg* columns (regclass, regtype, ...) as the OID they hold.
- ``text``: the type's text output under pinned settings, for values whose send form carries
  database-specific OIDs (composites, arrays of user types) or types without a send function.

Each row's canonical columns are hashed as one record of bytea values (``hash_record_extended``:
bytea hashes its bytes, with no collation) and the 64-bit row hashes summed. The method name
``HASH_METHOD`` and each column's canonical kind are stored in the manifest, so a restore checks
an archive with exactly what verified it, whatever the live table looks like by then.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql

from custody.errors import CustodyError

HASH_METHOD = "pg-send-record64-v1"
FIRST_USER_OID = 16384

# Output settings under which every text form below is PostgreSQL's exact, re-readable one.
SESSION_SETTINGS = (
    "SET LOCAL client_encoding = 'UTF8'; SET LOCAL TimeZone = 'UTC'; "
    "SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL IntervalStyle = 'postgres'; "
    "SET LOCAL extra_float_digits = 1; SET LOCAL bytea_output = 'hex'; "
    "SET LOCAL lc_monetary = 'C'"
)


class ColumnRefusedError(CustodyError):
    """A column's values cannot be archived and restored exactly; nothing was touched."""


@dataclass(frozen=True)
class ArchiveColumn:
    """One column as archived: recorded in the manifest, so a restore needs nothing else.

    Attributes:
        name: Column name.
        pg_type: ``format_type`` with every user type schema-qualified (a temp table of these
            types holds the object's rows exactly as the source held them).
        canon: ``send``, ``xml``, ``oid`` or ``text`` (see the module docstring).
        send: Qualified send function for ``send`` (``pg_catalog.int4send``), else empty.
        base_type: The type ``send`` applies to (a domain's base type), else empty.
        arrow: Arrow type name kept natively in Parquet (``int32``, ``timestamp_utc``, ...), or
            ``text`` for PostgreSQL's exact text form.
        generated: A stored generated column: restored by recomputation, then checked.
        identity: ``a`` (ALWAYS), ``d`` (BY DEFAULT) or empty.
    """

    name: str
    pg_type: str
    canon: str
    send: str = ""
    base_type: str = ""
    arrow: str = "text"
    generated: bool = False
    identity: str = ""

    def as_json(self) -> dict[str, Any]:
        """The manifest's record of the column."""
        return {
            "name": self.name, "type": self.pg_type, "canon": self.canon, "send": self.send,
            "base_type": self.base_type, "arrow": self.arrow, "generated": self.generated,
            "identity": self.identity,
        }  # fmt: skip

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ArchiveColumn:
        """Read a manifest's record back (raises KeyError on a manifest from before v2)."""
        return cls(
            name=str(value["name"]), pg_type=str(value["type"]), canon=str(value["canon"]),
            send=str(value.get("send", "")), base_type=str(value.get("base_type", "")),
            arrow=str(value.get("arrow", "text")), generated=bool(value.get("generated")),
            identity=str(value.get("identity", "")),
        )  # fmt: skip

    def select_expr(self) -> sql.Composable:
        """What COPY reads for Parquet: the column, or its exact form where output would lose."""
        ident = sql.Identifier(self.name)
        if self.canon == "xml":
            return sql.SQL("{c}::text").format(c=ident)
        if self.canon == "oid":
            return sql.SQL("{c}::oid").format(c=ident)
        return ident

    def canon_expr(self, alias: str | None = None) -> sql.Composable:
        """The column's canonical bytes (NULL stays NULL)."""
        ident = sql.Identifier(alias, self.name) if alias else sql.Identifier(self.name)
        if self.canon == "send":
            schema, _, function = self.send.partition(".")
            value: sql.Composable = ident
            if self.base_type:
                value = sql.SQL("({c})::{t}").format(
                    c=ident, t=sql.SQL(checked_type(self.base_type))
                )
            return sql.SQL("{f}({v})").format(f=sql.Identifier(schema, function), v=value)
        if self.canon == "oid":
            return sql.SQL("pg_catalog.oidsend({c}::oid)").format(c=ident)
        if self.canon in ("xml", "text"):
            return sql.SQL("pg_catalog.textsend({c}::text)").format(c=ident)
        raise ColumnRefusedError(f"column {self.name!r}: unknown canonical form {self.canon!r}")

    def arrow_type(self) -> pa.DataType:
        """The Arrow type the column is read as (``text``: PostgreSQL's exact text form)."""
        return arrow_type(self.arrow)


_NATIVE: dict[str, pa.DataType] = {
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "date32": pa.date32(),
    "timestamp": pa.timestamp("us"),
    "timestamp_utc": pa.timestamp("us", tz="UTC"),
    "text": pa.string(),
}
_BY_TYPNAME = {
    "int2": "int16", "int4": "int32", "int8": "int64", "float4": "float32", "float8": "float64",
    "bool": "bool", "date": "date32", "timestamp": "timestamp", "timestamptz": "timestamp_utc",
}  # fmt: skip
# Arrow types whose parser refuses some PostgreSQL values (infinity, BC, after 9999, NaN):
# a batch holding one keeps that column as PostgreSQL text instead (see arrow_io).
FALLIBLE = {"date32", "timestamp", "timestamp_utc"}


def arrow_type(name: str) -> pa.DataType:
    """Arrow type for a stored ``arrow`` name (``decimal(p,s)`` or one of the natives)."""
    found = re.fullmatch(r"decimal\((\d+),(\d+)\)", name)
    if found:
        return pa.decimal128(int(found[1]), int(found[2]))
    return _NATIVE[name]


def is_fallible(name: str) -> bool:
    """Whether some PostgreSQL values of the column have no Arrow form."""
    return name in FALLIBLE or name.startswith("decimal")


def checked_type(type_name: str) -> str:
    """A type name from the catalog or the manifest, inlined only in the shapes format_type has.

    Raises:
        ColumnRefusedError: the text is not shaped like a type name.
    """
    if (
        not re.fullmatch(r'[A-Za-z0-9_ ."$(),\[\]\u0080-\U0010ffff-]+', type_name)
        or ";" in type_name
    ):
        raise ColumnRefusedError(f"type name {type_name!r} is not a type name")
    return type_name


_HOLDS_XML = """
(WITH RECURSIVE inside(oid) AS (
    SELECT a.atttypid
    UNION
    SELECT x.child FROM inside i JOIN pg_type t ON t.oid = i.oid
    CROSS JOIN LATERAL (
        SELECT NULLIF(t.typelem, 0) UNION ALL SELECT NULLIF(t.typbasetype, 0)
        UNION ALL SELECT a.atttypid FROM pg_attribute a
            WHERE a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE r.rngtypid = t.oid
        UNION ALL SELECT r.rngsubtype FROM pg_range r WHERE r.rngmultitypid = t.oid
    ) x(child) WHERE x.child IS NOT NULL
) SELECT bool_or(oid = 'pg_catalog.xml'::regtype) FROM inside)
"""
_TYPE_COLUMNS = """
t.oid, t.typname, t.typtype, t.typcategory, t.typbasetype, t.typtypmod, t.typelem, t.typrelid,
t.typsend::oid, n.nspname, p.proname, format_type(t.oid, {typmod}),
t.typsubscript = 'array_subscript_handler'::regproc, COALESCE(et.typtype, '')
"""
_TYPE_JOINS = """
LEFT JOIN pg_proc p ON p.oid = t.typsend LEFT JOIN pg_namespace n ON n.oid = p.pronamespace
LEFT JOIN pg_type et ON et.oid = t.typelem
"""
# One query for every column and its type (several more only for domains).
_COLUMNS = (
    "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypmod, "
    "a.attgenerated <> '', a.attidentity, "
    + _HOLDS_XML
    + ", "
    + _TYPE_COLUMNS.format(typmod="a.atttypmod")
    + " FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
    + _TYPE_JOINS
    + " WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
)
_TYPE = (
    "SELECT " + _TYPE_COLUMNS.format(typmod="%s") + " FROM pg_type t " + _TYPE_JOINS
    + " WHERE t.oid = %s"
)  # fmt: skip


def archive_columns(conn: psycopg.Connection[Any], relid: int, table: str) -> list[ArchiveColumn]:
    """Every column of the table (generated ones too), classified.

    Run with ``search_path = pg_catalog`` so that format_type qualifies every user type.

    Raises:
        ColumnRefusedError: a column holds xml inside an array or a composite, which no
            PostgreSQL output form keeps exactly (names the table and the column).
    """
    found = conn.execute(_COLUMNS, (relid,)).fetchall()
    return [
        _classify(conn, table, str(r[0]), str(r[1]), int(r[2]), bool(r[3]), str(r[4]),
                  bool(r[5]), tuple(r[6:]))
        for r in found
    ]  # fmt: skip


def _classify(
    conn: psycopg.Connection[Any],
    table: str,
    name: str,
    pg_type: str,
    typmod: int,
    generated: bool,
    identity: str,
    holds_xml: bool,
    row: tuple[Any, ...],
) -> ArchiveColumn:
    is_domain = row[2] == "d"
    while row[2] == "d":  # a domain: its base type decides
        found = conn.execute(_TYPE, (int(row[5]), int(row[4]))).fetchone()
        assert found is not None
        row = tuple(found)
    oid, typname, typtype, elem, relid, send_oid = row[0], row[1], row[2], row[6], row[7], row[8]
    nsp, proname, base, is_array, elem_kind = row[9], row[10], row[11], row[12], row[13]
    column = ArchiveColumn(name=name, pg_type=pg_type, canon="text", generated=generated,
                           identity=identity)  # fmt: skip
    builtin = oid < FIRST_USER_OID
    if holds_xml:
        if typname == "xml" and builtin:
            return _with(column, canon="xml")
        raise ColumnRefusedError(
            f"table {table!r}, column {name!r} ({pg_type}): xml inside an array or a composite "
            "cannot be archived exactly (PostgreSQL's output drops its XML declaration)"
        )
    if typname.startswith("reg") and builtin:
        return _with(column, canon="oid", arrow="int64")
    if relid or not send_oid:  # composite, or no send function: the exact text form
        return column
    if is_array and (elem >= FIRST_USER_OID or elem_kind != "b"):
        return column  # array_send would carry the element type's database-specific OID
    if typtype not in ("b", "e", "r", "m"):
        return column
    return _with(
        column, canon="send", send=f"{nsp}.{proname}", base_type=str(base) if is_domain else "",
        arrow=_arrow_name(typname, builtin, str(base)) if not is_array
        else "text",
    )  # fmt: skip


def _with(column: ArchiveColumn, **changes: Any) -> ArchiveColumn:
    from dataclasses import replace

    return replace(column, **changes)


def _arrow_name(typname: str, builtin: bool, formatted: str) -> str:
    if not builtin:
        return "text"
    if typname in _BY_TYPNAME:
        return _BY_TYPNAME[typname]
    numeric = re.fullmatch(r"numeric\((\d+),(-?\d+)\)", formatted)
    if numeric and 0 <= int(numeric[2]) <= int(numeric[1]) <= 38:
        return f"decimal({numeric[1]},{numeric[2]})"
    return "text"


def row_hash_sql(columns: list[ArchiveColumn], alias: str | None = None) -> sql.Composable:
    """One row's 64-bit hash over its canonical column bytes (in the columns' order)."""
    return sql.SQL("hash_record_extended(ROW({cols}), 0)").format(
        cols=sql.SQL(", ").join(c.canon_expr(alias) for c in columns)
    )


def fingerprint_sql(columns: list[ArchiveColumn], rows: sql.Composable) -> sql.Composed:
    """``count, sum of row hashes`` over the rows of ``rows`` (a FROM item aliased ``t``)."""
    return sql.SQL("SELECT count(*), COALESCE(sum({h}), 0)::text FROM {rows}").format(
        h=row_hash_sql(columns, "t"), rows=rows
    )


def fingerprint_of_hashes() -> sql.SQL:
    """``count, sum of row hashes`` over ``t``, whose column ``h`` holds ``row_hash_sql``.

    The same result as ``fingerprint_sql`` over the rows, for a statement that hashed them as
    it went (``DELETE ... RETURNING``).
    """
    return sql.SQL("SELECT count(*), COALESCE(sum(t.h), 0)::text FROM t")


def fingerprint(
    conn: psycopg.Connection[Any], columns: list[ArchiveColumn], rows: sql.Composable
) -> tuple[int, str]:
    """Count and canonical hash of rows, computed by the server."""
    found = conn.execute(fingerprint_sql(columns, rows)).fetchone()
    assert found is not None
    return int(found[0]), str(found[1])
