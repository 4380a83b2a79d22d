"""What an archival run did, per policy, and its PHI-free artifacts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, computed_field

from custody.chunks import BatchResult
from custody.prefect_glue import publish_location, publish_markdown, publish_table


class PolicyPlan(BaseModel):
    """Dry run: what one policy would archive now."""

    policy: str
    table: str
    cutoff: datetime
    eligible_rows: int
    bytes_estimate: int
    objects: int


class PolicyResult(BaseModel):
    """One policy's outcome."""

    policy: str
    table: str
    job_id: str
    cutoff: datetime
    batches: int
    verified_now: int
    already_verified: int
    failed: int
    rows_archived: int
    seconds: float
    orphans: list[str] | None = Field(
        default_factory=list, description="None: the store could not be listed to look"
    )
    failures: list[str] = Field(default_factory=list)

    @classmethod
    def from_batch(
        cls,
        policy: str,
        table: str,
        job_id: str,
        cutoff: datetime,
        batch: BatchResult,
        seconds: float,
        orphans: list[str] | None,
    ) -> PolicyResult:
        """Summarise a policy's BatchResult."""
        return cls(
            policy=policy, table=table, job_id=job_id, cutoff=cutoff, batches=batch.total,
            verified_now=batch.successful, already_verified=batch.skipped, failed=batch.failed,
            rows_archived=batch.rows, seconds=round(seconds, 3), orphans=orphans,
            failures=[f"{f.ref}: {f.error}" for f in batch.failures],
        )  # fmt: skip


class ArchiveResult(BaseModel):
    """The whole run: ``status`` is success, partial_failure, failed or planned."""

    job_id: str
    policies: list[PolicyResult] = Field(default_factory=list)
    plan: list[PolicyPlan] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def status(self) -> str:
        """Outcome for the completion audit event."""
        if self.plan and not self.policies:
            return "planned"
        if all(p.failed == 0 for p in self.policies):
            return "success"
        done = sum(p.verified_now + p.already_verified for p in self.policies)
        return "partial_failure" if done else "failed"

    def audit_details(self) -> dict[str, Any]:
        """Counts for the completion audit event."""
        return {
            "status": self.status,
            "policies": len(self.policies),
            "rows_archived": sum(p.rows_archived for p in self.policies),
            "batches_failed": sum(p.failed for p in self.policies),
            "orphan_objects": sum(len(p.orphans or []) for p in self.policies),
            "orphan_check_skipped": sum(p.orphans is None for p in self.policies),
        }


def publish_plan(job_id: str, plans: list[PolicyPlan], dry_run: bool = True) -> None:
    """Eligible rows, bytes and objects per policy, as markdown (dry run, or before approval)."""
    state = (
        "dry run: nothing was changed"
        if dry_run
        else "waiting for approval: nothing archived or deleted yet; see the approval artifact"
    )
    lines = [
        f"# Archive plan `{job_id}` ({state})",
        "",
        "| policy | table | cutoff | eligible rows | estimated bytes | objects |",
        "|---|---|---|---|---|---|",
        *[
            f"| {p.policy} | {p.table} | {p.cutoff.isoformat()} | {p.eligible_rows} | "
            f"{p.bytes_estimate} | {p.objects} |"
            for p in plans
        ],
    ]
    publish_markdown(f"archive-plan-{job_id}", "\n".join(lines))


def publish_result(result: ArchiveResult, location: str) -> None:
    """Summary table, markdown report and a link to where the objects are."""
    publish_table(
        f"archive-summary-{result.job_id}",
        [
            {"policy": p.policy, "table": p.table, "rows_archived": p.rows_archived,
             "batches": p.batches, "failed_batches": p.failed,
             "orphan_objects": None if p.orphans is None else len(p.orphans),
             "seconds": p.seconds,
             "rows_per_s": round(p.rows_archived / p.seconds) if p.seconds > 0 else None}
            for p in result.policies
        ],
        f"Archive {result.job_id}: {result.status}",
    )  # fmt: skip
    lines = [f"# Archive `{result.job_id}`: {result.status}", ""]
    for p in result.policies:
        lines.append(
            f"- **{p.policy}** ({p.table}, rows before {p.cutoff.isoformat()}): "
            f"{p.rows_archived} rows in {p.verified_now} objects this run, "
            f"{p.already_verified} batches done earlier, {p.failed} failed"
        )
    failures = [f for p in result.policies for f in p.failures]
    if failures:
        lines += ["", "## Failed batches (rows stay in the source)", ""]
        lines += [f"- `{f}`" for f in failures[:200]]
    unlisted = [p.policy for p in result.policies if p.orphans is None]
    if unlisted:
        lines += ["", f"Could not list the object store to look for orphans: {unlisted}."]
    orphans = [o for p in result.policies for o in p.orphans or []]
    if orphans:
        lines += ["", "## Objects without a manifest row (left by an interrupted run)", ""]
        lines += [f"- `{o}`" for o in orphans[:200]]
    lines += [
        "",
        f"Objects and manifests: {location}; manifest rows in `custody.archive_manifest`.",
    ]
    publish_markdown(f"archive-report-{result.job_id}", "\n".join(lines))
    publish_location(f"archive-location-{result.job_id}", location, "Where this run's objects are")
