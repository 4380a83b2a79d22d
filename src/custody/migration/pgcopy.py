"""PostgreSQL to PostgreSQL: stream one key range with COPY, verify it by count and hash.

Rows never become Python objects: ``COPY (SELECT ...) TO STDOUT`` on the source is piped, block by
block, into ``COPY ... FROM STDIN`` on the target, in binary wherever the column types allow. Both
sides are then fingerprinted by the same SQL (an order-independent sum of per-row MD5 prefixes
of per-row 64-bit hashes), computed by each server on its own data.
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
from custody.migration.catalog import TableInfo
from custody.pgclient import has_client_tool, libpq_dsn, psql_copy_out, rechunk
from custody.settings import get_settings

# Fixed output settings so that both servers render every row's text form identically.
SESSION_SETTINGS = (
    "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; "
    "SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 1; "
    "SET LOCAL bytea_output = 'hex'"
)


def key_range(key: str | None, lower: KeyValue | None, upper: KeyValue | None) -> sql.Composable:
    """``key > lower AND key <= upper`` (either side may be open; no key: every row)."""
    if key is None:
        return sql.SQL("true")
    clauses: list[sql.Composable] = []
    if lower is not None:
        clauses.append(sql.SQL("{} > {}").format(sql.Identifier(key), sql.Literal(lower)))
    if upper is not None:
        clauses.append(sql.SQL("{} <= {}").format(sql.Identifier(key), sql.Literal(upper)))
    return sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("true")


def select_columns(info: TableInfo, where: sql.Composable) -> sql.Composed:
    """The table's columns in order, for the rows ``where`` selects."""
    return sql.SQL("SELECT {cols} FROM {only}{table} WHERE {where}").format(
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in info.columns),
        only=sql.SQL("ONLY " if info.has_children else ""),
        table=sql.Identifier(info.schema, info.name),
        where=where,
    )


# hash_record_extended hashes each column with its type's own 64-bit hash, without rendering
# values as text (4x cheaper); types without a hash function fall back to hashing the row text.
_ROW_HASH = {
    "record": sql.SQL("COALESCE(sum(hash_record_extended(t, 0)), 0)::text"),
    "text": sql.SQL("COALESCE(sum(hashtextextended(t::text, 0)), 0)::text"),
    "count": sql.SQL("'-'"),
}


def fingerprint(
    cursor: psycopg.Cursor[tuple[object, ...]], query: sql.Composed, *, method: str
) -> tuple[int, str]:
    """Count and order-independent hash (sum of 64-bit row hashes) computed by the server."""
    digest = _ROW_HASH[method]
    cursor.execute(sql.SQL("SELECT count(*), {d} FROM ({q}) t").format(d=digest, q=query))
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
        sql.SQL("WITH t AS ({q}) SELECT count(*), {d} FROM t").format(d=digest, q=statement)
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
    """The source rows as COPY data, read in the source transaction's snapshot.

    With psql on PATH a psql process joins the snapshot (``SET TRANSACTION SNAPSHOT``) and moves
    the rows in C: about twice the rows per second of reading them here, row by row, through
    libpq. Without psql, this connection reads them itself.
    """
    if not has_client_tool("psql"):
        return src.cursor().copy(copy_out)
    snapshot = src.execute("SELECT pg_export_snapshot()").fetchone()
    assert snapshot is not None
    script = ";\n".join([
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot[0])).as_string(src),
        *SESSION_SETTINGS.replace("SET LOCAL", "SET").split("; "),
        copy_out.as_string(src),
        "COMMIT;\n",
    ])  # fmt: skip
    return psql_copy_out(src_url, script, block_size=_PIPE_BYTES)


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
    query = select_columns(info, key_range(info.key_column, chunk.lower, chunk.upper))
    method = "count" if verify == "count" else info.hash_method
    with (
        psycopg.connect(libpq_dsn(src_url)) as src,
        psycopg.connect(libpq_dsn(dst_url)) as dst,
    ):
        src.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        src.execute(SESSION_SETTINGS)
        dst.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        dst.execute(SESSION_SETTINGS)
        with src.cursor() as rc, dst.cursor() as wc:
            source_fp = fingerprint(rc, query, method=method)
            target_fp = fingerprint(wc, query, method=method)
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
        where = key_range(self.info.key_column, chunk.lower, chunk.upper)
        query = select_columns(self.info, where)
        fmt = sql.SQL("(FORMAT BINARY)" if self.info.binary_safe else "")
        method = "count" if self.verify == "count" else self.info.hash_method
        with (
            psycopg.connect(libpq_dsn(src_url)) as src,
            psycopg.connect(libpq_dsn(dst_url)) as dst,
        ):
            # One snapshot on the source for both the copy and its fingerprint.
            src.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            src.execute(SESSION_SETTINGS)
            dst.execute(SESSION_SETTINGS)
            with src.cursor() as rc, dst.cursor() as wc:
                if chunk.attempt > 1 or self.replace_existing:
                    wc.execute(
                        sql.SQL("DELETE FROM {only}{t} WHERE {w}").format(
                            only=sql.SQL("ONLY " if self.info.has_children else ""),
                            t=sql.Identifier(self.info.schema, self.info.name),
                            w=where,
                        )
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
                source = fingerprint(rc, query, method=method)
                target = fingerprint(wc, select_columns(self.info, where), method=method)
            src.rollback()
            dst.commit()
        return ChunkOutcome(
            source_count=source[0],
            source_hash=source[1],
            target_count=target[0],
            target_hash=target[1],
        )
