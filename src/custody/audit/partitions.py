"""Monthly audit_log partitions on PostgreSQL, created ahead of time."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Engine, text

from custody.db import is_postgres


def ensure_partitions(engine: Engine, start: dt.date, months: int) -> int:
    """Create the monthly partitions from ``start``'s month for ``months`` months.

    Events whose month has no partition land in ``audit_log_default``. Creating their month
    later moves them into the new partition in the same transaction (the default partition is
    detached and re-attached around the move), so such rows never block this call.

    Returns:
        How many partitions were created (0 on SQLite, which has none).
    """
    if months < 1 or months > 1200:
        raise ValueError(f"months must be between 1 and 1200, got {months}")
    if not is_postgres(engine):
        return 0
    with engine.begin() as connection:
        created = connection.execute(
            text("SELECT custody_audit_ensure_partitions(:start, :months)"),
            {"start": start, "months": months},
        ).scalar_one()
    return int(created)
