"""Migration tasks: describe the source, prepare and finalise the target, plan, check quality."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlalchemy import Engine, inspect, literal, select, text

from custody.chunks import ChunkWork, JobPlan, JobSpec, plan_key_ranges
from custody.db import is_mysql, is_postgres
from custody.errors import CustodyError
from custody.identifiers import check_name, quote_pg, reflect_table
from custody.migration.catalog import TableInfo, describe_table, list_tables, needs_byte_order
from custody.migration.compat import check_target_columns as compat_check
from custody.migration.generic import describe_table_generic, list_tables_generic
from custody.migration.mysql import source as mysql_source
from custody.migration.mysql.casts import CastRules
from custody.migration.mysql.copy import MySQLRangeCopy
from custody.migration.objects import (
    comment_statements,
    grant_statements,
    missing_on_target,
    refresh_materialized_views,
    sync_sequences,
    tables_without_post_data,
    unindexed_views,
)
from custody.migration.pgcopy import PgRangeCopy
from custody.migration.schema import (
    add_load_indexes,
    apply_script,
    drop_load_indexes,
    dump_schema,
    existing_tables,
    restore_script,
    schema_exists,
    select_entries,
)
from custody.migration.scope import PG_ATTRDEF, PG_CLASS, ObjectId, SchemaScope, schema_scope
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
    src, dst = rt.engine(source), rt.engine(target)
    if both_postgres(src, dst):
        info = with_key_order(src, dst, info)
        return PgRangeCopy(source, target, info, verify, replace_existing)
    return CopyRangeWork(source, target, info.name, info.key_column or "")


def with_key_order(src: Engine, dst: Engine, info: TableInfo) -> TableInfo:
    """``info`` with ``byte_order_key`` set when the two databases order its text key apart."""
    if not info.text_key:
        return info
    return dataclasses.replace(info, byte_order_key=needs_byte_order(src, dst, info))


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
    if postgres and not schema_exists(engine, schema):
        raise MigrationRefusedError(f"schema {schema!r} does not exist in the source")
    available = list_tables(engine, schema) if postgres else list_tables_generic(engine)
    wanted = tables or available
    for name in wanted:
        check_name(name, "table name")
        if name not in available:
            raise MigrationRefusedError(
                f"table {name!r} is not a table of the source schema {schema!r}"
            )
    if postgres:
        return [describe_table(engine, schema, name) for name in wanted]
    return [describe_table_generic(engine, name) for name in wanted]


@task(
    name="check-target-columns",
    retry_condition_fn=retry_if_transient,
    retries=2,
    retry_delay_seconds=2,
    **_NO_CACHE,
)
def check_target_columns(
    source: str, target: str, tables: list[TableInfo], allow_widening: bool
) -> list[TableInfo]:
    """Before anything is written: every existing target table's column types match the source.

    A mismatch is refused naming table, column and both types; an allowed widening marks the
    table to be copied and verified as text. Tables the target lacks are created from the source
    later, so they match by construction.
    """
    rt = runtime()
    src, dst = rt.engine(source), rt.engine(target)
    if not both_postgres(src, dst) or not tables:
        return tables
    present = existing_tables(dst, tables[0].schema, [t.name for t in tables])
    return [
        compat_check(src, dst, t, allow_widening=allow_widening) if t.name in present else t
        for t in tables
    ]


@task(
    name="prepare-target-schema",
    # pg_dump and psql report a lost connection only as text: retry whatever failed.
    retries=1,
    retry_delay_seconds=2,
    **_NO_CACHE,
)
def prepare_target_schema(
    source: str,
    target: str,
    schema: str,
    tables: list[TableInfo],
    create_schema: bool,
    copy_grants: bool = True,
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
        outcome = _prepare_postgres_tables(src, dst, schema, names, create_schema, copy_grants)
        if outcome == "created":  # never change the structure of a user's own tables
            keys = {t.name: t.key_column for t in tables if t.key_column}
            ordered = frozenset(
                t.name for t in tables if with_key_order(src, dst, t).byte_order_key
            )
            add_load_indexes(dst, schema, keys, ordered)
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
    src: Engine, dst: Engine, schema: str, names: list[str], create_schema: bool, grants: bool
) -> str:
    present = existing_tables(dst, schema, names)
    if present and len(present) < len(names):
        absent = sorted(set(names) - present)
        raise MigrationRefusedError(
            f"target schema {schema!r} has some of the tables but not {absent}: create them "
            "or migrate into an empty schema"
        )
    if not present and not create_schema:
        raise MigrationRefusedError(
            f"target has none of the tables and create_schema is off: {names}"
        )
    scope = schema_scope(src, schema, names)
    if scope.large_object_columns:
        raise MigrationRefusedError(
            "large objects are not migrated, and these columns may reference them: "
            f"{', '.join(scope.large_object_columns)}; nothing was written"
        )
    if not create_schema:
        return "existing"
    refuse_missing_extensions(dst, scope)
    missing = missing_on_target(src, dst, scope.pre_data)
    if present:  # defaults belong to tables the migration creates, not to a user's own
        missing = {o for o in missing if o[0] != PG_ATTRDEF}
    if not missing:
        return "existing"
    with tempfile.TemporaryDirectory(prefix="custody-schema-") as tmp:
        toc = dump_schema(src, scope.schemas, Path(tmp) / "schema.dump")
        script = _setup_sql(dst, scope) + restore_script(
            Path(tmp) / "schema.dump", select_entries(toc, missing, scope.pre_tags), "pre-data"
        )
        statements = comment_statements(src, missing | (set() if present else scope.checks))
        if grants:
            relations = {oid for classid, oid in missing if classid == PG_CLASS}
            statements += grant_statements(src, dst, relations)[0]
        script += "".join(f"{s};\n" for s in statements).encode()
        apply_script(dst, script)
    return "existing" if present else "created"


def refuse_missing_extensions(dst: Engine, scope: SchemaScope) -> None:
    """Every extension the tables' types or defaults need is installed or installable."""
    with dst.connect() as c:
        installed = set(c.execute(text("SELECT extname FROM pg_extension")).scalars())
        available = set(c.execute(text("SELECT name FROM pg_available_extensions")).scalars())
    lacking = [e for e in scope.extensions.values() if e.name not in installed | available]
    if lacking:
        raise MigrationRefusedError(
            "; ".join(
                f"extension {e.name} (needed by {e.needed_by}) is not installed on the target "
                "and not available to install there"
                for e in lacking
            )
            + "; nothing was written"
        )


