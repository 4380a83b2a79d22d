"""Worked example: export a table to the object store as JSON Lines, in verified chunks.

Read it top to bottom next to the README's "Write a new flow". It is a complete custody job:
audited (events chained in ``audit_log``), chunked (keyset chunks in the ``job_chunks`` ledger),
verified (each object read back and compared), and resumable (run it again with the same job id
and only the chunks the ledger does not show verified are done). The pieces it is built from:

- ``custody.examples.export.ExportRangeWork``: what one chunk does (plain Python);
- ``tasks.examples.export.prepare_export``: the one task this flow adds;
- everything else is custody's: ``plan_table_chunks``, ``run_chunks``, ``record_event``,
  ``publish_audit_artifacts``, ``publish_batch_result``.
"""

from __future__ import annotations

import time

from prefect import flow
from prefect.client.schemas.objects import State
from pydantic import BaseModel, ConfigDict, Field, field_validator

from custody.audit import AuditStatus, DataClassification
from custody.chunks import BatchResult, JobSpec
from custody.examples.export import ExportRangeWork
from custody.identifiers import check_name
from custody.prefect_glue import (
    current_flow_run_id,
    publish_batch_result,
    publish_location,
)
from custody.storage import check_destination, check_prefix, join_key
from flows.params import CONNECTION, SqlName, StoreName, offer_connections
from tasks.audit import publish_audit_artifacts, record_event
from tasks.chunks import plan_table_chunks, run_chunks
from tasks.examples.export import prepare_export
from tasks.outcomes import failed
from tasks.runners import SettingsTaskRunner

# Job ids become object-key segments here, so no ':' (allowed in other flows' job ids).
EXPORT_JOB_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$"


# 1. The parameters: one pydantic model, which Prefect shows as the run form. Names, never URLs.
class ExportTableParams(BaseModel):
    """Parameters of ``export-table`` (they become the form in the Prefect UI)."""

    model_config = ConfigDict(
        title="Export a table as JSON Lines, in verified chunks", extra="forbid"
    )

    source: str = Field(
        title="Source connection",
        pattern=CONNECTION,
        description="Name of a configured connection, never a URL.",
        json_schema_extra=offer_connections,
    )
    table: SqlName = Field(title="Table")
    key_column: SqlName = Field(title="Key column", description="Unique integer or text column.")
    exclude_columns: list[str] = Field(
        default_factory=list,
        title="Columns left out",
        description="Direct identifiers that must not leave the database, e.g. patient_id.",
    )
    destination: StoreName = Field(
        default="default",
        title="Object store",
        description="A configured store name: default is CUSTODY_OBJECT_STORE_URL.",
    )
    prefix: str = Field(default="exports", title="Key prefix", max_length=200)
    chunk_size: int = Field(default=50_000, ge=1, le=1_000_000, title="Rows per chunk (object)")
    max_concurrency: int = Field(default=2, ge=1, le=32, title="Chunks in flight")
    continue_on_error: bool = Field(default=True, title="Continue after a failed chunk")
    job_id: str | None = Field(
        default=None,
        title="Job id",
        pattern=EXPORT_JOB_ID,
        description="Re-use an earlier job id to resume it; empty starts a new job.",
    )

    @field_validator("exclude_columns")
    @classmethod
    def _plain_names(cls, value: list[str]) -> list[str]:
        return [check_name(name, "excluded column") for name in value]

    @field_validator("prefix")
    @classmethod
    def _plain_prefix(cls, value: str) -> str:
        return check_prefix(value)


# 2. The flow: only tasks and custody's building blocks, in the order a reviewer reads them.
@flow(
    name="export-table",
    description="Export a table as JSON Lines objects, one verified object per chunk.",
    task_runner=SettingsTaskRunner(),
)
def export_table(params: ExportTableParams) -> BatchResult | State[BatchResult]:
    """Check the columns, plan chunks, export and verify each, leave audit rows and artifacts."""
    started = time.monotonic()
    job_id = params.job_id or f"export-{params.table}-{current_flow_run_id() or 'local'}"[:100]
    title = f"export-{params.table}"
    prefix = join_key(params.prefix, job_id)

    # Bad input stops here, before anything is read, written or audited.
    check_destination(params.destination)
    columns, location = prepare_export(
        params.source,
        params.table,
        params.key_column,
        params.exclude_columns,
        params.destination,
        prefix,
    )
    # Run-level audit events: who exported which table, which columns, to where.
    facts = {"job_id": job_id, "source": params.source, "location": location}
    record_event(
        "data.export.started",
        AuditStatus.STARTED,
        "table",
        params.table,
        details={**facts, "columns": columns, "excluded": params.exclude_columns},
        classification=DataClassification.PHI,
    )
    # The job: its id, what it ranges over, and the audit actions of its chunks. The ledger
    # refuses to resume a job id with a different subject, key or chunk size.
    spec = JobSpec(
        job_id=job_id,
        kind="export",
        subject=f"{params.source}.{params.table} -> {location} (columns: {','.join(columns)})",
        key_column=params.key_column,
        chunk_size=params.chunk_size,
        audit_prefix="data.export",
    )
    plan = plan_table_chunks(spec, params.source, params.table)
    work = ExportRangeWork(
        source=params.source,
        table=params.table,
        key_column=params.key_column,
        columns=tuple(columns),
        prefix=prefix,
        destination=params.destination,
    )
    # Each pending chunk becomes a retried task: ledger first, work, verify, ledger + audit.
    result = run_chunks(
        plan,
        work,
        max_concurrency=params.max_concurrency,
        continue_on_error=params.continue_on_error,
        title=title,
    )
    record_event(
        "data.export.completed",
        AuditStatus(result.status),
        "table",
        params.table,
        details={**facts, **result.model_dump(exclude={"failures"})},
        classification=DataClassification.PHI,
    )
    # PHI-free artifacts: counts, the location (bucket and prefix), the run's audit events.
    publish_batch_result(title, job_id, result, time.monotonic() - started)
    publish_location(f"{title}-location", location, f"Objects of export job {job_id}")
    publish_audit_artifacts(title)
    if result.failed:
        return failed(f"{result.failed} of {result.total} chunks failed (job {job_id})", result)
    return result
