"""Audit tasks: run-level events, the PHI-free artifacts of a run, chain verification."""

from __future__ import annotations

import logging
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from custody.audit import AuditEvent, AuditStatus, DataClassification, verify_chain
from custody.audit.anchors import anchor_after_run
from custody.prefect_glue import publish_run_audit
from custody.storage import LockMode, open_store
from tasks.retry import retry_if_transient
from tasks.runtime import runtime

logger = logging.getLogger(__name__)


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
    """Table and markdown artifacts of the current run's audit events; then anchor the head.

    Every flow ends with this task, so it is where the chain head gets copied out of the
    database after each run (``CUSTODY_AUDIT_ANCHOR_AFTER_RUNS``).
    """
    rt = runtime()
    run_id = rt.correlation_id
    published = {} if run_id is None else publish_run_audit(rt.store, run_id, title)
    if rt.settings.audit_anchor_after_runs:
        anchor_run_end()
    return published


def anchor_run_end() -> dict[str, Any]:
    """Anchor the chain head after a run; a failure is logged, never fails the finished run.

    ``custody audit verify`` reports how many events no anchor has witnessed yet, so a missed
    anchor stays visible. Only references and the error's class name are logged.
    """
    rt = runtime()
    settings = rt.settings
    try:
        result = anchor_after_run(
            rt.store,
            rt.audit.keyring,
            open_store(None, settings),
            settings.audit_anchor_prefix,
            LockMode(settings.audit_anchor_lock),
            settings.audit_anchor_keep_days,
        )
    except Exception as exc:  # the run's work is done and recorded; say why it is unanchored
        logger.warning("audit chain head not anchored after this run: %s", type(exc).__name__)
        return {"anchored": False, "reason": type(exc).__name__}
    if not result["anchored"] and result["reason"] != "nothing new to anchor":
        logger.error("audit chain head NOT anchored: %s", result["reason"])
    return result


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
