"""Copy one table between databases in verified, resumable chunks (the generic path)."""

from __future__ import annotations

import time

from prefect import flow
from prefect.client.schemas.objects import State
from pydantic import ConfigDict, Field

from custody.audit import AuditStatus
from custody.chunks import BatchResult, JobSpec
from custody.prefect_glue import current_flow_run_id, publish_batch_result
from custody.transfer.generic import CopyRangeWork
from flows.params import ChunkedJobParams, SqlName
from tasks.audit import publish_audit_artifacts, record_event
from tasks.chunks import plan_table_chunks, run_chunks
from tasks.outcomes import failed
from tasks.runners import SettingsTaskRunner
from tasks.transfer import prepare_target_table


class CopyTableParams(ChunkedJobParams):
    """Parameters of ``copy-table`` (they become the form in the Prefect UI)."""

    model_config = ConfigDict(title="Copy a table in verified chunks", extra="forbid")

    table: SqlName = Field(
        title="Table",
        description="Table to copy; created on the target when it is missing.",
    )
    key_column: SqlName = Field(
        title="Key column",
        description="Unique integer or text column to chunk on.",
    )


@flow(
    name="copy-table",
    description="Copy a table in verified, resumable chunks.",
    task_runner=SettingsTaskRunner(),
)
def copy_table(params: CopyTableParams) -> BatchResult | State[BatchResult]:
    """Plan chunks, copy and verify each, and leave audit rows and artifacts for the run.

    Args:
        params: Source and target connections, the table, its key and how the chunks run.
    """
    started = time.monotonic()
    job_id = params.job_id or f"copy-{params.table}-{current_flow_run_id() or 'local'}"[:128]
    title = f"copy-{params.table}"
    record_event(
        "data.copy.started",
        AuditStatus.STARTED,
        "table",
        params.table,
        details={"job_id": job_id, "source": params.source, "target": params.target},
    )
    prepare_target_table(params.source, params.target, params.table)
    spec = JobSpec(
        job_id=job_id,
        kind="copy",
        subject=f"{params.source}->{params.target}.{params.table}",
        key_column=params.key_column,
        chunk_size=params.chunk_size,
        audit_prefix="data.copy",
    )
    plan = plan_table_chunks(spec, params.source, params.table)
    work = CopyRangeWork(params.source, params.target, params.table, params.key_column)
    result = run_chunks(
        plan,
        work,
        max_concurrency=params.max_concurrency,
        continue_on_error=params.continue_on_error,
        title=title,
    )
    record_event(
        "data.copy.completed",
        AuditStatus(result.status),
        "table",
        params.table,
        details={"job_id": job_id, **result.model_dump(exclude={"failures"})},
    )
    publish_batch_result(title, job_id, result, time.monotonic() - started)
    publish_audit_artifacts(title)
    if result.failed:
        return failed(f"{result.failed} of {result.total} chunks failed (job {job_id})", result)
    return result
