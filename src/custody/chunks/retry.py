"""Which failures are worth retrying: lost connections, timeouts, serialisation conflicts.

Data errors (constraint violations, bad values, verification mismatches) fail at once: retrying
them only delays the dead letter.
"""

from __future__ import annotations

import psycopg
from sqlalchemy import exc as sa_exc

# SQLSTATE classes/codes that a retry can cure.
_TRANSIENT_SQLSTATES = ("08", "40001", "40P01", "53300", "57P01", "57P02", "57P03", "55P03")


def is_transient(exc: BaseException) -> bool:
    """True when the same work may succeed if simply tried again."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if getattr(current, "transient", False):
            return True
        if isinstance(current, sa_exc.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sa_exc.DisconnectionError | sa_exc.TimeoutError):
            return True
        if isinstance(
            current, psycopg.OperationalError | ConnectionError | TimeoutError
        ) and not isinstance(current, psycopg.errors.QueryCanceled):
            return True
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_TRANSIENT_SQLSTATES):
            return True
        if "database is locked" in str(current):  # SQLite writer contention
            return True
        current = current.__cause__ or getattr(current, "orig", None)
    return False


def backoff_delays(retries: int, base_s: float = 1.0, cap_s: float = 60.0) -> list[float]:
    """Exponential backoff: base, 2*base, 4*base ... capped (Prefect task retry delays)."""
    return [min(cap_s, base_s * 2**i) for i in range(retries)]
