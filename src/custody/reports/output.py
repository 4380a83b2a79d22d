"""Store a rendered report in the object store and record it in ``compliance_reports``.

The objects (CSV and HTML) hold PHI and stay in the store; the row and what reaches Prefect hold
only ids, counts, sizes, keys and checksums, which is what an auditor needs to fetch a report
and prove it is the one that was generated.
"""

from __future__ import annotations

import contextlib
import io
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy import Engine, insert

from custody.db import utc_now
from custody.reports.model import Report, ReportTable
from custody.reports.render import write_csv, write_html
from custody.reports.tables import compliance_reports
from custody.storage import ObjectInfo, ObjectStore, join_key, sha256_hex


@dataclass(frozen=True)
class SavedReport:
    """Where one report went and how big it is (PHI-free: safe for Prefect and audit rows)."""

    report_id: str
    report_type: str
    records: int
    csv_key: str
    csv_sha256: str
    csv_bytes: int
    html_key: str
    html_sha256: str
    html_bytes: int
    # The stored versions, so that discard_report deletes exactly what this report put.
    objects: tuple[ObjectInfo, ...] = field(default=(), repr=False)


def new_report_id(generated_at: datetime) -> str:
    """Sortable by time, unique: ``rYYYYMMDDHHMMSS-<8 hex>``."""
    return f"r{generated_at:%Y%m%d%H%M%S}-{uuid.uuid4().hex[:8]}"


def save_report(
    report: Report,
    store: ObjectStore,
    prefix: str,
    report_id: str,
) -> SavedReport:
    """Render CSV and HTML, upload both with their SHA-256, return the reference."""
    counter = _RowCounter()
    counted = replace(report, tables=[counter.wrap(t) for t in report.tables])
    csv_buffer = io.BytesIO()
    write_csv(counted, csv_buffer)
    html_buffer = io.BytesIO()
    write_html(report, html_buffer)
    base = [prefix, report.type.value, f"{report.period.start:%Y}", f"{report.period.start:%m}"]
    saved = {}
    stored: list[ObjectInfo] = []
    try:
        for kind, buffer in (("csv", csv_buffer), ("html", html_buffer)):
            data = buffer.getvalue()
            key = join_key(*[p for p in base if p], f"{report_id}.{kind}")
            stored.append(store.put(key, data))
            saved[kind] = (key, sha256_hex(data), len(data))
    except Exception:
        # A CSV stored without its HTML would be PHI that no report row points to: take it back.
        _delete_quietly(store, stored)
        raise
    return SavedReport(
        report_id=report_id, report_type=report.type.value, records=counter.rows,
        csv_key=saved["csv"][0], csv_sha256=saved["csv"][1], csv_bytes=saved["csv"][2],
        html_key=saved["html"][0], html_sha256=saved["html"][1], html_bytes=saved["html"][2],
        objects=tuple(stored),
    )  # fmt: skip


def discard_report(store: ObjectStore, saved: SavedReport) -> None:
    """Take back a stored report that could not be recorded.

    Objects that no ``compliance_reports`` row points to are PHI nobody would know to look
    for, retain or delete. Best effort: when the store is down too, the original error is the
    one to report.
    """
    _delete_quietly(store, saved.objects)


def _delete_quietly(store: ObjectStore, objects: Iterable[ObjectInfo]) -> None:
    for info in objects:
        with contextlib.suppress(Exception):
            store.delete(info.key, info.version_id)


def record_report(
    engine: Engine,
    saved: SavedReport,
    report: Report,
    regulation: str,
    correlation_id: str | None,
) -> None:
    """The ``compliance_reports`` row for a stored report."""
    with engine.begin() as conn:
        conn.execute(
            insert(compliance_reports).values(
                report_id=saved.report_id, regulation=regulation, report_type=saved.report_type,
                period_start=report.period.start, period_end=report.period.end,
                status="completed", record_count=saved.records,
                csv_key=saved.csv_key, csv_sha256=saved.csv_sha256, csv_bytes=saved.csv_bytes,
                html_key=saved.html_key, html_sha256=saved.html_sha256,
                html_bytes=saved.html_bytes, generated_at=report.generated_at,
                correlation_id=correlation_id,
            )
        )  # fmt: skip


def record_failure(
    engine: Engine,
    report_id: str,
    report_type: str,
    regulation: str,
    period: tuple[datetime, datetime],
    error: str,
    correlation_id: str | None,
) -> None:
    """A failed report type leaves a row too, so the gap is visible to whoever audits the run."""
    with engine.begin() as conn:
        conn.execute(
            insert(compliance_reports).values(
                report_id=report_id, regulation=regulation, report_type=report_type,
                period_start=period[0], period_end=period[1], status="failed",
                error=error[:500], generated_at=utc_now(), correlation_id=correlation_id,
            )
        )  # fmt: skip


class _RowCounter:
    """Counts the rows of every table as the CSV writer streams them."""

    def __init__(self) -> None:
        self.rows = 0

    def wrap(self, table: ReportTable) -> ReportTable:
        source = table.rows

        def rows() -> Iterator[tuple[object, ...]]:
            for row in source():
                self.rows += 1
                yield row

        counted: Callable[[], Iterable[tuple[object, ...]]] = rows
        return replace(table, rows=counted)
