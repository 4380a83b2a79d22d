"""Compliance report generation over a large audit log vs the bare SQL of the same queries.

The audit log is filled with synthetic PHI-access events (the demo's generator: mostly
working-hours reads, some after-hours, break-the-glass and denied) through ``AuditLog``, so the
chain is real, in monthly partitions. Then, per report type:

* baseline: the report's SQL alone, i.e. its summary and chart aggregates and every table's
  rows streamed to the end, nothing rendered;
* ours: ``build_report`` + ``save_report`` (the same queries, plus CSV and HTML rendering, each
  table streamed twice, uploaded with SHA-256 to a local object store) + the report row.

The integrity report is timed on its own: its core is the chain walk (hash and HMAC of every
row), for which there is no SQL equivalent.

    python bench/report.py --events 10000000 [--batch 20000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

from _common import peak_rss_mb, scratch_database
from sqlalchemy import text

from custody.audit import AuditLog, Keyring
from custody.audit.partitions import ensure_partitions
from custody.db import get_engine
from custody.reports.model import Period, ReportType
from custody.reports.output import new_report_id, record_report, save_report
from custody.reports.queries import build_report
from custody.storage import open_store
from custody.store import upgrade
from custody.synth.ehr import access_events

END = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
PERIOD = Period(END - dt.timedelta(days=30), END)
TIMED = (ReportType.PHI_ACCESS, ReportType.PIPELINE_ACTIVITY, ReportType.CRITICAL_TIMELINESS)


def fill(engine: object, keyring: Keyring, events: int, batch: int) -> float:
    """Append ``events`` access events in batches; returns seconds (not part of the ratio)."""
    log = AuditLog(engine, keyring)  # type: ignore[arg-type]
    started = time.perf_counter()
    generator = access_events(events, patients_n=50_000, principals=400, seed=3, end=END)
    pending = []
    for event in generator:
        pending.append(event)
        if len(pending) == batch:
            log.log_batch(pending)
            pending = []
    if pending:
        log.log_batch(pending)
    return time.perf_counter() - started


def bare_sql(engine: object, report_type: ReportType, keyring: Keyring) -> tuple[float, int]:
    """The report's queries alone: aggregates, then every table row fetched and dropped."""
    started = time.perf_counter()
    report = build_report(engine, report_type, PERIOD, keyring=keyring)  # type: ignore[arg-type]
    rows = sum(1 for table in report.tables for _ in table.rows())
    return time.perf_counter() - started, rows


def ours(engine: object, report_type: ReportType, keyring: Keyring, store_dir: Path) -> float:
    """The whole report: queries, CSV and HTML, upload with checksums, the report row."""
    started = time.perf_counter()
    report = build_report(engine, report_type, PERIOD, keyring=keyring)  # type: ignore[arg-type]
    report_id = new_report_id(report.generated_at)
    saved = save_report(report, open_store(f"file://{store_dir}"), "reports", report_id)
    record_report(engine, saved, report, "HIPAA", None)  # type: ignore[arg-type]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=20_000)
    args = parser.parse_args()
    keyring = Keyring("bench", {"bench": b"b" * 32})
    figures: dict[str, object] = {"events": args.events}
    with scratch_database() as url, tempfile.TemporaryDirectory() as tmp:
        engine = get_engine(url)
        upgrade(engine)
        ensure_partitions(engine, (END - dt.timedelta(days=62)).date(), 4)
        figures["fill_seconds"] = round(fill(engine, keyring, args.events, args.batch), 1)
        with engine.begin() as conn:
            conn.execute(text("ANALYZE audit_log"))
        total_ours = total_sql = 0.0
        for report_type in TIMED:
            sql_s, rows = bare_sql(engine, report_type, keyring)
            ours_s = ours(engine, report_type, keyring, Path(tmp))
            total_ours += ours_s
            total_sql += sql_s
            figures[report_type.value] = {
                "rows": rows, "sql_seconds": round(sql_s, 2), "ours_seconds": round(ours_s, 2),
                "ratio": round(ours_s / sql_s, 2),
            }  # fmt: skip
            print(report_type.value, figures[report_type.value], flush=True)
        integrity = ours(engine, ReportType.AUDIT_INTEGRITY, keyring, Path(tmp))
        figures["audit_integrity_seconds"] = round(integrity, 1)
        figures["ours_seconds"] = round(total_ours, 2)
        figures["sql_seconds"] = round(total_sql, 2)
        figures["ratio"] = round(total_ours / total_sql, 2)
    figures["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
