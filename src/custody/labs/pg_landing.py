"""Landing a batch of lab results on PostgreSQL with binary COPY.

Rows go straight from the parsed results into ``COPY ... (FORMAT BINARY)`` (no dict per row,
no text formatting of numbers and times); the stored rows they replace are found with one
``= ANY(array)`` query instead of a query per thousand ids; new results are copied straight into
the table and only a batch that replaces something takes the staged ``INSERT ... ON CONFLICT``.
The server's work (index maintenance) then dominates.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
from sqlalchemy import Connection, text

from custody.audit import AuditEvent
from custody.labs.history import history_events
from custody.labs.model import LabResult
from custody.labs.tables import lab_results

NAMES = [c.name for c in lab_results.c]
# Binary COPY needs each column's type: text unless listed here.
_TYPES = {
    "value_numeric": "numeric",
    "reference_low": "numeric",
    "reference_high": "numeric",
    "collected_at": "timestamptz",
    "resulted_at": "timestamptz",
    "ingested_at": "timestamptz",
}
_COPY_TYPES = [_TYPES.get(n, "text") for n in NAMES]
_STAGE = "CREATE TEMP TABLE IF NOT EXISTS custody_lab_upsert (LIKE lab_results) ON COMMIT DROP"
_LAST_PER_ID = (
    "SELECT DISTINCT ON (result_id) {cols} FROM custody_lab_upsert ORDER BY result_id, ctid DESC"
)


def row(result: LabResult, digest: str, now: dt.datetime) -> tuple[Any, ...]:
    """One ``lab_results`` row, in column order, straight from the result's attributes."""
    r, s = result, result.source
    return (
        r.result_id, r.patient_ref, r.order_ref, r.code, r.code_system, r.loinc_code, r.display,
        r.value_numeric, r.comparator, r.value_text, r.unit, r.reference_low, r.reference_high,
        r.reference_text, r.abnormal_flag, r.status.value, r.collected_at, r.resulted_at,
        r.performing_lab, r.technician, r.sender, r.time_zone_source, s.file, s.message_id,
        s.position, digest, now,
    )  # fmt: skip


def land(
    conn: Connection,
    results: list[LabResult],
    digest: str,
    now: dt.datetime,
    *,
    principal: str,
    correlation_id: str | None,
) -> list[AuditEvent]:
    """Archive what the results replace, write them; return one audit event per replacement.

    One query finds the stored rows with these ids. None (the usual case: new results, each
    once) and the rows are copied straight into ``lab_results``; otherwise they are staged and
    upserted. A file may carry the same result twice (a correction in the same batch): the last
    wins, and a row this same file landed earlier (a previous batch) is not a replacement of
    another file's.
    """
    ids = [r.result_id for r in results]
    query = text(f"SELECT {', '.join(NAMES)} FROM lab_results WHERE result_id = ANY(:ids)")
    stored = [dict(m) for m in conn.execute(query.columns(*lab_results.c), {"ids": ids}).mappings()]
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    if not stored and len(set(ids)) == len(ids):  # all new, each once: straight in
        _copy(cursor, "lab_results", results, digest, now)
        return []
    events: list[AuditEvent] = []
    replaced = [old for old in stored if old["file_sha256"] != digest]
    if replaced:
        status_by_id = {r.result_id: r.status.value for r in results}  # the last one wins
        events = history_events(
            conn, replaced, status_by_id, digest, now, principal=principal,
            correlation_id=correlation_id,
        )  # fmt: skip
    cursor.execute(_STAGE)
    cursor.execute("TRUNCATE custody_lab_upsert")
    _copy(cursor, "custody_lab_upsert", results, digest, now)
    updates = ", ".join(f"{n} = EXCLUDED.{n}" for n in NAMES[1:])
    cols = ", ".join(NAMES)
    cursor.execute(
        f"INSERT INTO lab_results ({cols}) {_LAST_PER_ID.format(cols=cols)} "
        f"ON CONFLICT (result_id) DO UPDATE SET {updates}"
    )
    return events


def _copy(
    cursor: psycopg.Cursor[Any],
    table: str,
    results: list[LabResult],
    digest: str,
    now: dt.datetime,
) -> None:
    with cursor.copy(f"COPY {table} ({', '.join(NAMES)}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(_COPY_TYPES)
        write = copy.write_row
        for result in results:
            write(row(result, digest, now))
