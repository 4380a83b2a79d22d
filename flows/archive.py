"""Archive old rows to an object store under retention policies, and restore them, verified."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime

from prefect import flow
from prefect.client.schemas.objects import State
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from custody.archive.report import (
    ArchiveResult,
    PolicyPlan,
    PolicyResult,
    publish_plan,
    publish_result,
)
from custody.archive.work import ArchiveRangeWork, ArchiveTarget
from custody.audit import AuditStatus, DataClassification
from custody.chunks import JobSpec
from custody.prefect_glue import current_flow_run_id
from custody.storage import LockMode, check_destination, check_prefix, open_store, warm_store
from flows.params import CONNECTION, JOB_ID, SqlName, StoreName, offer_connections
from tasks.approval import ApprovalRequest, await_approval
from tasks.archive import (
    describe_archive_table,
    find_orphan_objects,
    plan_archive_batches,
    plan_archive_policy,
    prepare_archive_manifest,
    restore_archives,
)
from tasks.audit import publish_audit_artifacts, record_event
from tasks.cancellation import audit_cancellation, audit_failure
from tasks.chunks import run_chunks
from tasks.concurrency import one_archival_per_database
from tasks.outcomes import failed
from tasks.runners import SettingsTaskRunner

HIPAA_SIX_YEARS = 2190


class RetentionPolicy(BaseModel):
    """One data type: when its rows leave the hot database, and how long the archive is kept."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(
        title="Data type",
        pattern=r"^[a-z][a-z0-9_]{0,62}$",
        description="A short name for the policy (e.g. lab_results): it names the job, the audit "
        "events and the artifacts.",
    )
    table: SqlName = Field(
        title="Table",
        description="Table to archive from; it needs a single-column primary key.",
    )
    timestamp_column: SqlName = Field(
        title="Timestamp column",
        description="The column that dates a row (e.g. collected_at); rows before the cutoff go.",
    )
    retention_days: int | None = Field(
        default=None, ge=1, le=36_500, title="Keep in the database (days)",
        description="Rows older than this many days (from the start of today, UTC) are archived.",
    )  # fmt: skip
    cutoff: date | None = Field(
        default=None, title="Or: archive rows before", description="A fixed cutoff date (UTC)."
    )
    keep_archived_days: int = Field(
        default=HIPAA_SIX_YEARS, ge=1, le=36_500, title="Keep the archive (days)",
        description="Object Lock retain-until: the newest archived row's time plus this. "
        "HIPAA: six years (45 CFR 164.316(b)(2)).",
    )  # fmt: skip
    classification: DataClassification = Field(
        default=DataClassification.PHI,
        title="Data classification",
        description="Recorded on the audit events of this policy's batches.",
    )
    regulation: str = Field(
        default="HIPAA",
        pattern=r"^[A-Za-z0-9 ._-]{1,40}$",
        title="Regulation",
        description="The regulation the retention serves, recorded on the audit events.",
    )

    @model_validator(mode="after")
    def _one_cutoff(self) -> RetentionPolicy:
        if (self.retention_days is None) == (self.cutoff is None):
            raise ValueError("give exactly one of retention_days or cutoff")
        return self

    def cutoff_time(self, today: date | None = None) -> datetime:
        """The cutoff as a UTC instant; stable for a whole day, so a re-run resumes its plan."""
        if self.cutoff is not None:
            return datetime.combine(self.cutoff, dtime(), tzinfo=UTC)
        start = datetime.combine(today or datetime.now(UTC).date(), dtime(), tzinfo=UTC)
        return start - timedelta(days=self.retention_days or 0)


