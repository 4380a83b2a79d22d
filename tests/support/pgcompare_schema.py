"""Independent source/target comparison for schema-object migration tests.

Everything here is the test's own SQL or pg_dump, not the product's fingerprint, except
``assert_chunk_mutation_detected``, which deliberately calls the product's chunk verification to
show that it notices a changed target value.
"""

from __future__ import annotations

import re
import subprocess

import orjson
import psycopg
from psycopg import sql
from sqlalchemy import Engine, select

from custody.db import get_engine
from custody.migration.catalog import describe_table
from custody.migration.names import dump_pattern, table_job_id
from custody.migration.pgcopy import SESSION_SETTINGS, fingerprint, key_range, select_columns
from custody.store.tables import job_chunks

_SETTINGS = SESSION_SETTINGS.replace("SET LOCAL", "SET")


def relation_digests(url: str, schema: str) -> dict[str, tuple[int, str]]:
    """Row count and MD5 of the sorted row texts of every table and matview of ``schema``.

    Plain tables are read with ONLY (inheritance children are relations of their own).
    """
    out: dict[str, tuple[int, str]] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_SETTINGS)
        rels = conn.execute(
            "SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'm') "
            "AND NOT c.relispartition ORDER BY 1",
            (schema,),
        ).fetchall()
        for name, kind in rels:
            only = sql.SQL("ONLY " if kind == "r" else "")
            row = conn.execute(
                sql.SQL(
                    "SELECT count(*), md5(COALESCE(string_agg(t::text, E'\\n' "
                    "ORDER BY t::text COLLATE \"C\"), '')) FROM {only}{t} t"
                ).format(only=only, t=sql.Identifier(schema, name))
            ).fetchone()
            assert row is not None
            out[name] = (int(row[0]), str(row[1]))
    return out


_NOISE = re.compile(r"^(--.*|SET .*|SELECT pg_catalog\.set_config.*|\\(un)?restrict .*|)$")


def schema_ddl(url: str, schema: str, tables: list[str] | None = None) -> list[str]:
    """``pg_dump --schema-only`` of a schema (or of some of its tables), without noise lines."""
    args = ["pg_dump", "--schema-only", "--no-owner", "--no-privileges", "-d", url]
    if tables is None:
        args.append(f"--schema={dump_pattern(schema)}")
    else:
        args += [f"--table={dump_pattern(schema)}.{dump_pattern(t)}" for t in tables]
    text = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return [line for line in text.splitlines() if not _NOISE.match(line)]


def sequence_states(url: str, schema: str) -> dict[str, tuple[object, ...]]:
    """Every sequence of ``schema``: its options, last_value and is_called, read directly."""
    out: dict[str, tuple[object, ...]] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT sequencename, data_type::text, start_value, min_value, max_value, "
            "increment_by, cycle, cache_size FROM pg_sequences WHERE schemaname = %s",
            (schema,),
        ).fetchall()
        for name, *options in rows:
            state = conn.execute(
                sql.SQL("SELECT last_value, is_called FROM {}").format(sql.Identifier(schema, name))
            ).fetchone()
            assert state is not None
            out[name] = (*options, *state)
    return out


def grants(url: str, schema: str) -> set[tuple[str, str, str, str, bool]]:
    """(relation, column or '', grantee, privilege, grantable) of ``schema``, owners left out."""
    query = """
        SELECT c.relname, '', COALESCE(r.rolname, 'PUBLIC'), a.privilege_type, a.is_grantable
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
             aclexplode(c.relacl) a LEFT JOIN pg_roles r ON r.oid = a.grantee
        WHERE n.nspname = %(s)s AND a.grantee <> c.relowner
        UNION ALL
        SELECT c.relname, t.attname, COALESCE(r.rolname, 'PUBLIC'), a.privilege_type,
               a.is_grantable
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute t ON t.attrelid = c.oid, aclexplode(t.attacl) a
        LEFT JOIN pg_roles r ON r.oid = a.grantee
        WHERE n.nspname = %(s)s AND a.grantee <> c.relowner
    """
    with psycopg.connect(url, autocommit=True) as conn:
        return {tuple(r) for r in conn.execute(query, {"s": schema}).fetchall()}


def _chunk_results(
    src: str, dst: str, store: Engine, job_id: str, schema: str, table: str
) -> list[bool]:
    """For each ledger chunk of the table's job: does the product's verification match?"""
    info = describe_table(get_engine(src), schema, table)
    with store.connect() as c:
        chunks = c.execute(
            select(job_chunks.c.lower_key, job_chunks.c.upper_key)
            .where(job_chunks.c.job_id == table_job_id(job_id, table))
            .order_by(job_chunks.c.chunk_no)
        ).all()
    assert chunks, f"no ledger chunks for {table!r}"
    results = []
    with psycopg.connect(src) as s, psycopg.connect(dst) as d:
        s.execute(SESSION_SETTINGS)
        d.execute(SESSION_SETTINGS)
        for lower, upper in chunks:
            where = key_range(
                info.key_column,
                None if lower is None else orjson.loads(lower),
                None if upper is None else orjson.loads(upper),
            )
            query = select_columns(info, where)
            with s.cursor() as sc, d.cursor() as dc:
                results.append(
                    fingerprint(sc, query, method=info.hash_method)
                    == fingerprint(dc, query, method=info.hash_method)
                )
    return results


def assert_chunk_mutation_detected(
    src: str, dst: str, store: Engine, job_id: str, schema: str, table: str, assignment: str
) -> None:
    """Change one target row (``assignment``, e.g. ``"n" = "n" || 'x'``); one chunk must fail.

    Before the change every chunk must match; after it, exactly one must not.
    """
    assert all(_chunk_results(src, dst, store, job_id, schema, table))
    with psycopg.connect(dst, autocommit=True) as conn:
        target = sql.Identifier(schema, table)
        changed = conn.execute(
            sql.SQL("UPDATE ONLY {t} SET {a} WHERE ctid = (SELECT min(ctid) FROM ONLY {t})").format(
                t=target, a=sql.SQL(assignment)
            )
        ).rowcount
    assert changed == 1
    assert _chunk_results(src, dst, store, job_id, schema, table).count(False) == 1
