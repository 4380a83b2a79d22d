"""Copying a schema between PostgreSQL databases with pg_dump, in two halves.

``pre-data`` (types, domains, functions, sequences, tables, views) goes first, so the data lands
in tables identical to the source's (enums, domains, arrays, partitioning included). ``post-data``
(primary keys, indexes, foreign keys, triggers) goes last, once every chunk is verified: loading
into unindexed tables is faster, and triggers must not fire on migrated rows.
"""

from __future__ import annotations

import hashlib
import subprocess

from sqlalchemy import Engine, text

from custody.errors import CustodyError
from custody.identifiers import check_name, quote_pg
from custody.migration.names import dump_pattern
from custody.pgclient import client_tool, libpq_env


class SchemaCopyError(CustodyError):
    """pg_dump or psql failed; the message carries their error output.

    psql's in its terse form only: an error's details may quote rows (PHI).
    """


def copy_schema_section(source: Engine, target: Engine, schema: str, section: str) -> None:
    """Apply one pg_dump section of ``schema`` from source to target, in one transaction."""
    check_name(schema, "schema name")
    if section not in ("pre-data", "post-data"):
        raise ValueError(f"unknown pg_dump section {section!r}")
    # Fixed argv (no shell); the only variable part is a checked schema name.
    dump = subprocess.run(  # noqa: S603
        [client_tool("pg_dump"), "--schema-only", f"--section={section}", "--no-owner",
         "--no-privileges", f"--schema={dump_pattern(schema)}"],
        env=libpq_env(source.url), capture_output=True, timeout=600, check=False,
    )  # fmt: skip
    if dump.returncode != 0:
        raise SchemaCopyError(f"pg_dump failed: {dump.stderr.decode(errors='replace')[-2000:]}")
    script = dump.stdout
    if section == "pre-data" and schema_exists(target, schema):
        # The target already has the schema (always so for public): keep everything else.
        script = b"".join(
            line
            for line in script.splitlines(keepends=True)
            if not line.startswith((b"CREATE SCHEMA ", b"COMMENT ON SCHEMA "))
        )
    # VERBOSITY=terse: the error's primary message only. Its DETAIL and CONTEXT may quote rows
    # ("Key (mrn)=(...) is not present", "Failing row contains (...)"), and this message is
    # raised into Prefect's logs and states, outside the HIPAA boundary.
    restore = subprocess.run(  # noqa: S603
        [client_tool("psql"), "--no-psqlrc", "--quiet", "--single-transaction",
         "--set=ON_ERROR_STOP=1", "--set=VERBOSITY=terse", "--output=/dev/null"],
        input=script, env=libpq_env(target.url), capture_output=True, timeout=600, check=False,
    )  # fmt: skip
    if restore.returncode != 0:
        raise SchemaCopyError(f"psql failed: {restore.stderr.decode(errors='replace')[-2000:]}")


def schema_exists(engine: Engine, schema: str) -> bool:
    """Whether the database has a schema of exactly this name."""
    with engine.connect() as c:
        found = c.execute(
            text("SELECT oid FROM pg_namespace WHERE nspname = :s"), {"s": schema}
        ).scalar()
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


LOAD_INDEX_PREFIX = "custody_load_"


def _load_index_name(table: str) -> str:
    # Names are per schema and at most 63 bytes: a digest keeps long table names apart.
    return LOAD_INDEX_PREFIX + hashlib.sha256(table.encode()).hexdigest()[:16]


def add_load_indexes(engine: Engine, schema: str, keys: dict[str, str]) -> int:
    """Give each target table ``{table: key column}`` a BRIN index on its key while it loads.

    The primary key comes only after the data (post-data), so without this every chunk's
    verification scans the whole target table: quadratic in its size. A BRIN index costs almost
    nothing per inserted row and narrows each chunk's scan to the pages its COPY wrote. Tables
    that already have an index starting with the key are left alone. Returns how many were added.
    """
    check_name(schema, "schema name")
    added = 0
    with engine.begin() as c:
        for table, key in keys.items():
            check_name(table, "table name")
            check_name(key, "column name")
            indexed = c.execute(
                text(
                    "SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                    "AND a.attnum = i.indkey[0] WHERE i.indrelid = "
                    "to_regclass(format('%I.%I', CAST(:s AS text), CAST(:t AS text))) "
                    "AND a.attname = :k"
                ),
                {"s": schema, "t": table, "k": key},
            ).first()
            if indexed is None:
                c.exec_driver_sql(
                    f"CREATE INDEX IF NOT EXISTS {quote_pg(_load_index_name(table))} "
                    f"ON {quote_pg(schema)}.{quote_pg(table)} USING brin ({quote_pg(key)})"
                )
                added += 1
    return added


def drop_load_indexes(engine: Engine, schema: str) -> int:
    """Drop the BRIN indexes ``add_load_indexes`` made in ``schema``; returns how many."""
    check_name(schema, "schema name")
    with engine.begin() as c:
        names = c.execute(
            text(
                "SELECT indexname FROM pg_indexes WHERE schemaname = :s "
                "AND indexname LIKE :p ESCAPE '\\'"
            ),
            {"s": schema, "p": LOAD_INDEX_PREFIX.replace("_", "\\_") + "%"},
        ).scalars()
        dropped = list(names)
        for name in dropped:
            c.exec_driver_sql(f"DROP INDEX {quote_pg(schema)}.{quote_pg(name)}")
    return len(dropped)
