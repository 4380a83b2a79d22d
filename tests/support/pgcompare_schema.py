"""Schema-object comparisons for migration tests, beside tests/support/pgcompare.py (rows).

Everything here is the test's own SQL or pg_dump, never the product's: the DDL of a schema or of
some tables, sequence options and states, and table and column grants.
"""

from __future__ import annotations

import re
import subprocess

import psycopg
from psycopg import sql

from custody.migration.names import dump_pattern

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
