"""PostgreSQL to PostgreSQL: stream one key range with COPY, verify it by count and hash.

Rows never become Python objects: ``COPY (SELECT ...) TO STDOUT`` on the source is piped, block by
block, into ``COPY ... FROM STDIN`` on the target, in binary wherever the column types allow. Both
sides are then fingerprinted by the same SQL (an order-independent sum of per-row 64-bit
hashes), computed by each server on its own data.

The fingerprint is a property of the data, not of the database (``canonical_digest``): every
column, generated ones included, enters the row hash in a canonical form (the type's exact hash,
its binary send form in the UTF8 client encoding, or its text form: enums by label, reg* by
schema-qualified name), the row is an explicit ``ROW(...)`` of columns of an alias no column can
shadow, and text key ranges compare in byte order (``COLLATE "C"``) when the two databases'
collations differ.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL

from custody.chunks.models import Chunk, ChunkOutcome, KeyValue
from custody.db import get_engine
from custody.migration.catalog import NATIVE_FORM, STRING_FORM, TEXT_FORM, XML_FORM, TableInfo
from custody.pgclient import libpq_dsn, rechunk, snapshot_copy_out
from custody.settings import get_settings

# Fixed output settings so that both servers render every row's text form identically.
SESSION_SETTINGS = (
    "SET LOCAL client_encoding = 'UTF8'; SET LOCAL TimeZone = 'UTC'; "
    "SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL IntervalStyle = 'postgres'; "
    "SET LOCAL extra_float_digits = 1; SET LOCAL bytea_output = 'hex'; "
    "SET LOCAL lc_monetary = 'C'"
)
# reg* values print schema-qualified only when their schema is not on the path: an empty path
# (as pg_dump uses) makes the text form the same in every database. Not while writing into the
# target: a user's trigger there may rely on its own search_path.
NAME_SETTINGS = "SET LOCAL search_path = pg_catalog"


def key_range(
    key: str | None,
    lower: KeyValue | None,
    upper: KeyValue | None,
    *,
    byte_order: bool = False,
) -> sql.Composable:
    """``key > lower AND key <= upper`` (either side may be open; no key: every row).

    ``byte_order`` compares a text key ``COLLATE "C"``: the same rows on two servers whose
    collations differ (the chunk plan must then be made in the same order).
    """
    if key is None:
        return sql.SQL("true")
    column: sql.Composable = sql.Identifier(key)
    if byte_order:
        column = sql.SQL('{} COLLATE "C"').format(column)
    clauses: list[sql.Composable] = []
    if lower is not None:
        clauses.append(sql.SQL("{} > {}").format(column, sql.Literal(lower)))
    if upper is not None:
        clauses.append(sql.SQL("{} <= {}").format(column, sql.Literal(upper)))
    return sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("true")


def chunk_range(info: TableInfo, chunk: Chunk) -> sql.Composable:
    """The chunk's key range of ``info``'s table, in the order its plan was made."""
    return key_range(info.key_column, chunk.lower, chunk.upper, byte_order=info.byte_order_key)


def _from(info: TableInfo) -> sql.Composed:
    """The table itself; an inheritance parent's own rows only (its children are tables too)."""
    return sql.SQL("{only}{table}").format(
        only=sql.SQL("ONLY " if info.has_children else ""),
        table=sql.Identifier(info.schema, info.name),
    )


def select_columns(
    info: TableInfo, where: sql.Composable, columns: tuple[str, ...] | None = None
) -> sql.Composed:
    """The table's columns in order (or ``columns``), for the rows ``where`` selects."""
    return sql.SQL("SELECT {cols} FROM {table} WHERE {where}").format(
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in (columns or info.columns)),
        table=_from(info),
        where=where,
    )


def copy_out_query(info: TableInfo, where: sql.Composable) -> sql.Composed:
    """``select_columns`` as COPY should read it: xml as stored, declaration included.

    xml's output function (and its binary form) leaves out an ``<?xml version="1.0"?>``
    declaration; its text cast does not, and the target's xml input keeps what it is given.
    """
    forms = dict(zip(info.hash_columns, info.canonical, strict=True))
    cols = [
        sql.SQL("{c}::pg_catalog.text AS {c}").format(c=sql.Identifier(c))
        if forms.get(c) == XML_FORM
        else sql.Identifier(c)
        for c in info.columns
    ]
    return sql.SQL("SELECT {cols} FROM {table} WHERE {where}").format(
        cols=sql.SQL(", ").join(cols), table=_from(info), where=where
    )


# Named so that no column can shadow it: columns are referenced as custody_fp_row."name".
_ROW_ALIAS = sql.Identifier("custody_fp_row")


