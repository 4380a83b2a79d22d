"""Hooks that write a chunked run's unplanned end to the audit log: cancelled, failed, crashed.

What runs it (Prefect 3.8): when a run started by ``serve`` or a worker is cancelled, the
supervising process kills the flow's process first, then runs this hook in its own process, then
marks the run Cancelled. The ledger is therefore final when the hook counts its chunks. That
process needs the same ``CUSTODY_*`` settings as the flow; without them the hook fails (Prefect
logs a warning) and the run is still cancelled, its ledger still consistent. A run started
in-process (``python -c 'flow(...)'``) has no supervisor watching for cancellation at all.

A cancelled run needs no repair: verified chunks are verified, the chunk that was in flight is
left ``running`` (or finished, if it did before the process ended) and a re-run with the same
job id does it again.
"""

from __future__ import annotations

import re
from typing import Any

from prefect import Flow
from prefect.client.schemas.objects import FlowRun, State
from sqlalchemy import exists, select

from custody.audit import AuditEvent, AuditStatus
from custody.store.tables import audit_log
from tasks.runtime import runtime

Hook = Any  # Prefect's FlowStateHook, kept loose: it is generic over the flow's signature


def audit_cancellation(job_prefix: str, audit_prefix: str) -> Hook:
    """A hook recording ``<audit_prefix>.cancelled`` with the job id and its chunk counts.

    Args:
        job_prefix: the flow's default job id is ``<job_prefix>-<flow run id>``.
        audit_prefix: e.g. ``data.migration``.
    """

    def hook(flow: Flow[Any, Any], flow_run: FlowRun, state: State[Any]) -> None:
        _record_end(flow, flow_run, job_prefix, f"{audit_prefix}.cancelled", "cancelled")

    hook.__name__ = f"audit_{audit_prefix.replace('.', '_')}_cancelled"
    return hook


_EXCEPTION = re.compile(r"encountered an exception: (\w+)")


def audit_failure(job_prefix: str, audit_prefix: str) -> Hook:
    """A hook recording ``<audit_prefix>.failed`` when a run ends without its completed event.

    A flow that finishes its work writes ``<audit_prefix>.completed`` itself, failed or not. This
    covers the runs that do not get there: an exception escaping the flow (a target that refuses
    its keys at the end, a connection name nobody configured) or a crash. Only the exception's
    class name is kept from the state message: the rest may quote a database's error text.
    """

    def hook(flow: Flow[Any, Any], flow_run: FlowRun, state: State[Any]) -> None:
        with runtime().store.connect() as connection:
            completed = connection.execute(
                select(
                    exists().where(
                        audit_log.c.correlation_id == str(flow_run.id),
                        audit_log.c.action == f"{audit_prefix}.completed",
                    )
                )
            ).scalar_one()
        if completed:
            return
        found = _EXCEPTION.search(state.message or "")
        _record_end(
            flow, flow_run, job_prefix, f"{audit_prefix}.failed", state.type.value.lower(),
            error=found.group(1) if found else None,
        )  # fmt: skip

    hook.__name__ = f"audit_{audit_prefix.replace('.', '_')}_failed"
    return hook


def _record_end(
    flow: Flow[Any, Any],
    flow_run: FlowRun,
    job_prefix: str,
    action: str,
    outcome: str,
    **extra: str | None,
) -> None:
    """One event for a run's unplanned end, with its job's chunk counts from the ledger."""
    params = flow_run.parameters.get("params") or {}
    job_id = params.get("job_id") or f"{job_prefix}-{flow_run.id}"
    rt = runtime()
    rt.audit.log(
        AuditEvent(
            principal=rt.settings.principal,
            action=action,
            status=AuditStatus.FAILED,
            resource_type="job",
            resource_id=job_id,
            correlation_id=str(flow_run.id),
            details={
                "job_id": job_id,
                "flow": flow.name,
                "outcome": outcome,
                **extra,
                "chunks": rt.ledger.family_summary(job_id),
            },
        )
    )
