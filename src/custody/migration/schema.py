"""Copying a schema between PostgreSQL databases with pg_dump, in two halves.

``pre-data`` (types, domains, functions, sequences, tables, views) goes first, so the data lands
in tables identical to the source's (enums, domains, arrays, partitioning included). ``post-data``
(primary keys, indexes, foreign keys, triggers) goes last, once every chunk is verified: loading
into unindexed tables is faster, and triggers must not fire on migrated rows.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from sqlalchemy import Engine, text

from custody.errors import CustodyError
from custody.identifiers import check_name


class SchemaCopyError(CustodyError):
    """pg_dump or psql failed; the message carries their error output (DDL only, no rows)."""


def _libpq_env(engine: Engine) -> dict[str, str]:
    url = engine.url
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    values = {
        "PGHOST": url.host,
        "PGPORT": str(url.port) if url.port else None,
        "PGUSER": url.username,
        "PGPASSWORD": url.password,  # via the environment: never on a command line
        "PGDATABASE": url.database,
    }
    env.update({k: v for k, v in values.items() if v})
    return env


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise SchemaCopyError(
            f"{name} is needed to copy PostgreSQL schemas; install the PostgreSQL client "
            "(Debian: apt-get install postgresql-client)"
        )
    return found


def copy_schema_section(source: Engine, target: Engine, schema: str, section: str) -> None:
    """Apply one pg_dump section of ``schema`` from source to target, in one transaction."""
    check_name(schema, "schema name")
    if section not in ("pre-data", "post-data"):
        raise ValueError(f"unknown pg_dump section {section!r}")
    # Fixed argv (no shell); the only variable part is a checked schema name.
    dump = subprocess.run(  # noqa: S603
        [_tool("pg_dump"), "--schema-only", f"--section={section}", "--no-owner",
         "--no-privileges", f"--schema={schema}"],
        env=_libpq_env(source), capture_output=True, timeout=600, check=False,
    )  # fmt: skip
    if dump.returncode != 0:
        raise SchemaCopyError(f"pg_dump failed: {dump.stderr.decode(errors='replace')[-2000:]}")
    script = dump.stdout
    if section == "pre-data" and _schema_exists(target, schema):
        # The target already has the schema (always so for public): keep everything else.
        script = b"".join(
            line
            for line in script.splitlines(keepends=True)
            if not line.startswith((b"CREATE SCHEMA ", b"COMMENT ON SCHEMA "))
        )
    restore = subprocess.run(  # noqa: S603
        [_tool("psql"), "--no-psqlrc", "--quiet", "--single-transaction",
         "--set=ON_ERROR_STOP=1", "--output=/dev/null"],
        input=script, env=_libpq_env(target), capture_output=True, timeout=600, check=False,
    )  # fmt: skip
    if restore.returncode != 0:
        raise SchemaCopyError(f"psql failed: {restore.stderr.decode(errors='replace')[-2000:]}")


def _schema_exists(engine: Engine, schema: str) -> bool:
    with engine.connect() as c:
        found = c.execute(text("SELECT to_regnamespace(:s)"), {"s": schema}).scalar()
    return found is not None


def existing_tables(engine: Engine, schema: str, tables: list[str]) -> set[str]:
    """Which of ``tables`` exist in ``schema``."""
    with engine.connect() as c:
        rows = c.execute(
            text(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = :s AND c.relname = ANY(:t) AND c.relkind IN ('r', 'p')"
            ),
            {"s": schema, "t": tables},
        )
        return {r[0] for r in rows}


def constraint_count(engine: Engine, schema: str) -> int:
    """Indexes, constraints and triggers in a schema: tells whether post-data was applied."""
    with engine.connect() as c:
        return int(
            c.execute(
                text(
                    "SELECT (SELECT count(*) FROM pg_indexes WHERE schemaname = :s)"
                    " + (SELECT count(*) FROM pg_constraint k JOIN pg_namespace n"
                    "    ON n.oid = k.connamespace WHERE n.nspname = :s AND k.contype <> 'n')"
                    " + (SELECT count(*) FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid"
                    "    JOIN pg_namespace n ON n.oid = c.relnamespace"
                    "    WHERE n.nspname = :s AND NOT g.tgisinternal)"
                ),
                {"s": schema},
            ).scalar_one()
        )


def sync_sequences(source: Engine, target: Engine, schema: str) -> int:
    """Set every sequence of the target schema to the source's value; returns how many."""
    with source.connect() as c:
        values = c.execute(
            text("SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = :s"),
            {"s": schema},
        ).all()
    with target.begin() as c:
        for name, last_value in values:
            if last_value is None:
                continue
            c.execute(
                text("SELECT setval(format('%I.%I', CAST(:s AS text), CAST(:n AS text)), :v)"),
                {"s": schema, "n": name, "v": last_value},
            )
    return len(values)