def _setup_sql(dst: Engine, scope: SchemaScope) -> bytes:
    """Schemas, then the extensions the target lacks, before pg_dump's objects."""
    with dst.connect() as c:
        installed = set(c.execute(text("SELECT extname FROM pg_extension")).scalars())
    lines = [f"CREATE SCHEMA IF NOT EXISTS {quote_pg(s)};" for s in sorted(scope.schemas)]
    lines += [
        f"CREATE EXTENSION IF NOT EXISTS {quote_pg(e.name)} WITH SCHEMA {quote_pg(e.schema)};"
        for e in scope.extensions.values()
        if e.name not in installed
    ]
    return ("\n".join(lines) + "\n").encode()


def key_ranges(
    spec: JobSpec, source: str, target: str, info: TableInfo, replace_existing: bool
) -> list[tuple[Any, Any]]:
    """The table's chunk ranges as the source holds them now (reads the source's key only)."""
    rt = runtime()
    src, dst = rt.engine(source), rt.engine(target)
    if info.key_column is None:
        return [(None, None)]  # no usable key: one verified chunk, streamed
    # A MySQL source's "schema" is its connection's database; info.schema is the target's.
    table = reflect_table(src, info.name, None if is_mysql(src) else info.schema or None)
    ordered = with_key_order(src, dst, info) if both_postgres(src, dst) else info
    planned = plan_key_ranges(
        src, table, info.key_column, spec.chunk_size, byte_order=ordered.byte_order_key
    )
    if replace_existing:
        # The target may hold keys the source no longer has, above its largest key (or any
        # key, if it has none left): the last chunk is open above, so that its DELETE
        # reaches them and the table ends up equal to the source.
        planned = [*planned[:-1], (planned[-1][0], None)] if planned else [(None, None)]
    return planned


@task(
    name="plan-table-ranges",
    retry_condition_fn=retry_if_transient,
    retries=2,
    retry_delay_seconds=2,
    **_NO_CACHE,
)
def plan_table_ranges(
    spec: JobSpec, source: str, target: str, info: TableInfo, replace_existing: bool
) -> list[tuple[Any, Any]] | None:
    """A new job's chunk ranges, found while the target is being prepared (None: not here).

    Planning reads only the source's key (its index), preparing writes only the target's
    schema: the flow runs the two at once. None, and ``plan_migration`` plans as before, for
    a job the ledger already holds (resumed with its stored plan: nothing to read) and for a
    text key, whose order depends on the target table's collation: planned before that table
    exists, its ranges would be in another order than the chunks' predicates compare in.
    """
    if info.text_key or runtime().ledger.has_job(spec.job_id):
        return None
    return key_ranges(spec, source, target, info, replace_existing)


