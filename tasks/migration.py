"""Migration tasks: describe the source, prepare and finalise the target, plan, check quality."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine, inspect, literal, select

from custody.chunks import ChunkWork, JobPlan, JobSpec, plan_key_ranges
from custody.db import is_mysql, is_postgres
from custody.errors import CustodyError
from custody.identifiers import check_name, reflect_table
from custody.migration.catalog import TableInfo, describe_table, list_tables
from custody.migration.generic import describe_table_generic, list_tables_generic
from custody.migration.mysql import source as mysql_source
from custody.migration.mysql.casts import CastRules
from custody.migration.mysql.copy import MySQLRangeCopy
from custody.migration.pgcopy import PgRangeCopy
from custody.migration.schema import (
    add_load_indexes,
    constraint_count,
    copy_schema_section,
    drop_load_indexes,
    existing_tables,
    sync_sequences,
)
from custody.quality import QualityResult, check_table
from custody.transfer.generic import CopyRangeWork, ensure_target_table
from tasks.retry import retry_if_transient
from tasks.runtime import runtime

_NO_CACHE: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


class MigrationRefusedError(CustodyError):
    """The migration would overwrite or mix with existing data; nothing was touched."""


def both_postgres(source: Engine, target: Engine) -> bool:
    """The COPY fast path and pg_dump schema copy need PostgreSQL on both sides."""
    return is_postgres(source) and is_postgres(target)


def chunk_work(
    source: str, target: str, info: TableInfo, verify: str, replace_existing: bool
) -> ChunkWork:
    """Streamed COPY between two PostgreSQL servers; the generic batched path otherwise."""
    rt = runtime()
    if isinstance(info, mysql_source.MySQLTableInfo) and info.plan is not None:
        return MySQLRangeCopy(source, target, info.plan, verify)
    if both_postgres(rt.engine(source), rt.engine(target)):
        return PgRangeCopy(source, target, info, verify, replace_existing)
    return CopyRangeWork(source, target, info.name, info.key_column or "")


@task(
    name="describe-source-tables",
    retry_condition_fn=retry_if_transient,
    retries=2,
    retry_delay_seconds=2,
    **_NO_CACHE,
)
def describe_source_tables(
    source: str, schema: str, tables: list[str], casts: CastRules | None = None
) -> list[TableInfo]:
    """The tables to migrate (all of the schema when none are named), checked and described.

    A MySQL/MariaDB source is planned under the cast rules (``schema`` is then the target's).
    """
    rt = runtime()
    engine = rt.engine(source)
    if is_mysql(engine):
        return list(
            mysql_source.describe_mysql_tables(engine, schema, tables, casts or CastRules())
        )
    postgres = is_postgres(engine)
    available = list_tables(engine, schema) if postgres else list_tables_generic(engine)
    wanted = tables or available
    for name in wanted:
        check_name(name, "table name")
        if name not in available:
            raise MigrationRefusedError(f"table {name!r} is not a table of the source schema")
    if postgres:
        return [describe_table(engine, schema, name) for name in wanted]
    return [describe_table_generic(engine, name) for name in wanted]


@task(
    name="prepare-target-schema",
    # pg_dump and psql report a lost connection only as text: retry whatever failed.
    retries=1,
    retry_delay_seconds=2,
    **_NO_CACHE,
)
def prepare_target_schema(
    source: str, target: str, schema: str, tables: list[TableInfo], create_schema: bool
) -> str:
    """Make sure every target table exists; returns 'created' or 'existing'."""
    rt = runtime()
    src, dst = rt.engine(source), rt.engine(target)
    names = [t.name for t in tables]
    if is_mysql(src):
        if not is_postgres(dst):
            raise MigrationRefusedError("a MySQL/MariaDB source migrates into PostgreSQL only")
        return mysql_source.create_target_tables(dst, schema, tables, create_schema)
    if both_postgres(src, dst):
        outcome = _prepare_postgres_tables(src, dst, schema, names, create_schema)
        if outcome == "created":  # never change the structure of a user's own tables
            add_load_indexes(dst, schema, {t.name: t.key_column for t in tables if t.key_column})
        return outcome
    created = False
    for name in names:
        if not inspect(dst).has_table(name):
            if not create_schema:
                raise MigrationRefusedError(f"target table {name!r} is missing")
            ensure_target_table(reflect_table(src, name), dst)
            created = True
    return "created" if created else "existing"


def _prepare_postgres_tables(
    src: Engine, dst: Engine, schema: str, names: list[str], create_schema: bool
) -> str:
    present = existing_tables(dst, schema, names)
    if len(present) == len(names):
        return "existing"
    if present:
        missing = sorted(set(names) - present)
        raise MigrationRefusedError(
            f"target schema {schema!r} has some of the tables but not {missing}: create them "
            "or migrate into an empty schema"
        )
    if not create_schema:
        raise MigrationRefusedError(
            f"target has none of the tables and create_schema is off: {names}"
        )
    copy_schema_section(src, dst, schema, "pre-data")
    return "created"


@task(
    name="plan-table-chunks",
    retry_condition_fn=retry_if_transient,
    retries=2,
    retry_delay_seconds=2,
    **_NO_CACHE,
)
def plan_migration(
    spec: JobSpec, source: str, target: str, info: TableInfo, replace_existing: bool
) -> JobPlan:
    """Plan (or resume) one table's chunks; refuse a new job into a table that has rows."""
    rt = runtime()
    src, dst = rt.engine(source), rt.engine(target)

    def ranges() -> list[tuple[Any, Any]]:
        if info.key_column is None:
            return [(None, None)]  # no usable key: one verified chunk, streamed
        # A MySQL source's "schema" is its connection's database; info.schema is the target's.
        table = reflect_table(src, info.name, None if is_mysql(src) else info.schema or None)
        return plan_key_ranges(src, table, info.key_column, spec.chunk_size)

    plan = rt.ledger.plan(spec, ranges)
    if not plan.resumed and not replace_existing and _has_rows(dst, info):
        raise MigrationRefusedError(
            f"target table {info.name!r} already has rows: set replace_existing to overwrite "
            "the migrated key ranges, or migrate into an empty table"
        )
    return plan


def _has_rows(engine: Engine, info: TableInfo) -> bool:
    table = reflect_table(engine, info.name, info.schema or None)
    with engine.connect() as c:
        return c.execute(select(literal(1)).select_from(table).limit(1)).first() is not None


@task(
    name="finalize-target-schema",
    # pg_dump and psql report a lost connection only as text: retry whatever failed.
    retries=1,
    retry_delay_seconds=2,
    **_NO_CACHE,
)
def finalize_target_schema(
    source: str, target: str, schema: str, tables: list[TableInfo] | None = None
) -> dict[str, int]:
    """Keys, indexes, foreign keys and triggers after the data; then sequences."""
    rt = runtime()
    src, dst = rt.engine(source), rt.engine(target)
    if is_mysql(src):
        return mysql_source.finalize_target(dst, tables or [])
    if not both_postgres(src, dst):
        return {"post_data_applied": 0, "sequences": 0}
    applied = 0
    drop_load_indexes(dst, schema)  # before counting: they are not the source's
    if constraint_count(dst, schema) < constraint_count(src, schema):
        copy_schema_section(src, dst, schema, "post-data")
        applied = 1
    return {"post_data_applied": applied, "sequences": sync_sequences(src, dst, schema)}


@task(
    name="check-target-table",
    retry_condition_fn=retry_if_transient,
    retries=1,
    retry_delay_seconds=2,
    **_NO_CACHE,
)
def check_target_table(target: str, info: TableInfo, expected_rows: int) -> QualityResult:
    """GX suite on a migrated table: row count, key unique and not null, NOT NULL columns."""
    engine = runtime().engine(target)
    url = engine.url.render_as_string(hide_password=False)
    return check_table(
        url,
        info.schema,
        info.name,
        expected_rows=expected_rows,
        unique_key=info.primary_key,
        not_null=info.not_null,
    )
