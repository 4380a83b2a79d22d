"""Compare two PostgreSQL databases without the product, and mutate a target to test verification.

``relation_digests`` reads every table, partition and materialized view of a schema with its own
SQL: per relation the row count, a SHA-256 of the sorted row texts, and per column a SHA-256 of
the sorted value texts. Values are rendered as text by the server under fixed settings
(client_encoding UTF8, UTC, ISO dates, shortest-exact floats, hex bytea, search_path pg_catalog so
that reg* values print schema-qualified), so a LATIN1 database and a UTF8 one compare equal when
their text is equal, and an enum compares by label. ``FROM ONLY``: a parent's rows are its own.

``mutate_one`` changes one value in one row of a target table; ``reverify`` runs the product's own
per-chunk verification (``custody.migration.pgcopy.verify_range``) over the chunks the ledger
recorded for a job, or over the whole table, and returns the chunks that no longer match.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import psycopg
from psycopg import sql
from sqlalchemy import Engine, select

SESSION = (
    "SET client_encoding = 'UTF8'; SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; "
    "SET IntervalStyle = 'postgres'; SET extra_float_digits = 1; SET bytea_output = 'hex'; "
    "SET search_path = pg_catalog"
)
NULL = "\\N"


@dataclass
class RelationDigest:
    """What a user would check of one relation: count, rows, and each column on its own."""

    count: int
    rows: str
    columns: dict[str, str] = field(default_factory=dict)


def _sha(values: list[str]) -> str:
    h = hashlib.sha256()
    for v in sorted(values):
        h.update(v.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


def relations(conn: psycopg.Connection, schema: str) -> list[str]:
    """Tables, partitions and materialized views of ``schema``, by name."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'm') ORDER BY 1",
            (schema,),
        )
    ]


def columns_of(conn: psycopg.Connection, schema: str, table: str) -> list[str]:
    """Every column in order, generated ones included."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT a.attname FROM pg_attribute a WHERE a.attrelid = "
            "(SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            " WHERE n.nspname = %s AND c.relname = %s) AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum",
            (schema, table),
        )
    ]


def relation_digest(url: str, schema: str, table: str) -> RelationDigest:
    """Count and digests of one relation, read as text in UTF-8."""
    with psycopg.connect(url) as conn:
        conn.execute(SESSION)
        return _digest(conn, schema, table)


def _digest(conn: psycopg.Connection, schema: str, table: str) -> RelationDigest:
    cols = columns_of(conn, schema, table)
    query = sql.SQL("SELECT {} FROM ONLY {}").format(
        sql.SQL(", ").join(sql.SQL("({})::text").format(sql.Identifier(c)) for c in cols)
        if cols
        else sql.SQL("1"),
        sql.Identifier(schema, table),
    )
    rows = [tuple(NULL if v is None else v for v in r) for r in conn.execute(query)]
    row_texts = ["\t".join(v.replace("\\", "\\\\").replace("\t", "\\t") for v in r) for r in rows]
    per_column = {c: _sha([r[i] for r in rows]) for i, c in enumerate(cols)}
    return RelationDigest(len(rows), _sha(row_texts), per_column)


def relation_digests(url: str, schema: str = "public") -> dict[str, RelationDigest]:
    """``relation_digest`` of every table, partition and materialized view of ``schema``."""
    with psycopg.connect(url) as conn:
        conn.execute(SESSION)
        return {name: _digest(conn, schema, name) for name in relations(conn, schema)}


def differences(src_url: str, dst_url: str, schema: str = "public") -> list[str]:
    """What differs between the two databases' ``schema``: relation or relation.column names."""
    a, b = relation_digests(src_url, schema), relation_digests(dst_url, schema)
    out = [f"{n}: missing on one side" for n in sorted(set(a) ^ set(b))]
    for name in sorted(set(a) & set(b)):
        x, y = a[name], b[name]
        if x.count != y.count:
            out.append(f"{name}: count {x.count} != {y.count}")
        if x.rows != y.rows:
            out.append(f"{name}: rows differ")
        for col in sorted(set(x.columns) | set(y.columns)):
            if x.columns.get(col) != y.columns.get(col):
                out.append(f"{name}.{col}: values differ")
    return out


