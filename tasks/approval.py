"""Approval of destructive steps: pause the run for a typed decision, and audit who decided.

A run that would delete or overwrite data publishes its plan, then pauses with
``pause_flow_run(wait_for_input=ApprovalInput)``. Prefect shows a Resume form built from
``ApprovalInput``; its server validates the answer against the same schema (a malformed approver
id is refused there, and the run stays paused). The answer comes back typed, and is written to
the audit log with the approver as principal before anything is touched. A denial or a timeout
stops the run with nothing changed.

An approval covers one job and one scope (the tables, policies, cutoffs, flags it was asked
for). A re-run of the same job with the same scope, e.g. to resume after a cancellation or a
crash, finds the granted approval in the audit log and does not ask again.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import inspect, literal, select
from sqlalchemy.sql.elements import quoted_name

from custody.audit import AuditEvent, AuditStatus
from custody.db import is_postgres
from custody.identifiers import reflect_table
from custody.migration.names import table_job_id
from custody.prefect_glue import current_flow_run_id, publish_markdown, update_markdown
from custody.store.tables import audit_log
from tasks.outcomes import cancelled, expect_pause_timeout, failed
from tasks.runtime import runtime

APPROVER = r"^[a-z][a-z0-9._-]{1,62}(@[a-z0-9-]{1,63}(\.[a-z0-9-]{1,63})+)?$"
_NO_CACHE: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


class ApprovalInput(RunInput):
    """Approve or deny the destructive step of this run.

    What you enter is stored by Prefect and in custody's audit log: enter no patient data.
    """

    approver: str = Field(
        title="Approver",
        pattern=APPROVER,
        description="Your user id, lowercase (e.g. jdoe or jdoe@hospital.org). It is recorded "
        "in the audit log as the principal of the decision.",
    )
    approved: bool = Field(
        default=False,
        title="Approve",
        description="On: go ahead. Off: deny, and the run stops without changing anything.",
    )
    reason: str = Field(
        default="",
        max_length=200,
        pattern=r"^[^\x00-\x1f\x7f]*$",
        title="Reason or change ticket",
        description="Optional, one line, e.g. CHG-1234; leave empty if none. No patient data.",
    )


class ApprovalRequest(BaseModel):
    """What a run asks approval for: references and counts only, never data."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    flow: str
    action: str = Field(description="One line, e.g. 'archive and delete rows older than ...'")
    scope: dict[str, Any] = Field(description="What the approval covers (its digest is kept)")
    facts: dict[str, Any] = Field(
        default_factory=dict, description="Counts shown to the approver, not part of the scope"
    )

    @property
    def digest(self) -> str:
        """SHA-256 of the canonical scope: a later run with the same digest is covered."""
        canonical = json.dumps(self.scope, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()


Outcome = Literal["granted", "denied", "timed_out", "reused"]


class ApprovalDecision(BaseModel):
    """The answer, as recorded in the audit log."""

    job_id: str
    outcome: Outcome
    approver: str | None = None
    audit_seq: int | None = None

    @property
    def approved(self) -> bool:
        """The run may go ahead."""
        return self.outcome in ("granted", "reused")

    def stopped(self, result: Any) -> State[Any]:
        """The final state of a run that was not approved (nothing was changed)."""
        if self.outcome == "denied":
            return cancelled(
                f"{self.job_id}: denied by {self.approver}; nothing was changed", result
            )
        # Prefect replaces this message: after a pause times out the server fails the run with
        # "never resumed". The audit log has approval.timed_out.
        return failed(f"{self.job_id}: not approved in time; nothing was changed", result)


def _event(
    principal: str, action: str, status: AuditStatus, request: ApprovalRequest, **details: Any
) -> AuditEvent:
    return AuditEvent(
        principal=principal,
        action=action,
        status=status,
        resource_type="job",
        resource_id=request.job_id,
        correlation_id=runtime().correlation_id,
        details={
            "flow": request.flow,
            "approval_for": request.action,
            "scope": request.scope,
            "scope_digest": request.digest,
            **details,
        },
    )


@task(name="find-prior-approval", retries=2, retry_delay_seconds=1, **_NO_CACHE)
def find_prior_approval(request: ApprovalRequest) -> tuple[str, int] | None:
    """(approver, audit seq) of an approval already granted for this job and scope, if any."""
    c = audit_log.c
    with runtime().store.connect() as connection:
        row = connection.execute(
            select(c.principal, c.seq)
            .where(
                c.action == "approval.granted",
                c.resource_type == "job",
                c.resource_id == request.job_id,
                c.details["scope_digest"].as_string() == request.digest,
            )
            .order_by(c.seq.desc())
            .limit(1)
        ).first()
    return None if row is None else (str(row.principal), int(row.seq))


@task(name="request-approval", retries=2, retry_delay_seconds=1, **_NO_CACHE)
def request_approval(request: ApprovalRequest, timeout_s: int) -> str:
    """Audit the request and publish what awaits approval, and how to give it.

    Returns:
        The id of the ``approval-<job>`` artifact, rewritten once the decision is in.
    """
    rt = runtime()
    rt.audit.log(
        _event(rt.settings.principal, "approval.requested", AuditStatus.STARTED, request,
               facts=request.facts, timeout_s=timeout_s)
    )  # fmt: skip
    return publish_markdown(f"approval-{request.job_id}", _request_markdown(request, timeout_s))


@task(name="publish-approval-decision", retries=2, retry_delay_seconds=1, **_NO_CACHE)
def publish_decision(
    request: ApprovalRequest, artifact_id: str, decision: ApprovalDecision
) -> None:
    """Rewrite the ``approval-<job>`` artifact: it no longer says the run is paused."""
    update_markdown(artifact_id, _decision_markdown(request, decision))


@task(name="record-approval", retries=2, retry_delay_seconds=1, **_NO_CACHE)
def record_approval(
    request: ApprovalRequest, outcome: Outcome, approver: str | None, reason: str | None = None
) -> int:
    """Audit the decision: the approver is the principal (the pipeline's, for a timeout)."""
    rt = runtime()
    status = {
        "granted": AuditStatus.SUCCESS,
        "reused": AuditStatus.SUCCESS,
        "denied": AuditStatus.DENIED,
        "timed_out": AuditStatus.FAILED,
    }[outcome]
    principal = approver if outcome in ("granted", "denied") and approver else rt.settings.principal
    details: dict[str, Any] = {"reason": reason} if reason else {}
    if outcome == "reused":
        details["approved_by"] = approver
    return rt.audit.log(
        _event(principal, f"approval.{outcome}", status, request, **details)
    ).last_seq


def await_approval(request: ApprovalRequest, timeout_s: int) -> ApprovalDecision:
    """Pause the current flow run until someone approves or denies ``request``, or time runs out.

    Call it from a flow body, after publishing the plan and before the first destructive task.
    """
    logger = get_run_logger()
    prior = find_prior_approval(request)
    if prior is not None:
        seq = record_approval(request, "reused", prior[0])
        logger.info("Job %s: approved earlier by %s (audit seq %s)", request.job_id, *prior)
        return ApprovalDecision(
            job_id=request.job_id, outcome="reused", approver=prior[0], audit_seq=seq
        )
    artifact_id = request_approval(request, timeout_s)
    form = ApprovalInput.with_initial_data(description=_form_text(request))
    try:
        answer = pause_flow_run(
            wait_for_input=form,
            timeout=timeout_s,
            poll_interval=runtime().settings.approval_poll_seconds,
        )
    except FlowPauseTimeout:
        expect_pause_timeout()
        seq = record_approval(request, "timed_out", None)
        logger.warning("Job %s: not approved within %s s; nothing changed", request.job_id,
                       timeout_s)  # fmt: skip
        decision = ApprovalDecision(job_id=request.job_id, outcome="timed_out", audit_seq=seq)
    else:
        outcome: Outcome = "granted" if answer.approved else "denied"
        seq = record_approval(request, outcome, answer.approver, answer.reason)
        logger.info("Job %s: %s by %s (audit seq %s)", request.job_id, outcome, answer.approver,
                    seq)  # fmt: skip
        decision = ApprovalDecision(
            job_id=request.job_id, outcome=outcome, approver=answer.approver, audit_seq=seq
        )
    publish_decision(request, artifact_id, decision)
    return decision


@task(name="tables-with-rows", retries=2, retry_delay_seconds=1, **_NO_CACHE)
def tables_to_overwrite(connection: str, schema: str, tables: list[str], job_id: str) -> list[str]:
    """Target tables that already hold rows and that this job has not started on yet.

    Rows in a table whose job is already in the ledger may be the job's own (a resumed run):
    the approval, if one was needed, was given when that job began.
    """
    rt = runtime()
    engine = rt.engine(connection)
    where = schema if is_postgres(engine) else None
    inspector = inspect(engine)
    found = []
    for name in tables:
        if rt.ledger.has_job(table_job_id(job_id, name)) or not inspector.has_table(
            quoted_name(name, quote=True),
            schema=None if where is None else quoted_name(where, quote=True),
        ):
            continue
        table = reflect_table(engine, name, where)
        with engine.connect() as c:
            if c.execute(select(literal(1)).select_from(table).limit(1)).first() is not None:
                found.append(name)
    return found


def _form_text(request: ApprovalRequest) -> str:
    facts = ", ".join(f"{k}: {v}" for k, v in request.facts.items())
    return (
        f"**{request.flow}**, job `{request.job_id}`: {request.action}. {facts}\n\n"
        "See the run's plan artifact. Enter no patient data here."
    )


_DECIDED = {
    "granted": "**Approved** by `{approver}`: the run went ahead.",
    "denied": "**Denied** by `{approver}`: the run stopped (Cancelled); nothing was changed.",
    "timed_out": "**Not approved in time**: the run stopped (Failed); nothing was changed.",
    "reused": "Covered by an earlier approval of `{approver}`: the run went ahead.",
}


def _decision_markdown(request: ApprovalRequest, decision: ApprovalDecision) -> str:
    rows = [f"| {k} | {v} |" for k, v in {**request.scope, **request.facts}.items()]
    return "\n".join(
        [
            f"# Approval {decision.outcome.replace('_', ' ')}: {request.flow} `{request.job_id}`",
            "",
            _DECIDED[decision.outcome].format(approver=decision.approver),
            f"Asked for: {request.action}.",
            "",
            "| what | value |",
            "|---|---|",
            *rows,
            "",
            f"Decided {datetime.now(UTC).isoformat(timespec='seconds')}; the decision is audit "
            f"event seq {decision.audit_seq} (`custody audit verify` checks the chain).",
        ]
    )


def _request_markdown(request: ApprovalRequest, timeout_s: int) -> str:
    run_id = current_flow_run_id() or "<flow-run-id>"
    until = datetime.now(UTC) + timedelta(seconds=timeout_s)
    rows = [f"| {k} | {v} |" for k, v in {**request.scope, **request.facts}.items()]
    return "\n".join(
        [
            f"# Approval needed: {request.flow} `{request.job_id}`",
            "",
            f"This run is **paused** until someone approves or denies: {request.action}.",
            f"It gives up at {until.isoformat(timespec='minutes')} UTC; then nothing is changed.",
            "",
            "| what | value |",
            "|---|---|",
            *rows,
            "",
            "Approve or deny in the Prefect UI (this flow run, **Resume**), or through the API:",
            "",
            "```",
            f"curl -X POST $PREFECT_API_URL/flow_runs/{run_id}/resume \\",
            "  -H 'Content-Type: application/json' \\",
            '  -d \'{"run_input": {"approver": "jdoe", "approved": true, "reason": "CHG-1234"}}\'',
            "```",
            "",
            "The approver and the decision go to the audit log. Enter no patient data.",
        ]
    )
