"""Audit-trail upkeep tasks: monthly ``audit_log`` partitions created before they are needed."""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from custody.audit.partitions import ensure_partitions
from tasks.retry import retry_if_transient
from tasks.runtime import runtime


@task(
    name="ensure-audit-partitions",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retry_if_transient,
    retries=2,
    retry_delay_seconds=5,
)
def ensure_audit_partitions(months: int, today: dt.date | None = None) -> dict[str, Any]:
    """Create the monthly partitions from this month on, so no event lands in the default one.

    Events of a month without a partition land in the default partition; creating that month
    later moves them into it in the same transaction (migration 0006_audit), so nothing blocks,
    but the move locks the table briefly: running this daily with a few months ahead avoids it.
    Idempotent: existing partitions are left alone.

    Returns:
        The store's dialect, the first month (``YYYY-MM``), the months covered and how many
        partitions this call created (0 on SQLite, which has none).
    """
    start = (today or dt.datetime.now(dt.UTC).date()).replace(day=1)
    store = runtime().store
    created = ensure_partitions(store, start, months)
    return {
        "dialect": store.dialect.name,
        "from_month": f"{start:%Y-%m}",
        "months": months,
        "created": created,
    }
