"""A run claims a file before ingesting it, so overlapping runs share an inbox.

The 15-minute schedule overlaps whenever a run is slow. Two runs that both ingested the same
file raced to insert its ``lab_files`` row, and the loser failed its whole run with a unique
violation (issue 15 item 10). Now each file is claimed first with a PostgreSQL session-level
advisory lock keyed on its content digest: ``pg_try_advisory_lock`` never waits, so a run that
finds a file held by another skips it (the holder lands it, or, if the holder dies, the lock
goes with its connection and the next run takes the file). After taking the claim, the caller
checks ``lab_files`` again, so a file the other run finished meanwhile is skipped as ingested.

SQLite has one writer at a time and no advisory locks: a claim there always succeeds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, text

from custody.db import is_postgres

# High 16 bits of every claim key: keeps lab claims apart from other advisory locks.
_NAMESPACE = 0x1AB5 << 48
_MASK = (1 << 48) - 1


def claim_key(digest: str) -> int:
    """A signed 64-bit advisory lock key for a SHA-256 hex digest."""
    key = _NAMESPACE | (int(digest[:12], 16) & _MASK)
    return key - (1 << 64) if key >= 1 << 63 else key


@contextmanager
def claim(store: Engine, digest: str) -> Iterator[bool]:
    """Hold the claim on a file for the block; yields False when another run holds it."""
    if not is_postgres(store.dialect):
        yield True
        return
    key = claim_key(digest)
    with store.connect() as conn:
        taken = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
        conn.commit()
        try:
            yield taken
        finally:
            if taken:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
