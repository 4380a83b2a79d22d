"""When a later file replaces a stored result, keep what it replaced and fix the counts.

A result id is the same order, test and occurrence, so a second message with that id is a
correction (OBX-11 C), a cancellation (X), an amendment or a resend. The upsert then changes the
stored row: before it does, the row as it was goes to ``lab_results_history``, the earlier
file's ``lab_files.results`` stops claiming it, and one audit event names the replacement. A
result therefore never silently changes, and ``sum(lab_files.results)`` equals the number of
stored results.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, insert, select, update

from custody.audit import AuditEvent, AuditStatus, DataClassification
from custody.labs.tables import lab_files, lab_results, lab_results_history

_BATCH = 1_000


def record_replacements(
    conn: Connection,
    new_rows: Iterable[dict[str, Any]],
    digest: str,
    now: dt.datetime,
    *,
    principal: str,
    correlation_id: str | None,
) -> list[AuditEvent]:
    """Archive the stored rows the new ones replace; return one audit event per replacement.

    Call inside the landing transaction, before the upsert. Rows already landed by this same
    file (a result sent twice in one file) are not replacements of an earlier file's.
    """
    status_by_id = {row["result_id"]: row["status"] for row in new_rows}
    ids = list(status_by_id)
    olds: list[dict[str, Any]] = []
    for start in range(0, len(ids), _BATCH):
        query = select(lab_results).where(
            lab_results.c.result_id.in_(ids[start : start + _BATCH]),
            lab_results.c.file_sha256 != digest,
        )
        olds.extend(dict(old) for old in conn.execute(query).mappings())
    return history_events(
        conn, olds, status_by_id, digest, now, principal=principal, correlation_id=correlation_id
    )


def history_events(
    conn: Connection,
    olds: list[dict[str, Any]],
    status_by_id: dict[str, Any],
    digest: str,
    now: dt.datetime,
    *,
    principal: str,
    correlation_id: str | None,
) -> list[AuditEvent]:
    """Archive the given stored rows (about to be replaced); one audit event per replacement.

    ``olds`` are full ``lab_results`` rows of other files; ``status_by_id`` the new status of
    each replacing result. Shared by the per-id lookup above and PostgreSQL's staged join.
    """
    history = [
        {
            "result_id": old["result_id"], "file_sha256": old["file_sha256"],
            "replaced_by_file": digest, "previous_status": old["status"],
            "new_status": status_by_id[old["result_id"]],
            "previous": {k: _json(v) for k, v in old.items()}, "replaced_at": now,
            "correlation_id": correlation_id,
        }
        for old in olds
    ]  # fmt: skip
    if not history:
        return []
    conn.execute(insert(lab_results_history), history)
    for earlier, replaced in Counter(h["file_sha256"] for h in history).items():
        conn.execute(
            update(lab_files)
            .where(lab_files.c.file_sha256 == earlier)
            .values(results=lab_files.c.results - replaced)
        )
    return [
        AuditEvent(
            principal=principal, action="lab.result.replaced", status=AuditStatus.SUCCESS,
            resource_type="lab_result", resource_id=h["result_id"],
            correlation_id=correlation_id, data_classification=DataClassification.PHI,
            details={"file_sha256": digest, "replaced_file_sha256": h["file_sha256"],
                     "previous_status": h["previous_status"], "new_status": h["new_status"]},
        )
        for h in history
    ]  # fmt: skip


def _json(value: Any) -> Any:
    """A stored value in a JSON-safe form that keeps it exact (numbers as text)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value