def canonical_digest(info: TableInfo, *, same_encoding: bool = False) -> sql.Composable:
    """Sum of 64-bit hashes of ``ROW(canonical form of every column)``; see ``canonical_form``.

    ``same_encoding``: both servers store text in the same encoding, so equal bytes mean equal
    text and text columns are hashed as stored (``COLLATE "C"``: a deterministic byte hash,
    whatever the column's collation), about 30% cheaper than converting them to UTF-8 first.
    """
    parts: list[sql.Composable] = []
    for column, form in zip(info.hash_columns, info.canonical, strict=True):
        ref = sql.SQL("{}.{}").format(_ROW_ALIAS, sql.Identifier(column))
        if form == NATIVE_FORM:
            parts.append(ref)
        elif form == STRING_FORM and same_encoding:
            parts.append(sql.SQL('{} COLLATE "C"').format(ref))
        elif form in (TEXT_FORM, STRING_FORM, XML_FORM):
            parts.append(sql.SQL("pg_catalog.textsend(({})::pg_catalog.text)").format(ref))
        else:
            parts.append(sql.SQL("{}({})").format(sql.Identifier("pg_catalog", form), ref))
    return sql.SQL(
        "COALESCE(pg_catalog.sum(pg_catalog.hash_record_extended(ROW({}), 0)), 0)::text"
    ).format(sql.SQL(", ").join(parts))


def table_fingerprint(
    cursor: psycopg.Cursor[tuple[object, ...]],
    info: TableInfo,
    where: sql.Composable,
    *,
    verify: str = "hash",
    same_encoding: bool = False,
) -> tuple[int, str]:
    """Count and canonical hash of the rows of ``info``'s table that ``where`` selects.

    Run with ``SESSION_SETTINGS`` and ``NAME_SETTINGS`` in force. ``verify="count"``: rows only.
    """
    if not info.canonical:  # described before canonical forms existed
        method = "count" if verify == "count" else info.hash_method
        return fingerprint(cursor, select_columns(info, where), method=method)
    digest = (
        sql.SQL("'-'") if verify == "count" else canonical_digest(info, same_encoding=same_encoding)
    )
    query = select_columns(info, where, info.hash_columns)
    cursor.execute(
        sql.SQL("SELECT count(*), {d} FROM ({q}) AS {a}").format(d=digest, q=query, a=_ROW_ALIAS)
    )
    row = cursor.fetchone()
    assert row is not None
    return int(str(row[0])), str(row[1])


# hash_record_extended hashes each column with its type's own 64-bit hash, without rendering
# values as text (4x cheaper); types without a hash function fall back to hashing the row text.
# ROW(r.*), not r: a column named like the alias would shadow a bare r, and the "row" hash
# would cover that column only. Same hash as before for every other table (archives use these).
_ROW_HASH = {
    "record": sql.SQL("COALESCE(sum(hash_record_extended(ROW(r.*), 0)), 0)::text"),
    "text": sql.SQL("COALESCE(sum(hashtextextended(ROW(r.*)::text, 0)), 0)::text"),
    "count": sql.SQL("'-'"),
}


def fingerprint(
    cursor: psycopg.Cursor[tuple[object, ...]], query: sql.Composed, *, method: str
) -> tuple[int, str]:
    """Count and order-independent hash (sum of 64-bit row hashes) computed by the server."""
    digest = _ROW_HASH[method]
    cursor.execute(sql.SQL("SELECT count(*), {d} FROM ({q}) r").format(d=digest, q=query))
    row = cursor.fetchone()
    assert row is not None
    return int(str(row[0])), str(row[1])


def fingerprint_returning(
    cursor: psycopg.Cursor[tuple[object, ...]], statement: sql.Composed, *, method: str
) -> tuple[int, str]:
    """Count and hash of the rows a statement returns, e.g. ``DELETE ... RETURNING``.

    Deleting and fingerprinting in one statement reads each row once; a caller that finds the
    wrong fingerprint rolls the transaction back and the rows are still there.
    """
    digest = _ROW_HASH[method]
    cursor.execute(
        sql.SQL("WITH r AS ({q}) SELECT count(*), {d} FROM r").format(d=digest, q=statement)
    )
    row = cursor.fetchone()
    assert row is not None
    return int(str(row[0])), str(row[1])


_PIPE_BYTES = 1 << 20


def _pipe(out: Iterable[bytes | bytearray | memoryview], into: psycopg.Copy) -> None:
    """Move COPY data across in ~1 MB writes."""
    for block in rechunk(out, _PIPE_BYTES):
        into.write(block)