class ArchiveParams(BaseModel):
    """Parameters of ``archive-to-s3`` (they become the form in the Prefect UI)."""

    model_config = ConfigDict(title="Archive old rows to object storage", extra="forbid")

    database: str = Field(
        title="Database connection",
        pattern=CONNECTION,
        description="Name of a configured connection (CUSTODY_CONNECTIONS__<NAME>), never a URL. "
        "One archival per database runs at a time.",
        json_schema_extra=offer_connections,
    )
    schema_name: SqlName = Field(
        default="public",
        title="Schema",
        description="Schema of the tables named in the policies.",
    )
    policies: list[RetentionPolicy] = Field(
        min_length=1,
        title="Retention policies",
        description="One per table: which rows are old enough, and how long the archive is kept.",
    )
    destination: StoreName = Field(
        default="default", title="Object store",
        description="A configured store name: default is CUSTODY_OBJECT_STORE_URL, others "
        "CUSTODY_OBJECT_STORES__<NAME>.",
    )  # fmt: skip
    prefix: str = Field(
        default="archive",
        title="Key prefix",
        max_length=200,
        description="Objects go under {prefix}/{table}/{yyyy}/{mm}/ in the object store.",
    )
    batch_size: int = Field(
        default=100_000,
        ge=1,
        le=1_000_000,
        title="Rows per object",
        description="Each batch is one Parquet object, verified and deleted on its own.",
    )
    object_lock: LockMode = Field(
        default=LockMode.NONE,
        title="Object Lock mode",
        description="S3 Object Lock on each object until its retention ends: compliance (no one "
        "can shorten it), governance (admins can), or none.",
    )
    delete_source: bool = Field(
        default=True,
        title="Delete archived rows from the database",
        description="Off: copy to the archive and verify, but keep the rows.",
    )
    require_approval: bool = Field(
        default=False, title="Wait for approval before deleting",
        description="With deletion on: publish the plan, then pause until someone approves or "
        "denies (Resume in the UI, or the API). The approver goes to the audit log.",
    )  # fmt: skip
    approval_timeout_minutes: int = Field(
        default=60, ge=1, le=10_080, title="Approval timeout (minutes)",
        description="Not approved by then: the run fails and nothing is archived or deleted.",
    )  # fmt: skip
    max_concurrency: int = Field(
        default=2,
        ge=1,
        le=16,
        title="Batches in flight",
        description="Batches archived at the same time by this run.",
    )
    continue_on_error: bool = Field(
        default=True,
        title="Continue after a failed batch",
        description="A failed batch keeps its rows and gets a dead letter; off stops the run.",
    )
    dry_run: bool = Field(
        default=False,
        title="Dry run (plan only)",
        description="Count eligible rows and objects per policy; archive and delete nothing.",
    )
    job_id: str | None = Field(
        default=None, title="Job id", pattern=JOB_ID,
        description="Re-use an earlier job id (same day) to resume it.",
    )  # fmt: skip

    @field_validator("prefix")
    @classmethod
    def _plain_prefix(cls, value: str) -> str:
        return check_prefix(value)


@flow(
    name="archive-to-s3",
    description="Archive rows past retention to object storage.",
    task_runner=SettingsTaskRunner(),
)
def archive_to_s3(params: ArchiveParams) -> ArchiveResult | State[ArchiveResult]:
    """Check, plan, archive batch by batch (upload, verify, delete), report.

    One archival per database at a time among deployment runs (schedule, UI, API, any
    worker): the run holds the global concurrency limit ``custody-archive-<database>``
    (tasks/concurrency.py). A dry run only reads, so it does not wait.

    Args:
        params: Which database, the retention policies, where the objects go, and safety switches.
    """
    if params.dry_run:
        return _archive(params)
    with one_archival_per_database(params.database):
        return _archive(params)


def _archive(params: ArchiveParams) -> ArchiveResult | State[ArchiveResult]:
    """The archival itself (inside the flow run, under the database's limit)."""
    check_destination(params.destination)  # before any query (issue 15 item 7)
    warm_store(params.destination)  # boto3's import and client, while the planning tasks run
    job_id = params.job_id or f"archive-{current_flow_run_id() or 'local'}"
    tables = tuple(p.table for p in params.policies)
    infos = [
        describe_archive_table(params.database, params.schema_name, p.table, p.timestamp_column,
                               tuple(t for t in tables if t != p.table))
        for p in params.policies
    ]  # fmt: skip
    if params.dry_run or (params.require_approval and params.delete_source):
        plans = [
            plan_archive_policy(params.database, info, p.timestamp_column, p.cutoff_time(),
                                params.batch_size, p.name)
            for p, info in zip(params.policies, infos, strict=True)
        ]  # fmt: skip
        publish_plan(job_id, plans, dry_run=params.dry_run)
        if params.dry_run:
            return ArchiveResult(job_id=job_id, plan=plans)
        if any(p.eligible_rows for p in plans):
            decision = await_approval(
                _approval_request(job_id, params, plans), params.approval_timeout_minutes * 60
            )
            if not decision.approved:
                publish_audit_artifacts(f"archive-{job_id}")
                return decision.stopped(ArchiveResult(job_id=job_id, plan=plans))
    record_event(
        "data.archival.started", AuditStatus.STARTED, "database", params.database,
        details={"job_id": job_id, "policies": [p.name for p in params.policies],
                 "delete_source": params.delete_source, "object_lock": params.object_lock.value},
    )  # fmt: skip
    prepare_archive_manifest(params.database)
    target = ArchiveTarget(params.destination, params.prefix, params.object_lock, 0)
    result = ArchiveResult(job_id=job_id)
    for policy, info in zip(params.policies, infos, strict=True):
        started = time.monotonic()
        cutoff = policy.cutoff_time()
        spec = JobSpec(
            job_id=f"{job_id}.{policy.name}",
            kind="archival",
            subject=f"{params.database}.{params.schema_name}.{info.name}<{cutoff.isoformat()}",
            key_column=info.key_column or "-",
            chunk_size=params.batch_size,
            audit_prefix="data.archival",
            audit_verbs=("batch_completed", "batch_failed"),
        )
        plan = plan_archive_batches(spec, params.database, info, policy.timestamp_column, cutoff)
        work = ArchiveRangeWork(
            database=params.database, policy=policy.name, info=info,
            time_column=policy.timestamp_column, cutoff=cutoff,
            classification=policy.classification.value, regulation=policy.regulation,
            target=ArchiveTarget(target.store_url, target.prefix, target.lock,
                                 policy.keep_archived_days),
            delete_source=params.delete_source,
            archived_together=tuple(t for t in tables if t != info.name),
        )  # fmt: skip
        batch = run_chunks(
            plan, work, max_concurrency=params.max_concurrency,
            continue_on_error=params.continue_on_error, title=f"archive-{policy.name}",
        )  # fmt: skip
        orphans = find_orphan_objects(params.database, params.destination, params.prefix, info.name)
        result.policies.append(
            PolicyResult.from_batch(policy.name, info.name, spec.job_id, cutoff, batch,
                                    time.monotonic() - started, orphans)
        )  # fmt: skip
    record_event(
        "data.archival.completed", AuditStatus(result.status), "database", params.database,
        details={"job_id": job_id, **result.audit_details()},
    )  # fmt: skip
    publish_result(result, open_store(params.destination).location(params.prefix))
    publish_audit_artifacts(f"archive-{job_id}")
    if result.status != "success":
        return failed(f"archive {job_id}: {result.status}", result)
    return result


