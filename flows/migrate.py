"""Migrate tables between databases in verified, resumable chunks, with a final GX gate."""

from __future__ import annotations

import time
from typing import Literal

from prefect import flow
from prefect.client.schemas.objects import State
from pydantic import ConfigDict, Field

from custody.audit import AuditStatus
from custody.chunks import JobSpec
from custody.identifiers import safe_id
from custody.migration.catalog import TableInfo
from custody.migration.mysql.casts import CastRules
from custody.migration.mysql.report import cast_section, publish_cast_plan
from custody.migration.names import table_job_id
from custody.migration.report import MigrationResult, TableResult, publish_plan, publish_result
from custody.prefect_glue import current_flow_run_id
from custody.quality import preload as preload_quality_checks
from flows.params import ChunkedJobParams, SqlName
from tasks.approval import ApprovalRequest, await_approval, tables_to_overwrite
from tasks.audit import publish_audit_artifacts, record_event
from tasks.cancellation import audit_cancellation, audit_failure
from tasks.chunks import run_chunks
from tasks.migration import (
    check_target_columns,
    check_target_table,
    chunk_work,
    describe_source_tables,
    finalize_target_schema,
    plan_migration,
    plan_table_ranges,
    prepare_target_schema,
)
from tasks.outcomes import failed
from tasks.runners import SettingsTaskRunner
from tasks.runtime import runtime


class MigrateParams(ChunkedJobParams):
    """Parameters of ``migrate-tables`` (they become the form in the Prefect UI)."""

    model_config = ConfigDict(title="Migrate tables between databases", extra="forbid")

    schema_name: SqlName = Field(
        default="public",
        title="Schema",
        description="Schema to migrate; the target gets the same name.",
    )
    tables: list[SqlName] = Field(
        default=[], title="Tables", description="Empty: every table of the schema."
    )
    verify: Literal["hash", "count"] = Field(
        default="hash",
        title="Verification",
        description="hash: count and content hash per chunk on both sides; count: rows only.",
    )
    create_schema: bool = Field(
        default=True,
        title="Create missing target tables",
        description="PostgreSQL: types, tables and views from pg_dump before the rows, keys, "
        "indexes and triggers after them. Off: the target tables must exist.",
    )
    copy_grants: bool = Field(
        default=True,
        title="Copy grants",
        description="PostgreSQL: table and column GRANTs of the created tables, views and "
        "sequences; grants to roles the target lacks are listed in the report.",
    )
    allow_widening: bool = Field(
        default=False,
        title="Allow wider target columns",
        description="A pre-created target column may be wider than the source's (integer to "
        "bigint, varchar(n) to text or a longer varchar); its values are verified after the "
        "cast. Off: any type difference refuses the run before anything is written.",
    )
    replace_existing: bool = Field(
        default=False,
        title="Replace rows already in the target",
        description="Off: a new job refuses a target table that already has rows.",
    )
    require_approval: bool = Field(
        default=False,
        title="Wait for approval before replacing rows",
        description="With 'Replace rows' on and a target table that already has rows: publish "
        "the plan, then pause until someone approves or denies (Resume in the UI, or the API). "
        "The approver goes to the audit log.",
    )
    approval_timeout_minutes: int = Field(
        default=60,
        ge=1,
        le=10_080,
        title="Approval timeout (minutes)",
        description="Not approved by then: the run fails and no target is touched.",
    )
    dry_run: bool = Field(
        default=False,
        title="Dry run (plan only)",
        description="Tables, estimated rows, chunks and COPY format; nothing is copied.",
    )
    casts: CastRules = Field(
        default=CastRules(),
        title="Cast rules (MySQL/MariaDB sources)",
        description="How MySQL types become PostgreSQL types (README: From MySQL/MariaDB).",
    )