@task(
    name="plan-table-chunks",
    retry_condition_fn=retry_if_transient,
    retries=2,
    retry_delay_seconds=2,
    **_NO_CACHE,
)
def plan_migration(
    spec: JobSpec,
    source: str,
    target: str,
    info: TableInfo,
    replace_existing: bool,
    ranges: list[tuple[Any, Any]] | None = None,
) -> JobPlan:
    """Plan (or resume) one table's chunks; refuse a new job into a table that has rows.

    ``ranges``: found earlier by ``plan_table_ranges`` (otherwise found here, if needed).
    """
    rt = runtime()
    dst = rt.engine(target)
    plan = rt.ledger.plan(
        spec,
        lambda: ranges if ranges is not None else key_ranges(
            spec, source, target, info, replace_existing
        ),
    )  # fmt: skip
    if not plan.resumed and not replace_existing and _has_rows(dst, info):
        raise MigrationRefusedError(
            f"target table {info.name!r} already has rows: set replace_existing to overwrite "
            "the migrated key ranges, or migrate into an empty table"
        )
    return plan


def _has_rows(engine: Engine, info: TableInfo) -> bool:
    if info.has_children:  # an inheritance parent: its own rows, not its children's
        with engine.connect() as c:
            query = f"SELECT 1 FROM ONLY {quote_pg(info.schema)}.{quote_pg(info.name)} LIMIT 1"
            return c.exec_driver_sql(query).first() is not None
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
    source: str,
    target: str,
    schema: str,
    tables: list[TableInfo] | None = None,
    copy_grants: bool = True,
) -> tuple[dict[str, int], list[str]]:
    """After the data: post-data per table, materialized views refreshed, sequences set.

    Keys, indexes, foreign keys and triggers go to each table that has none of its own; then
    materialized views are refreshed and sequences take the source's state. Returns counts and
    notes for the report (foreign keys and views not migrated, roles or sequences the target
    lacks). Without ``tables``: every table of the schema.
    """
    rt = runtime()
    src, dst = rt.engine(source), rt.engine(target)
    if is_mysql(src):
        return mysql_source.finalize_target(dst, tables or []), []
    if not both_postgres(src, dst):
        return {"post_data_tables": 0, "sequences": 0}, []
    names = list_tables(src, schema) if tables is None else [t.name for t in tables]
    scope = schema_scope(src, schema, names)
    drop_load_indexes(dst, schema)  # before looking at the tables: they are not the source's
    bare = set(tables_without_post_data(dst, schema, scope.tables))
    wanted: set[ObjectId] = set()
    tags: dict[str, ObjectId] = {}
    for table in scope.tables:
        if table.name in bare:
            wanted |= table.post_data
            tags |= table.post_tags
    for oid in unindexed_views(dst, scope):
        wanted |= scope.view_post_data[oid]
    if wanted:
        with tempfile.TemporaryDirectory(prefix="custody-schema-") as tmp:
            dump = Path(tmp) / "schema.dump"
            toc = dump_schema(src, scope.schemas, dump)
            script = restore_script(dump, select_entries(toc, wanted, tags), "post-data")
            script += "".join(f"{s};\n" for s in comment_statements(src, wanted)).encode()
            apply_script(dst, script)
    refreshed = refresh_materialized_views(src, dst, scope)
    sequences, lacking = sync_sequences(src, dst, scope.sequences)
    notes = list(scope.notes)
    notes += [f"sequence {s}: not on the target, its state was not copied" for s in lacking]
    if copy_grants:
        missing_roles = grant_statements(src, dst, scope.relations_in_scope)[1]
        notes += [
            f"role {r}: does not exist on the target, its grants were not copied"
            for r in missing_roles
        ]
    steps = {
        "post_data_tables": len(bare & {t.name for t in scope.tables if t.post_data}),
        "materialized_views_refreshed": refreshed,
        "sequences": sequences,
    }
    return steps, notes


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
        # GX counts a parent's children's rows too; the chunks counted its own (FROM ONLY).
        expected_rows=None if info.has_children else expected_rows,
        unique_key=info.primary_key,
        not_null=info.not_null,
    )