archive_to_s3.on_cancellation(audit_cancellation("archive", "data.archival"))
archive_to_s3.on_failure(audit_failure("archive", "data.archival"))
archive_to_s3.on_crashed(audit_failure("archive", "data.archival"))


def _approval_request(
    job_id: str, params: ArchiveParams, plans: list[PolicyPlan]
) -> ApprovalRequest:
    """What deleting this run's archived rows means, for the approver and the audit log."""
    rows = sum(p.eligible_rows for p in plans)
    return ApprovalRequest(
        job_id=job_id, flow="archive-to-s3",
        action=f"archive {rows} rows, then delete them from {params.database}",
        scope={
            "database": params.database, "schema": params.schema_name,
            "policies": [f"{p.policy}: {p.table} before {p.cutoff.isoformat()}" for p in plans],
            "destination": params.destination or "CUSTODY_OBJECT_STORE_URL",
            "prefix": params.prefix, "object_lock": params.object_lock.value,
            "delete_source": True,
        },
        facts={"eligible_rows": rows, "objects": sum(p.objects for p in plans)},
    )  # fmt: skip


class RestoreParams(BaseModel):
    """Parameters of ``restore-from-archive``: archive ids, or a table and a time range."""

    model_config = ConfigDict(title="Restore archived rows", extra="forbid")

    database: str = Field(
        title="Database connection",
        pattern=CONNECTION,
        description="Name of the configured connection the rows were archived from.",
        json_schema_extra=offer_connections,
    )
    archive_ids: list[str] = Field(
        default=[],
        title="Archive ids",
        description="Archive ids from the archive report or custody.archive_manifest.",
    )
    table: SqlName | None = Field(
        default=None,
        title="Or: table",
        description="Restore every archive of this table (narrowed by From and Until).",
    )
    start: datetime | None = Field(
        default=None,
        title="From (UTC)",
        description="With a table: archives holding rows from this time on.",
    )
    end: datetime | None = Field(
        default=None,
        title="Until (UTC, exclusive)",
        description="With a table: archives holding rows before this time.",
    )
    source: StoreName = Field(
        default="default", title="Object store",
        description="A configured store name: default is CUSTODY_OBJECT_STORE_URL.",
    )  # fmt: skip

    @field_validator("archive_ids")
    @classmethod
    def _plain_ids(cls, value: list[str]) -> list[str]:
        for archive_id in value:
            if not archive_id.isalnum() or len(archive_id) > 64:
                raise ValueError(f"archive id {archive_id!r} is not an archive id")
        return value

    @model_validator(mode="after")
    def _something_chosen(self) -> RestoreParams:
        if not self.archive_ids and self.table is None:
            raise ValueError("give archive_ids, or a table (optionally with start and end)")
        if self.start and self.end and self.end <= self.start:
            raise ValueError("end must be after start")
        return self


@flow(name="restore-from-archive", description="Restore archived rows, verified, idempotently.")
def restore_from_archive(params: RestoreParams) -> dict[str, int]:
    """Verify each selected object, load it, prove the table holds exactly its rows.

    Args:
        params: Which archives to restore: archive ids, or a table and a time range.
    """
    record_event(
        "data.archival.restore_started", AuditStatus.STARTED, "database", params.database,
        details={"archive_ids": len(params.archive_ids), "table": params.table},
    )  # fmt: skip
    counts = restore_archives(
        params.database, params.source, params.archive_ids, params.table, params.start, params.end
    )
    record_event(
        "data.archival.restore_completed", AuditStatus.SUCCESS, "database", params.database,
        details=counts,
    )  # fmt: skip
    publish_audit_artifacts(f"restore-{current_flow_run_id() or 'local'}")
    return counts
