"""A served flow that asks approval and gets no answer: the timeout's end state, in seconds.

``approval_timeout_minutes`` is at least a minute in the real flows' forms; this flow asks with a
two-second timeout and ends exactly as they do (``ApprovalDecision.stopped``).
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State

from tasks.approval import ApprovalRequest, await_approval


@flow(name="approval-timeout-probe")
def approval_timeout_probe(job_id: str = "probe-late") -> Any | State[Any]:
    """Ask approval for nothing with a 2 s timeout; nobody answers."""
    request = ApprovalRequest(job_id=job_id, flow="probe", action="nothing", scope={"t": 1})
    decision = await_approval(request, 2)
    return decision.stopped({"job_id": job_id}) if not decision.approved else decision.outcome
