"""Retention check: archived objects whose lock ends before the policy says they may go."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg

from custody.archive import manifest
from custody.storage import ObjectStore


@dataclass(frozen=True)
class RetentionShortfall:
    """One object kept for less time than required (or gone): references and dates only."""

    archive_id: str
    object_key: str
    required_until: datetime
    retain_until: datetime | None
    problem: str


def check_retention(
    conn: psycopg.Connection[Any], store: ObjectStore, keep_days: int
) -> tuple[int, list[RetentionShortfall]]:
    """Compare every verified archive's stored retention with its newest row + ``keep_days``.

    Returns how many objects were checked and the ones that fall short (missing, unlocked, or
    locked until too early).
    """
    rows = manifest.find(conn)
    short: list[RetentionShortfall] = []
    for row in rows:
        newest = row.time_max or row.time_min or datetime.min
        required = newest + timedelta(days=keep_days)
        head = store.head(row.object_key)
        until = None if head is None or head.retention is None else head.retention.retain_until
        if head is None:
            problem = "object missing"
        elif until is None:
            problem = "no retention lock"
        elif until < required:
            problem = "lock ends too early"
        else:
            continue
        short.append(RetentionShortfall(row.archive_id, row.object_key, required, until, problem))
    return len(rows), short