@flow(
    name="migrate-tables",
    description="Verified, resumable migration between databases.",
    task_runner=SettingsTaskRunner(),
)
def migrate_tables(params: MigrateParams) -> MigrationResult | State[MigrationResult]:
    """Describe, prepare, copy chunk by chunk with verification, finalise, check, report.

    Args:
        params: Source and target connections, the tables and how the chunks run.
    """
    job_id = params.job_id or f"migrate-{current_flow_run_id() or 'local'}"
    infos = describe_source_tables(params.source, params.schema_name, params.tables, params.casts)
    if params.dry_run:
        publish_plan(job_id, infos, params.chunk_size)
        publish_cast_plan(job_id, infos)
        return MigrationResult(job_id=job_id, planned=True)
    if params.require_approval and params.replace_existing:
        names = [info.name for info in infos]
        overwritten = tables_to_overwrite(params.target, params.schema_name, names, job_id)
        if overwritten:
            publish_plan(job_id, infos, params.chunk_size, dry_run=False)
            decision = await_approval(
                _approval_request(job_id, params, names, overwritten),
                params.approval_timeout_minutes * 60,
            )
            if not decision.approved:
                publish_audit_artifacts(f"migrate-{job_id}")
                return decision.stopped(MigrationResult(job_id=job_id, planned=True))
    record_event(
        "data.migration.started",
        AuditStatus.STARTED,
        "database",
        params.source,
        details={"job_id": job_id, "target": params.target, "tables": len(infos)},
    )
    infos = check_target_columns(params.source, params.target, infos, params.allow_widening)
    specs = [_job_spec(job_id, params, info) for info in infos]
    ranges = [  # read from the source while the target is being prepared
        plan_table_ranges.submit(spec, params.source, params.target, info, params.replace_existing)
        for spec, info in zip(specs, infos, strict=True)
    ]
    prepare_target_schema(
        params.source,
        params.target,
        params.schema_name,
        infos,
        params.create_schema,
        params.copy_grants,
    )
    preload_quality_checks()  # GX imports in the background while chunks copy
    results: list[TableResult] = []
    for info, spec, found in zip(infos, specs, ranges, strict=True):
        started = time.monotonic()
        plan = plan_migration(
            spec, params.source, params.target, info, params.replace_existing, found.result()
        )
        work = chunk_work(
            params.source, params.target, info, params.verify, params.replace_existing
        )
        batch = run_chunks(
            plan,
            work,
            max_concurrency=params.max_concurrency,
            continue_on_error=params.continue_on_error,
            title=f"migrate-{safe_id(info.name)}",
        )
        results.append(
            TableResult.from_batch(
                info.name,
                spec.job_id,
                batch,
                time.monotonic() - started,
                runtime().ledger.summary(spec.job_id)["rows"],
                info.notes,
            )
        )
    result = MigrationResult(job_id=job_id, tables=results, casts=cast_section(infos))
    if result.all_verified:
        result.schema_steps, result.notes = finalize_target_schema(
            params.source, params.target, params.schema_name, infos, params.copy_grants
        )
        for info, table in zip(infos, results, strict=True):
            table.quality = check_target_table(params.target, info, table.verified_rows)
    record_event(
        "data.migration.completed",
        AuditStatus(result.status),
        "database",
        params.source,
        details={"job_id": job_id, **result.audit_details()},
    )
    publish_result(result)
    publish_audit_artifacts(f"migrate-{job_id}")
    if result.status != "success":
        return failed(f"migration {job_id}: {result.status}", result)
    return result


migrate_tables.on_cancellation(audit_cancellation("migrate", "data.migration"))
migrate_tables.on_failure(audit_failure("migrate", "data.migration"))
migrate_tables.on_crashed(audit_failure("migrate", "data.migration"))


def _job_spec(job_id: str, params: MigrateParams, info: TableInfo) -> JobSpec:
    """One table's chunked job within the migration ``job_id``."""
    return JobSpec(
        job_id=table_job_id(job_id, info.name),
        kind="migration",
        subject=f"{params.source}->{params.target}.{params.schema_name}.{info.name}",
        key_column=info.key_column or "-",
        chunk_size=params.chunk_size,
        audit_prefix="data.migration",
    )


def _approval_request(
    job_id: str, params: MigrateParams, tables: list[str], overwritten: list[str]
) -> ApprovalRequest:
    """What replacing rows in non-empty targets means, for the approver and the audit log."""
    return ApprovalRequest(
        job_id=job_id,
        flow="migrate-tables",
        action=f"replace rows in {len(overwritten)} non-empty table(s) of {params.target}",
        scope={
            "source": params.source,
            "target": params.target,
            "schema": params.schema_name,
            "tables": tables,
            "replace_existing": True,
        },
        facts={"non_empty_targets": ", ".join(overwritten)},
    )