def mutate_one(
    url: str,
    schema: str,
    table: str,
    column: str,
    new_value: str | None = None,
    where: str | None = None,
) -> None:
    """Change ``column`` in one row of ``table`` (target side), leaving every other row alone.

    ``new_value`` is an SQL expression (it may use the column, e.g. ``"x" || 'z'``); without
    one, the value becomes another row's different value, or NULL, or (was NULL) the column's
    text form of ``'0'``. ``where`` (SQL) picks the row; otherwise the first by the column's
    text. Raises unless exactly one row changed.
    """
    col, rel = sql.Identifier(column), sql.Identifier(schema, table)
    with psycopg.connect(url) as conn:
        conn.execute(SESSION)
        conn.execute(sql.SQL("SET search_path = {}, pg_catalog").format(sql.Identifier(schema)))
        if new_value is not None:
            expr: sql.Composable = sql.SQL(new_value)
        else:
            other = conn.execute(
                sql.SQL(
                    "SELECT count(DISTINCT {c}::text) > 1 FROM ONLY {r} WHERE {c} IS NOT NULL"
                ).format(c=col, r=rel)
            ).fetchone()
            if other and other[0]:
                expr = sql.SQL(
                    "(SELECT {c} FROM ONLY {r} WHERE {c} IS NOT NULL AND {c}::text <> "
                    "(SELECT {c}::text FROM ONLY {r} WHERE ctid = x.ctid) LIMIT 1)"
                ).format(c=col, r=rel)
            else:
                expr = sql.SQL("CASE WHEN {c} IS NULL THEN '0' ELSE NULL END").format(c=col)
        pick = (
            sql.SQL("(SELECT ctid FROM ONLY {r} WHERE {w} LIMIT 1)").format(r=rel, w=sql.SQL(where))
            if where
            else sql.SQL(
                "(SELECT ctid FROM ONLY {r} ORDER BY {c}::text NULLS FIRST LIMIT 1)"
            ).format(r=rel, c=col)
        )
        changed = conn.execute(
            sql.SQL(
                "UPDATE ONLY {r} AS x SET {c} = {e} WHERE ctid = {p} "
                "AND ({c})::text IS DISTINCT FROM ({e})::text"  # a real change, not a no-op
            ).format(r=rel, c=col, e=expr, p=pick)
        ).rowcount
        assert changed == 1, f"no value of {schema}.{table}.{column} changed"


def reverify(
    source: str,
    target: str,
    schema: str,
    table: str,
    *,
    store: Engine | None = None,
    job_id: str | None = None,
) -> list[int]:
    """Re-run the product's chunk verification; return the chunk numbers that do not match.

    ``source``/``target`` are custody connection names. With ``store`` and ``job_id`` the chunks
    are the ones the ledger holds for that job; otherwise one chunk over the whole table.
    """
    from custody.chunks import Chunk
    from custody.db import get_engine
    from custody.migration.catalog import describe_table
    from custody.migration.pgcopy import verify_range
    from custody.settings import get_settings
    from tasks.migration import with_key_order

    settings = get_settings()
    src, dst = (get_engine(settings.connection_url(n)) for n in (source, target))
    info = with_key_order(src, dst, describe_table(src, schema, table))
    chunks = [Chunk(job_id="reverify", chunk_no=0, lower=None, upper=None)]
    if store is not None and job_id is not None:
        import orjson

        from custody.store.tables import job_chunks

        with store.connect() as c:
            rows = c.execute(
                select(job_chunks.c.chunk_no, job_chunks.c.lower_key, job_chunks.c.upper_key)
                .where(job_chunks.c.job_id == job_id)
                .order_by(job_chunks.c.chunk_no)
            ).all()
        assert rows, f"the ledger has no chunks for job {job_id}"
        chunks = [
            Chunk(
                job_id=job_id,
                chunk_no=r.chunk_no,
                lower=None if r.lower_key is None else orjson.loads(r.lower_key),
                upper=None if r.upper_key is None else orjson.loads(r.upper_key),
            )
            for r in rows
        ]
    return [c.chunk_no for c in chunks if not verify_range(source, target, info, c).verified]
