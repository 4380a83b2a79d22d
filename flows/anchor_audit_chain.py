"""Anchor the audit chain: a signed copy of its head, locked in the object store.

Run on a schedule (hourly or daily). Each run first proves the chain is intact and agrees with
every earlier anchor, so it never vouches for a chain that was already rewritten; then it writes
the new anchor under Object Lock. ``custody audit verify --anchors`` checks the chain against
all of them.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.states import Failed
from pydantic import BaseModel, ConfigDict, Field, field_validator

from custody.audit import AuditStatus
from custody.audit.anchors import DEFAULT_PREFIX
from custody.storage import LockMode, check_prefix
from tasks.anchors import check_audit_anchors, write_audit_anchor
from tasks.audit import publish_audit_artifacts, record_event, verify_audit_chain


class AnchorParams(BaseModel):
    """Parameters of ``anchor-audit-chain`` (they become the form in the Prefect UI)."""

    model_config = ConfigDict(title="Anchor the audit chain in the object store", extra="forbid")

    destination: str | None = Field(
        default=None,
        title="Object store",
        description="s3://bucket/prefix (a bucket with Object Lock) or file:///dir; "
        "empty: CUSTODY_OBJECT_STORE_URL.",
    )
    prefix: str = Field(
        default=DEFAULT_PREFIX,
        title="Key prefix",
        max_length=200,
        description="Anchors go under this prefix; `custody audit verify --anchors` reads it.",
    )
    object_lock: LockMode = Field(
        default=LockMode.COMPLIANCE,
        title="Object Lock mode",
        description="compliance: nobody can delete an anchor before its retention ends.",
    )
    keep_days: int = Field(
        default=2190,
        ge=1,
        le=36_500,
        title="Keep each anchor (days)",
        description="As long as the audit log itself must be kept (HIPAA: six years).",
    )

    @field_validator("prefix")
    @classmethod
    def _plain_prefix(cls, value: str) -> str:
        return check_prefix(value)


@flow(name="anchor-audit-chain", description="Sign the audit chain head into locked storage.")
def anchor_audit_chain(params: AnchorParams) -> dict[str, Any] | State[Any]:
    """Verify the chain and its earlier anchors, then anchor the current head.

    Args:
        params: Where the anchors go, how they are locked and for how long.
    """
    chain = verify_audit_chain()
    earlier = check_audit_anchors(params.destination, params.prefix)
    if not chain["ok"] or not earlier["ok"]:
        record_event(
            "audit.chain.anchor_refused", AuditStatus.FAILED, "audit_chain", params.prefix,
            details={"chain": chain, "anchors": earlier},
        )  # fmt: skip
        publish_audit_artifacts("anchor-audit-chain")
        return Failed(message=f"not anchored: {chain['reason'] or earlier['reason']}")
    # The verification is itself an audit fact, and it gives a new store's empty chain a head,
    # so the first scheduled anchor never fails for want of events.
    record_event(
        "audit.chain.verified", AuditStatus.SUCCESS, "audit_chain", params.prefix,
        details={"events_checked": chain["events_checked"], "last_seq": chain["last_seq"],
                 "earlier_anchors": earlier["anchors_checked"]},
    )  # fmt: skip
    anchored = write_audit_anchor(
        params.destination, params.prefix, params.object_lock, params.keep_days
    )
    record_event(
        "audit.chain.anchored", AuditStatus.SUCCESS, "audit_chain", anchored["key"],
        details={**anchored, "earlier_anchors": earlier["anchors_checked"],
                 "object_lock": params.object_lock.value},
    )  # fmt: skip
    publish_audit_artifacts("anchor-audit-chain")
    return {**anchored, "earlier_anchors": earlier["anchors_checked"]}
