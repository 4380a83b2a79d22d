"""Copying a schema between PostgreSQL databases with pg_dump, in two halves.

``pre-data`` (types, domains, functions, sequences, tables, views) goes first, so the data lands
in tables identical to the source's (enums, domains, arrays, partitioning included). ``post-data``
(primary keys, indexes, foreign keys, triggers) goes last, once every chunk is verified: loading
into unindexed tables is faster, and triggers must not fire on migrated rows.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

from sqlalchemy import Engine, text

from custody.errors import CustodyError
from custody.identifiers import check_name, quote_pg
from custody.migration.names import dump_pattern
from custody.migration.scope import ObjectId
from custody.pgclient import client_tool, libpq_env


class SchemaCopyError(CustodyError):
    """pg_dump or psql failed; the message carries their error output.

    psql's in its terse form only: an error's details may quote rows (PHI).
    """


def dump_schema(source: Engine, schemas: set[str], into: Path) -> list[str]:
    """``pg_dump --schema-only`` of ``schemas`` in custom format; returns its table of contents.

    Each schema is an exactly quoted pattern (``dump_pattern``): a schema called ``a.b*`` is
    that schema, not a regular expression.
    """
    # Fixed argv (no shell); the variable parts are quoted patterns of catalog names.
    dump = subprocess.run(  # noqa: S603
        [client_tool("pg_dump"), "--schema-only", "--format=custom", f"--file={into}",
         *[f"--schema={dump_pattern(s)}" for s in sorted(schemas)]],
        env=libpq_env(source.url), capture_output=True, timeout=600, check=False,
    )  # fmt: skip
    if dump.returncode != 0:
        raise SchemaCopyError(f"pg_dump failed: {dump.stderr.decode(errors='replace')[-2000:]}")
    listing = subprocess.run(  # noqa: S603
        [client_tool("pg_restore"), "--list", str(into)],
        capture_output=True, timeout=600, check=False,
    )  # fmt: skip
    if listing.returncode != 0:
        raise SchemaCopyError(f"pg_restore failed: {listing.stderr.decode(errors='replace')}")
    return [
        line for line in listing.stdout.decode().splitlines() if line and not line.startswith(";")
    ]


_TOC_LINE = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")


def select_entries(toc: list[str], wanted: set[ObjectId], tags: dict[str, ObjectId]) -> list[str]:
    """The TOC lines of the objects in ``wanted``, by catalog identity.

    Entries without a catalog identity (``TABLE ATTACH``, ``INDEX ATTACH``, ``SEQUENCE OWNED
    BY``) are matched by their whole description in ``tags``, and taken when the object they
    belong to is wanted; comments and privileges never are (they are copied from the catalog).
    """
    chosen = []
    for line in toc:
        found = _TOC_LINE.match(line)
        if found is None:
            continue
        classid, oid, rest = int(found[2]), int(found[3]), found[4]
        if (classid, oid) in wanted if oid else tags.get(rest) in wanted:
            chosen.append(line)
    return chosen


def restore_script(dump: Path, entries: list[str], section: str) -> bytes:
    """The SQL that creates ``entries`` of one section of ``dump``, without owners or grants."""
    if section not in ("pre-data", "post-data"):
        raise ValueError(f"unknown pg_dump section {section!r}")
    if not entries:
        return b""
    listing = dump.with_suffix(f".{section}.list")
    listing.write_text("\n".join(entries) + "\n")
    restore = subprocess.run(  # noqa: S603
        [client_tool("pg_restore"), f"--section={section}", "--no-owner", "--no-privileges",
         "--no-comments", f"--use-list={listing}", "--file=-", str(dump)],
        capture_output=True, timeout=600, check=False,
    )  # fmt: skip
    if restore.returncode != 0:
        raise SchemaCopyError(f"pg_restore failed: {restore.stderr.decode(errors='replace')}")
    return restore.stdout


def apply_script(target: Engine, script: bytes) -> None:
    """Run a SQL script on the target with psql, in one transaction, stopping at the first error."""
    if not script.strip():
        return
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
_C = ' COLLATE "C"'


def _load_index_name(table: str) -> str:
    # Names are per schema and at most 63 bytes: a digest keeps long table names apart.
    return LOAD_INDEX_PREFIX + hashlib.sha256(table.encode()).hexdigest()[:16]


def add_load_indexes(
    engine: Engine, schema: str, keys: dict[str, str], byte_order: frozenset[str] = frozenset()
) -> int:
    """Give each target table ``{table: key column}`` a BRIN index on its key while it loads.

    The primary key comes only after the data (post-data), so without this every chunk's
    verification scans the whole target table: quadratic in its size. A BRIN index costs almost
    nothing per inserted row and narrows each chunk's scan to the pages its COPY wrote. Tables
    that already have an index starting with the key are left alone. Tables in ``byte_order``
    have text keys that chunks compare ``COLLATE "C"``: their index is in that order. Returns
    how many were added.
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
                    f"ON {quote_pg(schema)}.{quote_pg(table)} USING brin ({quote_pg(key)}"
                    f"{_C if table in byte_order else ''})"
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
