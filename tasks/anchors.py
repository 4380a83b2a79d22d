"""Audit anchor tasks: compare the chain with its anchors, and write a new one."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from custody.audit.anchors import check_anchors, write_anchor
from custody.storage import LockMode, open_store
from tasks.retry import retry_if_transient
from tasks.runtime import runtime


@task(name="check-audit-anchors", cache_policy=NO_CACHE, persist_result=False)
def check_audit_anchors(destination: str | None, prefix: str) -> dict[str, Any]:
    """The first anchor the chain contradicts, if any (sequence numbers and keys only)."""
    rt = runtime()
    store = open_store(destination, rt.settings)
    result = check_anchors(rt.store, rt.audit.keyring, store, prefix)
    return {
        "ok": result.ok,
        "anchors_checked": result.anchors_checked,
        "first_bad_key": result.first_bad_key,
        "first_bad_seq": result.first_bad_seq,
        "reason": result.reason,
    }


@task(
    name="write-audit-anchor",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retry_if_transient,
    retries=3,
    retry_delay_seconds=5,
)
def write_audit_anchor(
    destination: str | None, prefix: str, lock: LockMode, keep_days: int
) -> dict[str, Any]:
    """Sign the chain head and store it under Object Lock; returns where and what was anchored."""
    rt = runtime()
    store = open_store(destination, rt.settings)
    anchor, key = write_anchor(rt.store, rt.audit.keyring, store, prefix, lock, keep_days)
    return {"seq": anchor.seq, "row_hash": anchor.row_hash, "key": key}
