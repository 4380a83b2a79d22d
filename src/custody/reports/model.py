"""What a report is, independent of how it is queried or rendered.

A query module turns a period into a ``Report``: named tables of rows (streamed, so a report over
millions of audit rows never sits in memory whole) plus small chart series. Renderers turn a
``Report`` into CSV and HTML. Reports hold PHI (patient references, principals): they are
stored in the object store, never handed to Prefect; only their ids, counts, sizes and
checksums are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum


class ReportType(StrEnum):
    """The reports an auditor asks for (HIPAA 164.312(b), 164.528; CLIA 493.1291)."""

    PHI_ACCESS = "phi_access"
    DISCLOSURES = "disclosures"
    CRITICAL_TIMELINESS = "critical_timeliness"
    PIPELINE_ACTIVITY = "pipeline_activity"
    AUDIT_INTEGRITY = "audit_integrity"


@dataclass(frozen=True)
class Period:
    """``[start, end)`` in UTC (aware datetimes)."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("period bounds must be time zone aware")
        if self.end <= self.start:
            raise ValueError("the period must end after it starts")


@dataclass
class ReportTable:
    """One table of a report, its rows streamed on demand.

    ``rows`` is a callable so that the rows can be streamed more than once (into CSV, then into
    HTML) without holding them all.
    """

    name: str
    title: str
    columns: list[str]
    rows: Callable[[], Iterable[tuple[object, ...]]]
    note: str = ""


@dataclass(frozen=True)
class Chart:
    """A small series to draw: bars of (label, value), in order."""

    title: str
    kind: str  # "bar" (vertical bars, e.g. hour of day) or "hbar" (horizontal, e.g. top principals)
    points: list[tuple[str, float]]
    x_label: str = ""
    y_label: str = ""


@dataclass
class Report:
    """A report for one type and period, ready to render."""

    type: ReportType
    title: str
    period: Period
    generated_at: datetime
    summary: dict[str, object] = field(default_factory=dict)  # headline figures, PHI-free
    tables: list[ReportTable] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)  # e.g. "row seq 1234 fails its HMAC"
