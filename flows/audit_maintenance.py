"""Daily upkeep of the audit trail: partitions created ahead, the whole chain verified."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State
from pydantic import BaseModel, ConfigDict, Field

from custody.audit import AuditStatus
from custody.prefect_glue import current_flow_run_id, publish_table
from tasks.audit import publish_audit_artifacts, record_event, verify_audit_chain
from tasks.maintenance import ensure_audit_partitions
from tasks.outcomes import failed


class AuditMaintenanceParams(BaseModel):
    """Parameters of ``audit-maintenance`` (they become the form in the Prefect UI)."""

    model_config = ConfigDict(title="Audit trail maintenance", extra="forbid")

    months_ahead: int = Field(
        default=3, ge=1, le=24, title="Months of partitions",
        description="Monthly audit_log partitions to have in place from this month on "
        "(PostgreSQL; SQLite has none). Events of a month without one land in the default "
        "partition and are moved into the month's partition when it is created.",
    )  # fmt: skip
    verify_chain: bool = Field(
        default=True, title="Verify the audit chain",
        description="Walk the whole chain (hash, HMAC, links, gaps); the run fails naming "
        "the first broken event's sequence number.",
    )  # fmt: skip


class AuditMaintenanceResult(BaseModel):
    """What the run did, without PHI: partition counts and the chain verdict."""

    partitions: dict[str, Any]
    chain: dict[str, Any] | None = None

    @property
    def status(self) -> AuditStatus:
        """Failed when the chain was verified and found broken."""
        broken = self.chain is not None and not self.chain["ok"]
        return AuditStatus.FAILED if broken else AuditStatus.SUCCESS


@flow(name="audit-maintenance", description="Create audit_log partitions ahead; verify the chain.")
def audit_maintenance(
    params: AuditMaintenanceParams,
) -> AuditMaintenanceResult | State[AuditMaintenanceResult]:
    """Partitions first (cheap, time-critical), then the chain walk, then the report.

    Args:
        params: How many months of partitions to keep ready, and whether to walk the chain.
    """
    record_event(
        "audit.maintenance.started", AuditStatus.STARTED, "audit_log",
        details={"months_ahead": params.months_ahead, "verify_chain": params.verify_chain},
    )  # fmt: skip
    result = AuditMaintenanceResult(partitions=ensure_audit_partitions(params.months_ahead))
    if params.verify_chain:
        result.chain = verify_audit_chain()
    record_event(
        "audit.maintenance.completed", result.status, "audit_log",
        details={"partitions_created": result.partitions["created"], "chain": result.chain},
    )  # fmt: skip
    _publish(result)
    publish_audit_artifacts(f"audit-maintenance-{current_flow_run_id() or 'local'}")
    if result.chain is not None and not result.chain["ok"]:
        return failed(
            f"audit chain broken at seq {result.chain['first_bad_seq']}: {result.chain['reason']}",
            result,
        )
    return result


def _publish(result: AuditMaintenanceResult) -> None:
    chain = result.chain or {}
    publish_table(
        f"audit-maintenance-{current_flow_run_id() or 'local'}",
        [
            {
                "store": result.partitions["dialect"],
                "partitions_from": result.partitions["from_month"],
                "months": result.partitions["months"],
                "partitions_created": result.partitions["created"],
                "chain": "not verified" if not chain else "intact" if chain["ok"] else "BROKEN",
                "events_checked": chain.get("events_checked"),
                "last_seq": chain.get("last_seq"),
                "first_bad_seq": chain.get("first_bad_seq"),
                "reason": chain.get("reason"),
            }
        ],
        "Audit trail maintenance: partitions created ahead and the chain verdict (no event data).",
    )
