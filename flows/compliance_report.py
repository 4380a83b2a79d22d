"""Compliance reports for a regulation and period: CSV + HTML with charts, stored and recorded."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from prefect import flow
from prefect.client.schemas.objects import State
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from custody.audit import AuditStatus
from custody.prefect_glue import current_flow_run_id, publish_location, publish_table
from custody.reports.model import ReportType
from custody.storage import check_destination, check_prefix, open_store
from flows.params import StoreName, check_timezone
from tasks.audit import publish_audit_artifacts, record_event
from tasks.outcomes import failed
from tasks.reports import generate_report

BY_REGULATION: dict[str, list[ReportType]] = {
    "HIPAA": [ReportType.PHI_ACCESS, ReportType.PIPELINE_ACTIVITY, ReportType.AUDIT_INTEGRITY],
    "CLIA": [ReportType.CRITICAL_TIMELINESS, ReportType.AUDIT_INTEGRITY],
}
NamedPeriod = Literal["custom", "last_month", "this_month", "last_7_days", "last_quarter"]


class ReportParams(BaseModel):
    """Parameters of ``compliance-report`` (they become the form in the Prefect UI)."""

    model_config = ConfigDict(title="Compliance report", extra="forbid")

    regulation: Literal["HIPAA", "CLIA"] = Field(
        default="HIPAA",
        title="Regulation",
        description="HIPAA: PHI access, pipeline activity, audit integrity. CLIA: critical-result "
        "timeliness, audit integrity.",
    )
    report_types: list[ReportType] = Field(
        default=[], title="Reports",
        description="Empty: the regulation's standard set. 'disclosures' needs a request id.",
    )  # fmt: skip
    period: NamedPeriod = Field(
        default="last_month",
        title="Period",
        description="Calendar periods in UTC; custom uses From and Until.",
    )
    period_start: date | None = Field(
        default=None,
        title="From (custom period, UTC)",
        description="First day of a custom period (inclusive).",
    )
    period_end: date | None = Field(
        default=None,
        title="Until (custom period, exclusive)",
        description="Day after the last day of a custom period.",
    )
    request_id: str | None = Field(
        default=None, title="Disclosure request id", pattern=r"^[A-Za-z0-9._:-]{1,100}$",
        description="Opaque id of a row in disclosure_requests; the patient is never named here.",
    )  # fmt: skip
    timezone: str = Field(
        default="UTC",
        title="Site time zone (for after-hours)",
        description="IANA name (e.g. America/Chicago): after-hours access and the charts by hour "
        "and weekday use the site's local time, DST included.",
    )
    required_minutes: int = Field(
        default=60,
        ge=1,
        le=24 * 60,
        title="Critical results: minutes allowed to acknowledge",
        description="A critical result acknowledged later than this counts as late.",
    )
    destination: StoreName = Field(
        default="default",
        title="Object store",
        description="A store configured on the worker: default is CUSTODY_OBJECT_STORE_URL, "
        "others are CUSTODY_OBJECT_STORES__<NAME>.",
    )
    prefix: str = Field(
        default="reports",
        title="Key prefix",
        max_length=200,
        description="Reports go under {prefix}/{type}/{yyyy}/{mm}/ in the object store.",
    )

    @field_validator("prefix")
    @classmethod
    def _plain_prefix(cls, value: str) -> str:
        return check_prefix(value)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return check_timezone(value)

    @model_validator(mode="after")
    def _consistent(self) -> ReportParams:
        if self.period == "custom":
            if self.period_start is None or self.period_end is None:
                raise ValueError("a custom period needs period_start and period_end")
            if self.period_end <= self.period_start:
                raise ValueError("period_end must be after period_start")
        if ReportType.DISCLOSURES in self.report_types and self.request_id is None:
            raise ValueError("the disclosures report needs a request_id")
        return self

    def bounds(self, today: date | None = None) -> tuple[datetime, datetime]:
        """The period as UTC instants ``[start, end)``."""
        today = today or datetime.now(UTC).date()
        first = today.replace(day=1)
        if self.period == "custom":
            assert self.period_start is not None and self.period_end is not None
            start, end = self.period_start, self.period_end
        elif self.period == "this_month":
            start, end = first, today + timedelta(days=1)
        elif self.period == "last_7_days":
            start, end = today - timedelta(days=7), today
        elif self.period == "last_quarter":
            quarter_start = first.replace(month=3 * ((first.month - 1) // 3) + 1)
            start = (quarter_start - timedelta(days=1)).replace(day=1)
            start = start.replace(month=3 * ((start.month - 1) // 3) + 1)
            end = quarter_start
        else:
            start, end = (first - timedelta(days=1)).replace(day=1), first
        return (datetime.combine(start, time(), UTC), datetime.combine(end, time(), UTC))

    def types(self) -> list[ReportType]:
        """The report types to generate."""
        return self.report_types or BY_REGULATION[self.regulation]


class ReportRun(BaseModel):
    """PHI-free outcome of a run: one entry per report type."""

    period_start: datetime
    period_end: datetime
    reports: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        """Report types that failed."""
        return [r["report_type"] for r in self.reports if r["status"] != "completed"]


@flow(name="compliance-report", description="Generate compliance reports for a period.")
def compliance_report(params: ReportParams) -> ReportRun | State[ReportRun]:
    """Each report type in turn (a failing one does not stop the others), then the artifacts.

    Args:
        params: Regulation, report types, period and where the reports are stored.
    """
    check_destination(params.destination)  # before any query: PHI goes only to a named store
    start, end = params.bounds()
    types = params.types()
    record_event(
        "compliance.report.generation.started", AuditStatus.STARTED, "compliance_report",
        params.regulation, details={"types": [t.value for t in types],
                                    "period": [start.isoformat(), end.isoformat()]},
    )  # fmt: skip
    run = ReportRun(period_start=start, period_end=end)
    for report_type in types:
        run.reports.append(
            generate_report(
                report_type, params.regulation, start, end, request_id=params.request_id,
                timezone=params.timezone, required_minutes=params.required_minutes,
                destination=params.destination, prefix=params.prefix,
            )
        )  # fmt: skip
    status = AuditStatus.SUCCESS if not run.failed else AuditStatus.PARTIAL_FAILURE
    record_event(
        "compliance.report.generation.completed", status, "compliance_report",
        params.regulation, details={"completed": len(types) - len(run.failed),
                                    "failed": run.failed},
    )  # fmt: skip
    _publish(run, params)
    publish_audit_artifacts(f"report-{current_flow_run_id() or 'local'}")
    if run.failed:
        return failed(f"report types failed: {', '.join(run.failed)}", run)
    return run


def _publish(run: ReportRun, params: ReportParams) -> None:
    key = current_flow_run_id() or "local"
    columns = ("report_id", "report_type", "status", "records", "csv_bytes", "html_bytes",
               "seconds", "error")  # fmt: skip
    publish_table(
        f"compliance-reports-{key}", [{c: r.get(c) for c in columns} for r in run.reports],
        f"{params.regulation} reports for {run.period_start:%Y-%m-%d} to "
        f"{run.period_end:%Y-%m-%d} (exclusive): ids, counts and sizes only.",
    )  # fmt: skip
    store = open_store(params.destination)
    for report in run.reports:
        if report["status"] == "completed":
            publish_location(
                f"report-{report['report_id']}", store.location(report["html_key"]),
                f"{report['report_type']} report (HTML; CSV beside it), "
                f"SHA-256 {report['html_sha256'][:16]}…", single_object=True,
            )  # fmt: skip
