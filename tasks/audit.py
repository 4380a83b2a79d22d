"""Audit tasks: run-level events, the PHI-free artifacts of a run, chain verification."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from custody.audit import AuditEvent, AuditStatus, DataClassification, verify_chain
from custody.prefect_glue import publish_run_audit
from tasks.retry import retry_if_transient
from tasks.runtime import runtime


@task(
    name="audit-event",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retry_if_transient,
    retries=2,
    retry_delay_seconds=1,
)
def record_event(
    action: str,
    status: AuditStatus,
    resource_type: str,
    resource_id: str | None = None,
    details: dict[str, Any] | None = None,
    classification: DataClassification = DataClassification.INTERNAL,
) -> int:
    """Append one pipeline event (references and counts only) and return its sequence number."""
    rt = runtime()
    result = rt.audit.log(
        AuditEvent(
            principal=rt.settings.principal,
            action=action,
            status=status,
            resource_type=resource_type,
            resource_id=resource_id,
            correlation_id=rt.correlation_id,
            data_classification=classification,
            details=details or {},
        )
    )
    return result.last_seq


@task(
    name="publish-audit-artifacts",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def publish_audit_artifacts(title: str) -> dict[str, int]:
    """Table and markdown artifacts of the current run's audit events."""
    rt = runtime()
    run_id = rt.correlation_id
    if run_id is None:
        return {}
    return publish_run_audit(rt.store, run_id, title)


@task(
    name="verify-audit-chain",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def verify_audit_chain() -> dict[str, Any]:
    """Walk the whole chain; the result names the first broken event, never its content."""
    rt = runtime()
    result = verify_chain(rt.store, rt.audit.keyring)
    return {
        "ok": result.ok,
        "events_checked": result.events_checked,
        "last_seq": result.last_seq,
        "first_bad_seq": result.first_bad_seq,
        "reason": result.reason,
    }
