"""Report task: query, render, store and record one report type. Only counts cross Prefect."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from custody.audit import AuditEvent, AuditStatus, DataClassification
from custody.reports.model import Period, ReportType
from custody.reports.output import (
    discard_report,
    new_report_id,
    record_failure,
    record_report,
    save_report,
)
from custody.storage import open_store
from tasks.runtime import runtime


@task(name="generate-report", cache_policy=NO_CACHE, persist_result=False)
def generate_report(
    report_type: ReportType,
    regulation: str,
    start: datetime,
    end: datetime,
    *,
    request_id: str | None,
    timezone: str,
    required_minutes: int,
    destination: str | None,
    prefix: str,
) -> dict[str, Any]:
    """One report type, start to end; a failure is recorded and returned, never raised.

    Returning the failure (type name only: an exception's text may quote data) lets the flow go
    on with the other report types, as an auditor expects.
    """
    from custody.reports.queries import build_report

    rt = runtime()
    started = time.monotonic()
    report_id = new_report_id(datetime.now().astimezone())
    try:
        store = open_store(destination)  # a store that cannot be opened stops us before the query
        report = build_report(
            rt.store, report_type, Period(start, end), keyring=rt.audit.keyring,
            request_id=request_id, timezone=timezone, required_minutes=required_minutes,
        )  # fmt: skip
        saved = save_report(report, store, prefix, report_id)
        try:
            record_report(rt.store, saved, report, regulation, rt.correlation_id)
        except Exception:
            discard_report(store, saved)  # stored but unrecorded: nobody would find it
            raise
    except Exception as exc:  # every failure is recorded, then reported
        error = type(exc).__name__
        record_failure(
            rt.store, report_id, report_type.value, regulation, (start, end), error,
            rt.correlation_id,
        )  # fmt: skip
        _audit(report_type, report_id, AuditStatus.FAILED, {"error": error})
        return {"report_id": report_id, "report_type": report_type.value, "status": "failed",
                "error": error, "seconds": round(time.monotonic() - started, 2)}  # fmt: skip
    outcome = {
        "report_id": report_id, "report_type": report_type.value, "status": "completed",
        "records": saved.records, "csv_bytes": saved.csv_bytes, "html_bytes": saved.html_bytes,
        "csv_sha256": saved.csv_sha256, "html_sha256": saved.html_sha256,
        "csv_key": saved.csv_key, "html_key": saved.html_key,
        "seconds": round(time.monotonic() - started, 2),
    }  # fmt: skip
    _audit(report_type, report_id, AuditStatus.SUCCESS, outcome)
    return outcome


def _audit(
    report_type: ReportType, report_id: str, status: AuditStatus, details: dict[str, Any]
) -> None:
    rt = runtime()
    verb = "type_completed" if status is AuditStatus.SUCCESS else "type_failed"
    rt.audit.log(
        AuditEvent(
            principal=rt.settings.principal, action=f"compliance.report.generation.{verb}",
            status=status, resource_type="compliance_report", resource_id=report_id,
            correlation_id=rt.correlation_id, data_classification=DataClassification.INTERNAL,
            details={"report_type": report_type.value, **details},
        )
    )  # fmt: skip