def copy_out_blocks(
    src: psycopg.Connection[tuple[object, ...]], src_url: URL, copy_out: sql.Composed
) -> contextlib.AbstractContextManager[Iterable[bytes | bytearray | memoryview]]:
    """The source rows as COPY data, read in the source transaction's snapshot."""
    settings = f"{SESSION_SETTINGS}; {NAME_SETTINGS}".replace("SET LOCAL", "SET").split("; ")
    return snapshot_copy_out(src, src_url, copy_out, settings, block_size=_PIPE_BYTES)


def same_encoding(
    a: psycopg.Connection[tuple[object, ...]], b: psycopg.Connection[tuple[object, ...]]
) -> bool:
    """Whether two servers store text in the same encoding (reported at connect time)."""
    found = a.info.parameter_status("server_encoding"), b.info.parameter_status("server_encoding")
    return found[0] is not None and found[0] == found[1]


def verify_range(
    source: str, target: str, info: TableInfo, chunk: Chunk, *, verify: str = "hash"
) -> ChunkOutcome:
    """Fingerprint one chunk's key range on both sides again, copying nothing.

    The same count and hash a chunk's copy ends with: re-checks a finished migration (or a
    target someone changed since) chunk by chunk, read-only on both sides.
    """
    settings = get_settings()
    src_url = get_engine(settings.connection_url(source)).url
    dst_url = get_engine(settings.connection_url(target)).url
    where = chunk_range(info, chunk)
    with (
        psycopg.connect(libpq_dsn(src_url)) as src,
        psycopg.connect(libpq_dsn(dst_url)) as dst,
    ):
        for conn in (src, dst):
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            conn.execute(SESSION_SETTINGS)
            conn.execute(NAME_SETTINGS)
        same = same_encoding(src, dst)
        with src.cursor() as rc, dst.cursor() as wc:
            source_fp = table_fingerprint(rc, info, where, verify=verify, same_encoding=same)
            target_fp = table_fingerprint(wc, info, where, verify=verify, same_encoding=same)
        src.rollback()
        dst.rollback()
    return ChunkOutcome(
        source_count=source_fp[0],
        source_hash=source_fp[1],
        target_count=target_fp[0],
        target_hash=target_fp[1],
    )


@dataclass(frozen=True)
class PgRangeCopy:
    """Chunk work: copy and verify one key range of one table between two named connections.

    ``replace_existing`` deletes the range on the target first even on a chunk's first attempt
    (migration into a table that already had rows); retried chunks always do.
    """

    source: str
    target: str
    info: TableInfo
    verify: str = "hash"
    replace_existing: bool = False

    def __call__(self, chunk: Chunk) -> ChunkOutcome:
        """Copy the chunk's range inside one target transaction, then compare both sides."""
        settings = get_settings()
        src_url = get_engine(settings.connection_url(self.source)).url
        dst_url = get_engine(settings.connection_url(self.target)).url
        where = chunk_range(self.info, chunk)
        query = copy_out_query(self.info, where)
        fmt = sql.SQL("(FORMAT BINARY)" if self.info.binary_safe else "")
        with (
            psycopg.connect(libpq_dsn(src_url)) as src,
            psycopg.connect(libpq_dsn(dst_url)) as dst,
        ):
            # One snapshot on the source for both the copy and its fingerprint.
            src.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            src.execute(SESSION_SETTINGS)
            src.execute(NAME_SETTINGS)  # reg* leave the source by name
            dst.execute(SESSION_SETTINGS)
            with src.cursor() as rc, dst.cursor() as wc:
                if chunk.attempt > 1 or self.replace_existing:
                    wc.execute(
                        sql.SQL("DELETE FROM {t} WHERE {w}").format(t=_from(self.info), w=where)
                    )
                copy_in = sql.SQL("COPY {t} ({cols}) FROM STDIN {fmt}").format(
                    t=sql.Identifier(self.info.schema, self.info.name),
                    cols=sql.SQL(", ").join(sql.Identifier(c) for c in self.info.columns),
                    fmt=fmt,
                )
                copy_out = sql.SQL("COPY ({q}) TO STDOUT {fmt}").format(q=query, fmt=fmt)
                # Source last: if reading fails, the COPY into the target is aborted.
                with wc.copy(copy_in) as into, copy_out_blocks(src, src_url, copy_out) as out:
                    _pipe(out, into)
                same = same_encoding(src, dst)
                source = table_fingerprint(
                    rc, self.info, where, verify=self.verify, same_encoding=same
                )
                wc.execute(NAME_SETTINGS)
                target = table_fingerprint(
                    wc, self.info, where, verify=self.verify, same_encoding=same
                )
            src.rollback()
            dst.commit()
        return ChunkOutcome(
            source_count=source[0],
            source_hash=source[1],
            target_count=target[0],
            target_hash=target[1],
        )
