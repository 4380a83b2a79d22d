"""Read-side queries over audit_log that return no PHI (for Prefect artifacts and the CLI)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, select

from custody.store.tables import audit_log


def run_summary(engine: Engine, correlation_id: str) -> list[dict[str, Any]]:
    """Counts of a run's events by action, status, severity and data class.

    Resource ids and details are left out on purpose: they may identify a patient.
    """
    c = audit_log.c
    query = (
        select(
            c.action,
            c.status,
            c.severity,
            c.data_classification,
            func.count().label("events"),
            func.min(c.seq).label("first_seq"),
            func.max(c.seq).label("last_seq"),
        )
        .where(c.correlation_id == correlation_id)
        .group_by(c.action, c.status, c.severity, c.data_classification)
        .order_by(func.min(c.seq))
    )
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]
