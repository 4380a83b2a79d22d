"""Archival tasks: describe and check the tables, plan batches, find orphans, restore."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

import psycopg
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine

from custody.archive import generic, manifest
from custody.archive.checks import ArchiveRefusedError, inspect_table
from custody.archive.columns import SESSION_SETTINGS
from custody.archive.plan import count_eligible, plan_eligible_ranges
from custody.archive.report import PolicyPlan
from custody.archive.restore import restore_object
from custody.chunks import JobPlan, JobSpec
from custody.db import is_postgres
from custody.identifiers import check_name
from custody.migration.catalog import TableInfo, describe_table, list_tables
from custody.migration.generic import describe_table_generic, list_tables_generic
from custody.pgclient import libpq_dsn
from custody.storage import ObjectStore, StorageError, open_store
from tasks.retry import retry_if_transient
from tasks.runtime import runtime

_NO_CACHE: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


__all__ = ["ArchiveRefusedError"]


@contextmanager
def _connect(database: str) -> Iterator[psycopg.Connection[Any]]:
    engine = runtime().engine(database)
    if not is_postgres(engine):
        raise ArchiveRefusedError(f"connection {database!r}: archival needs PostgreSQL")
    with psycopg.connect(libpq_dsn(engine.url), autocommit=True, client_encoding="UTF8") as conn:
        conn.execute(SESSION_SETTINGS.replace("SET LOCAL", "SET"))
        yield conn


@task(
    name="describe-archive-table",
    retry_condition_fn=retry_if_transient,
    retries=2,
    retry_delay_seconds=2,
    **_NO_CACHE,
)
def describe_archive_table(
    database: str,
    schema: str,
    table: str,
    time_column: str,
    archived_together: tuple[str, ...] = (),
) -> TableInfo:
    """Check the table, its key, its columns, keys into it and its triggers before anything runs.

    ``archived_together``: the other tables of this run (foreign keys from them may cascade;
    each batch then proves there is nothing left to cascade to).
    """
    check_name(schema, "schema name")
    check_name(table, "table name")
    check_name(time_column, "column name")
    engine = runtime().engine(database)
    if not is_postgres(engine):
        return _describe_generic(engine, schema, table, time_column)
    if table not in list_tables(engine, schema):
        raise ArchiveRefusedError(f"table {table!r} is not a table of schema {schema!r}")
    with _connect(database) as conn:
        checked = inspect_table(conn, schema, table, time_column, archived_together)
    info = describe_table(engine, schema, table)
    return replace(info, key_column=checked.key_column, primary_key=(checked.key_column,))


def _describe_generic(engine: Engine, schema: str, table: str, time_column: str) -> TableInfo:
    """The same checks on SQLite, from SQLAlchemy reflection."""
    try:
        generic.check_engine(engine)
        generic.default_schema(schema)
    except generic.ArchiveEngineError as exc:
        raise ArchiveRefusedError(str(exc)) from None
    if table not in list_tables_generic(engine):
        raise ArchiveRefusedError(f"table {table!r} is not a table of the database")
    info = describe_table_generic(engine, table)
    if info.key_column is None or len(info.primary_key) != 1:
        raise ArchiveRefusedError(
            f"table {table!r} needs a single-column primary key to be archived in batches"
        )
    problem = generic.time_column_problem(engine, table, time_column)
    if problem is not None:
        raise ArchiveRefusedError(problem)
    return info


@task(
    name="prepare-archive-manifest",
    retry_condition_fn=retry_if_transient,
    retries=2,
    retry_delay_seconds=2,
    **_NO_CACHE,
)
def prepare_archive_manifest(database: str) -> None:
    """Create custody.archive_manifest in the source database if it is not there yet."""
    engine = runtime().engine(database)
    if not is_postgres(engine):
        generic.ensure_manifest(engine)
        return
    with _connect(database) as conn:
        manifest.ensure_manifest(conn)


@task(
    name="plan-archive-policy",
    retry_condition_fn=retry_if_transient,
    retries=2,
    retry_delay_seconds=2,
    **_NO_CACHE,
)
def plan_archive_policy(
    database: str,
    info: TableInfo,
    time_column: str,
    cutoff: datetime,
    batch_size: int,
    policy: str,
) -> PolicyPlan:
    """Dry run: eligible rows, bytes and objects for one policy (reads only)."""
    engine = runtime().engine(database)
    if not is_postgres(engine):
        eligible = generic.count_eligible(engine, info, time_column, cutoff)
    else:
        with _connect(database) as conn:
            eligible = count_eligible(conn, info, time_column, cutoff)
    return PolicyPlan(
        policy=policy, table=info.name, cutoff=cutoff, eligible_rows=eligible.rows,
        bytes_estimate=eligible.bytes_estimate,
        objects=math.ceil(eligible.rows / batch_size),
    )  # fmt: skip


@task(
    name="plan-archive-batches",
    retry_condition_fn=retry_if_transient,
    retries=2,
    retry_delay_seconds=2,
    **_NO_CACHE,
)
def plan_archive_batches(
    spec: JobSpec, database: str, info: TableInfo, time_column: str, cutoff: datetime
) -> JobPlan:
    """Keyset batches of eligible rows, stored in the ledger (a re-run resumes them)."""

    def ranges() -> list[tuple[Any, Any]]:
        engine = runtime().engine(database)
        if not is_postgres(engine):
            return generic.plan_eligible_ranges(engine, info, time_column, cutoff, spec.chunk_size)
        with _connect(database) as conn:
            return plan_eligible_ranges(conn, info, time_column, cutoff, spec.chunk_size)

    return runtime().ledger.plan(spec, ranges)


@task(
    name="find-orphan-objects",
    retry_condition_fn=retry_if_transient,
    retries=1,
    retry_delay_seconds=2,
    **_NO_CACHE,
)
def find_orphan_objects(
    database: str, store_url: str | None, prefix: str, table: str
) -> list[str] | None:
    """Objects under the table's prefix that no manifest row accounts for (crash leftovers).

    None when the store cannot be listed: the run still reports what it did, and says so.
    """
    try:
        return _orphans(database, store_url, prefix, table)
    except StorageError:
        return None


def _orphans(database: str, store_url: str | None, prefix: str, table: str) -> list[str]:
    store = open_store(store_url)
    under = f"{prefix}/{table}" if prefix else table
    engine = runtime().engine(database)
    if not is_postgres(engine):
        known = generic.known_object_keys(engine, table)
        return sorted(o.key for o in store.list(under) if o.key not in known)
    with _connect(database) as conn:
        known = {
            r[0]
            for r in conn.execute(
                "SELECT object_key FROM custody.archive_manifest WHERE table_name = %s", (table,)
            )
        }
    return sorted(o.key for o in store.list(under) if o.key not in known)


@task(
    name="restore-archived-table",
    retries=2,
    retry_delay_seconds=2,
    retry_condition_fn=retry_if_transient,  # a refused or corrupt archive fails at once
    **_NO_CACHE,
)
def restore_archives(
    database: str,
    store_url: str | None,
    archive_ids: list[str],
    table: str | None,
    start: datetime | None,
    end: datetime | None,
) -> dict[str, int]:
    """Restore the selected verified archives, each verified before it is loaded."""
    store = open_store(store_url)
    engine = runtime().engine(database)
    if not is_postgres(engine):
        return _restore_generic(engine, store, archive_ids, table, start, end)
    restored = inserted = 0
    with _connect(database) as conn:
        rows = manifest.find(conn, archive_ids=archive_ids, table=table, start=start, end=end)
        if archive_ids and len(rows) != len(set(archive_ids)):
            missing = sorted(set(archive_ids) - {r.archive_id for r in rows})
            raise ArchiveRefusedError(f"no verified archive with id(s) {missing}")
        for row in rows:
            legacy = None
            if row.hash_method is None:  # archived before canonical hashing
                legacy = describe_table(engine, row.schema_name, row.table_name)
            inserted += restore_object(conn, store, row, legacy)
            restored += 1
    return {"objects": restored, "rows_inserted": inserted}


def _restore_generic(
    engine: Engine,
    store: ObjectStore,
    archive_ids: list[str],
    table: str | None,
    start: datetime | None,
    end: datetime | None,
) -> dict[str, int]:
    """The same restore on SQLite (the manifest is ``custody_archive_manifest`` there)."""
    generic.check_engine(engine)
    rows = generic.find_manifest(engine, archive_ids=archive_ids, table=table, start=start, end=end)
    if archive_ids and len(rows) != len(set(archive_ids)):
        missing = sorted(set(archive_ids) - {r.archive_id for r in rows})
        raise ArchiveRefusedError(f"no verified archive with id(s) {missing}")
    infos: dict[str, TableInfo] = {}
    inserted = 0
    for row in rows:
        if row.table_name not in infos:
            infos[row.table_name] = describe_table_generic(engine, row.table_name)
        inserted += generic.restore_object(engine, store, infos[row.table_name], row)
    return {"objects": len(rows), "rows_inserted": inserted}
