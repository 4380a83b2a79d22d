"""Migrate tables between databases in verified, resumable chunks, with a final GX gate."""

from __future__ import annotations

import time
from typing import Literal

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.states import Failed
from pydantic import ConfigDict, Field

from custody.audit import AuditStatus
from custody.chunks import JobSpec
from custody.migration.report import MigrationResult, TableResult, publish_plan, publish_result
from custody.prefect_glue import current_flow_run_id
from custody.quality import preload as preload_quality_checks
from flows.params import SQL_NAME, ChunkedJobParams
from tasks.audit import publish_audit_artifacts, record_event
from tasks.chunks import run_chunks
from tasks.migration import (
    check_target_table,
    chunk_work,
    describe_source_tables,
    finalize_target_schema,
    plan_migration,
    prepare_target_schema,
)
from tasks.runtime import runtime


class MigrateParams(ChunkedJobParams):
    """Parameters of ``migrate-tables`` (they become the form in the Prefect UI)."""

    model_config = ConfigDict(title="Migrate tables between databases", extra="forbid")

    schema_name: str = Field(default="public", title="Schema", pattern=SQL_NAME)
    tables: list[str] = Field(
        default_factory=list, title="Tables", description="Empty: every table of the schema."
    )
    verify: Literal["hash", "count"] = Field(
        default="hash",
        title="Verification",
        description="hash: count and content hash per chunk on both sides; count: rows only.",
    )
    create_schema: bool = Field(default=True, title="Create missing target tables")
    replace_existing: bool = Field(
        default=False,
        title="Replace rows already in the target",
        description="Off: a new job refuses a target table that already has rows.",
    )
    dry_run: bool = Field(default=False, title="Dry run (plan only)")


@flow(name="migrate-tables", description="Verified, resumable migration between databases.")
def migrate_tables(params: MigrateParams) -> MigrationResult | State[MigrationResult]:
    """Describe, prepare, copy chunk by chunk with verification, finalise, check, report."""
    job_id = params.job_id or f"migrate-{current_flow_run_id() or 'local'}"
    infos = describe_source_tables(params.source, params.schema_name, params.tables)
    if params.dry_run:
        publish_plan(job_id, infos, params.chunk_size)
        return MigrationResult(job_id=job_id, planned=True)
    record_event(
        "data.migration.started",
        AuditStatus.STARTED,
        "database",
        params.source,
        details={"job_id": job_id, "target": params.target, "tables": len(infos)},
    )
    prepare_target_schema(
        params.source, params.target, params.schema_name, infos, params.create_schema
    )
    preload_quality_checks()  # GX imports in the background while chunks copy
    results: list[TableResult] = []
    for info in infos:
        started = time.monotonic()
        spec = JobSpec(
            job_id=f"{job_id}.{info.name}",
            kind="migration",
            subject=f"{params.source}->{params.target}.{params.schema_name}.{info.name}",
            key_column=info.key_column or "-",
            chunk_size=params.chunk_size,
            audit_prefix="data.migration",
        )
        plan = plan_migration(spec, params.source, params.target, info, params.replace_existing)
        work = chunk_work(
            params.source, params.target, info, params.verify, params.replace_existing
        )
        batch = run_chunks(
            plan,
            work,
            max_concurrency=params.max_concurrency,
            continue_on_error=params.continue_on_error,
            title=f"migrate-{info.name}",
        )
        results.append(
            TableResult.from_batch(
                info.name,
                spec.job_id,
                batch,
                time.monotonic() - started,
                runtime().ledger.summary(spec.job_id)["rows"],
            )
        )
    result = MigrationResult(job_id=job_id, tables=results)
    if result.all_verified:
        result.schema_steps = finalize_target_schema(
            params.source, params.target, params.schema_name
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
        return Failed(message=f"migration {job_id}: {result.status}", data=result)
    return result
