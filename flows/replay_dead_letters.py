"""Re-run dead-lettered chunks, after approval, through the normal chunk protocol."""

from __future__ import annotations

import hashlib

from prefect import flow
from prefect.client.schemas.objects import State
from pydantic import BaseModel, ConfigDict, Field

from custody.audit import AuditStatus
from custody.chunks.dead_letters import DeadLetter
from custody.chunks.replay_report import (
    ReplayedJob,
    ReplayResult,
    plan_jobs,
    publish_replay_plan,
    publish_replay_result,
)
from custody.prefect_glue import current_flow_run_id
from flows.params import JOB_ID
from tasks.approval import ApprovalRequest, await_approval
from tasks.audit import publish_audit_artifacts, record_event
from tasks.chunks import run_chunks
from tasks.outcomes import failed
from tasks.replay import list_dead_letters, prepare_replay, settle_replay
from tasks.runners import SettingsTaskRunner

_LISTED = 50  # job ids named in an approval request; the rest are counted


class ReplayParams(BaseModel):
    """Parameters of ``replay-dead-letters`` (they become the form in the Prefect UI)."""

    model_config = ConfigDict(title="Replay dead-lettered chunks", extra="forbid")

    job_id: str | None = Field(
        default=None,
        title="Job id",
        pattern=JOB_ID,
        description="A job id, or a run's job id to take all its tables or policies "
        "(e.g. migrate-1 takes migrate-1.patients). Empty: every job.",
    )
    kind: str | None = Field(
        default=None,
        title="Job kind",
        pattern=r"^[a-z][a-z0-9_]{0,40}$",
        description="migration, copy or archival. Empty: every kind.",
    )
    max_letters: int = Field(
        default=1_000,
        ge=1,
        le=100_000,
        title="At most this many letters",
        description="How many open dead letters this run takes up, at most.",
    )
    max_concurrency: int = Field(
        default=2,
        ge=1,
        le=16,
        title="Chunks in flight",
        description="Chunks replayed at the same time by this run.",
    )
    approval_timeout_minutes: int = Field(
        default=60,
        ge=1,
        le=10_080,
        title="Approval timeout (minutes)",
        description="Not approved by then: the run fails and nothing is replayed.",
    )


@flow(
    name="replay-dead-letters",
    description="Re-run dead-lettered chunks after approval.",
    task_runner=SettingsTaskRunner(),
)
def replay_dead_letters(params: ReplayParams) -> ReplayResult | State[ReplayResult]:
    """List, publish the plan, wait for approval, replay job by job, settle, report.

    Args:
        params: Which dead letters to replay, and how long to wait for approval.
    """
    run_key = current_flow_run_id() or "local"
    letters = list_dead_letters(params.job_id, params.kind, params.max_letters)
    result = ReplayResult(run_key=run_key, jobs=plan_jobs(letters))
    publish_replay_plan(run_key, letters)
    runnable = [letter for letter in letters if letter.replayable]
    if runnable:
        decision = await_approval(
            _approval_request(run_key, params, runnable), params.approval_timeout_minutes * 60
        )
        if not decision.approved:
            publish_audit_artifacts(f"replay-{run_key}")
            return decision.stopped(result)
        result.approved_by = decision.approver
        for job in result.jobs:
            if job.not_replayable is None:
                _replay_job(job, runnable, decision.approver or "", params.max_concurrency)
    result.ran = True
    record_event(
        "dead_letter.replay_completed",
        AuditStatus.SUCCESS if result.status == "nothing_to_do" else AuditStatus(result.status),
        "job",
        params.job_id or "*",
        details={"run_key": run_key, "kind": params.kind, **result.audit_details()},
    )
    publish_replay_result(result)
    publish_audit_artifacts(f"replay-{run_key}")
    if result.status in ("partial_failure", "failed"):
        return failed(f"replay {run_key}: {result.status}", result)
    return result


def _replay_job(
    job: ReplayedJob, letters: list[DeadLetter], approver: str, max_concurrency: int
) -> None:
    """One job's letters: its own work on its own chunks, then settle each letter."""
    mine = [letter for letter in letters if letter.job_id == job.job_id]
    plan, work = prepare_replay(job.job_id, [letter.chunk_no for letter in mine])
    run_chunks(plan, work, max_concurrency=max_concurrency, title=f"replay-{job.job_id}")
    outcome = settle_replay(mine, approver)
    job.replayed = sum(outcome.values())
    job.still_open = len(mine) - job.replayed


def _approval_request(
    run_key: str, params: ReplayParams, letters: list[DeadLetter]
) -> ApprovalRequest:
    """What the approver is asked: these letters, of these jobs, run again."""
    jobs = sorted({letter.job_id for letter in letters})
    ids = sorted(letter.id for letter in letters)
    return ApprovalRequest(
        job_id=f"replay-{run_key}",
        flow="replay-dead-letters",
        action=f"re-run {len(letters)} dead-lettered chunk(s) of {len(jobs)} job(s)",
        scope={
            "jobs": jobs[:_LISTED]
            + ([f"... {len(jobs) - _LISTED} more"] if len(jobs) > _LISTED else []),
            "dead_letters": len(ids),
            "dead_letter_ids": f"{ids[0]}..{ids[-1]}",
            "dead_letter_ids_sha256": hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest(),
        },
        facts={"job_filter": params.job_id or "(all)", "kind": params.kind or "(all)"},
    )
