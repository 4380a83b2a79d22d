"""Planted report data: a month of audit events and lab criticals with known patterns to find.

The period is October 2026 (UTC), with a 30-day baseline (September) before it. The hospital is
in America/New_York. Working-hours reads land at 13:00-18:59 UTC (09-14 EDT, 08-13 EST), so they
are inside 07:00-19:00 in both UTC and New York. Planted, in the period unless said otherwise:

* ``clin07`` reads 4 times at 03:30 UTC (23:30 the evening before in New York): the only
  after-hours accessor in New York time;
* ``clin05`` reads once at 21:30 UTC (17:30 EDT): after hours in UTC only;
* ``clin02`` breaks the glass once (another break-the-glass in September must not show);
* ``clin03`` is denied twice;
* ``clin10`` reads 10 times a day against 0.5 a day in September: 20x, flagged;
* ``newstarter`` reads 60 times with no baseline: never flagged;
* ``clin04`` reads at 2026-11-02 11:30 UTC, 06:30 EST after DST ends (07:30 if DST were
  wrongly kept): outside the period, for a DST-spanning report;
* disclosures: 3 for MRN-D-0001 within six years of the period end, plus one 7 years back, one
  after the period, and 2 for MRN-D-0002, none of which may show for request DR-1;
* critical results: 5 on time (5, 10, 20, 45 and exactly 60 min), 2 late (75, 200 min),
  1 unacknowledged, plus one detected in September;
* pipeline events: migration 3 success + 1 failed, archival 2 success, ingestion 4 success +
  1 partial_failure, job 1 started + 1 success; one in September and a non-pipeline event.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import Decimal

from sqlalchemy import Engine, insert, text

from custody.audit import AuditEvent, AuditLog, AuditStatus, DataClassification, Keyring
from custody.audit.partitions import ensure_partitions
from custody.labs.tables import critical_results
from custody.reports.model import Period

UTC = dt.UTC
PERIOD = Period(dt.datetime(2026, 10, 1, tzinfo=UTC), dt.datetime(2026, 11, 1, tzinfo=UTC))
BASELINE_START = dt.datetime(2026, 9, 1, tzinfo=UTC)
HOSPITAL_TZ = "America/New_York"

DISCLOSURE_REQUESTS_DDL = """
CREATE TABLE IF NOT EXISTS disclosure_requests (
    request_id text PRIMARY KEY,
    patient_ref text NOT NULL,
    requested_by text,
    requested_at {ts}
)
"""


@dataclass
class Planted:
    """What was planted, for the assertions."""

    period_accesses: int = 0
    period_patients: set[str] = field(default_factory=set)
    period_events_by_month: dict[str, int] = field(default_factory=dict)
    emergency_seq: int = 0
    total_events: int = 0
    pipeline_ids: list[str] = field(default_factory=list)


def _at(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def _days(start: dt.datetime, end: dt.datetime) -> list[dt.date]:
    n = (end - start).days
    return [(start + dt.timedelta(days=i)).date() for i in range(n)]


def _access(
    principal: str,
    when: dt.datetime,
    patient: str,
    action: str = "phi.access.read",
    status: AuditStatus = AuditStatus.SUCCESS,
    reason: str = "treatment",
) -> AuditEvent:
    return AuditEvent(
        occurred_at=when,
        principal=principal,
        action=action,
        status=status,
        resource_type="patient",
        resource_id=patient,
        regulation="HIPAA",
        data_classification=DataClassification.PHI,
        details={"reason": reason, "workstation": f"ws-{principal[-2:]}"},
    )


def _disclosure(patient: str, when: dt.datetime, recipient: str, n: int) -> AuditEvent:
    return AuditEvent(
        occurred_at=when,
        principal="him01",
        action="phi.disclosure.made",
        resource_type="patient",
        resource_id=patient,
        regulation="HIPAA",
        data_classification=DataClassification.PHI,
        details={"recipient": recipient, "purpose": "public_health", "description": f"d{n}"},
    )


def _pipeline(action: str, status: AuditStatus, when: dt.datetime, n: int) -> AuditEvent:
    return AuditEvent(
        occurred_at=when,
        principal="svc-pipelines",
        action=action,
        status=status,
        resource_type="job",
        resource_id=f"job-{n}",
        correlation_id=f"run-{n}",
    )


def _critical(result_id: str, when: dt.datetime, action: str) -> AuditEvent:
    return AuditEvent(
        occurred_at=when,
        principal="lab-feed" if action.endswith("detected") else "rn01",
        action=action,
        resource_type="lab_result",
        resource_id=result_id,
        regulation="CLIA",
        data_classification=DataClassification.PHI,
    )


def plant(engine: Engine, keyring: Keyring) -> Planted:
    """Write the planted events and criticals; returns the expected figures."""
    if engine.dialect.name == "postgresql":
        # Partitions for August..December, before any row could land in the default partition.
        ensure_partitions(engine, dt.date(2026, 8, 1), 5)
    ts = "timestamptz" if engine.dialect.name == "postgresql" else "text"
    with engine.begin() as connection:
        connection.execute(text(DISCLOSURE_REQUESTS_DDL.format(ts=ts)))
        connection.execute(
            text(
                "INSERT INTO disclosure_requests (request_id, patient_ref, requested_by)"
                " VALUES ('DR-1', 'MRN-D-0001', 'him01'), ('DR-2', 'MRN-D-0002', 'him01')"
            )
        )

    events: list[AuditEvent] = []
    period_days = _days(PERIOD.start, PERIOD.end)
    baseline_days = _days(BASELINE_START, PERIOD.start)
    for i, day in enumerate(baseline_days + period_days):
        for p in range(1, 10):  # clin01..clin09: one working-hours read a day
            events.append(
                _access(f"clin{p:02d}", _at(day, 13 + p % 6, p), f"MRN{(i + p) % 40:04d}")
            )
    for i, day in enumerate(baseline_days[::2]):  # clin10: 15 reads in the baseline
        events.append(_access("clin10", _at(day, 14), f"MRN{i % 40:04d}"))
    for day in period_days:  # ... and 10 a day in the period: 20x
        for k in range(10):
            events.append(_access("clin10", _at(day, 13 + k // 2, k * 5), f"MRN{k:04d}"))
    for k in range(60):  # newstarter: busy, but no baseline
        day = period_days[k % len(period_days)]
        events.append(_access("newstarter", _at(day, 15, k % 60), f"MRN{(k + 3) % 40:04d}"))
    for d in (5, 10, 15, 20):
        events.append(_access("clin07", _at(dt.date(2026, 10, d), 3, 30), "MRN0007"))
    events.append(_access("clin07", _at(dt.date(2026, 9, 20), 23, 30), "MRN0007"))  # baseline
    events.append(_access("clin05", _at(dt.date(2026, 10, 12), 21, 30), "MRN0005"))
    emergency = _access(
        "clin02",
        _at(dt.date(2026, 10, 14), 16, 5),
        "MRN0099",
        action="phi.access.emergency",
        reason="break_the_glass",
    )
    events.append(emergency)
    events.append(
        _access(
            "clin02",
            _at(dt.date(2026, 9, 14), 16, 5),
            "MRN0098",
            action="phi.access.emergency",
            reason="break_the_glass",
        )
    )
    for d in (8, 22):
        events.append(
            _access(
                "clin03",
                _at(dt.date(2026, 10, d), 15, 45),
                "MRN0066",
                status=AuditStatus.DENIED,
                reason="not_on_care_team",
            )
        )
    events.append(_access("clin04", dt.datetime(2026, 11, 2, 11, 30, tzinfo=UTC), "MRN0004"))

    # Disclosures.
    events += [
        _disclosure("MRN-D-0001", dt.datetime(2019, 6, 1, tzinfo=UTC), "old-recipient", 0),
        _disclosure("MRN-D-0001", dt.datetime(2021, 3, 1, 10, tzinfo=UTC), "State registry", 1),
        _disclosure("MRN-D-0001", dt.datetime(2024, 5, 10, 9, tzinfo=UTC), "County health", 2),
        _disclosure("MRN-D-0001", dt.datetime(2026, 10, 15, 12, tzinfo=UTC), "FDA MedWatch", 3),
        _disclosure("MRN-D-0001", dt.datetime(2026, 11, 10, 12, tzinfo=UTC), "too-late", 4),
        _disclosure("MRN-D-0002", dt.datetime(2025, 1, 1, tzinfo=UTC), "other-patient", 5),
        _disclosure("MRN-D-0002", dt.datetime(2026, 10, 2, tzinfo=UTC), "other-patient", 6),
    ]

    # Pipeline events.
    s, f = AuditStatus.SUCCESS, AuditStatus.FAILED
    pipeline = [
        ("data.migration.chunk", s),
        ("data.migration.chunk", s),
        ("data.migration.chunk", s),
        ("data.migration.chunk", f),
        ("data.archival.run", s),
        ("data.archival.run", s),
        ("lab.ingestion.file", s),
        ("lab.ingestion.file", s),
        ("lab.ingestion.file", s),
        ("lab.ingestion.file", s),
        ("lab.ingestion.file", AuditStatus.PARTIAL_FAILURE),
        ("job.started", AuditStatus.STARTED),
        ("job.completed", s),
    ]
    for n, (action, status) in enumerate(pipeline):
        events.append(_pipeline(action, status, _at(dt.date(2026, 10, 3 + n), 2, 0), n))
    events.append(_pipeline("job.completed", s, _at(dt.date(2026, 9, 3), 2), 99))
    events.append(
        AuditEvent(
            occurred_at=_at(dt.date(2026, 10, 3), 4),
            principal="svc-reports",
            action="report.generated",
            resource_type="report",
        )
    )

    # Critical results: a detected event each (the row's audit_seq) and an acknowledged event at
    # the row's acknowledgement, as the ingest and the acknowledging application write them.
    detected = dt.datetime(2026, 10, 6, 8, tzinfo=UTC)
    criticals = [
        ("R-ok-5", 5),
        ("R-ok-10", 10),
        ("R-ok-20", 20),
        ("R-ok-45", 45),
        ("R-ok-60", 60),
        ("R-late-75", 75),
        ("R-late-200", 200),
        ("R-unack", None),
    ]
    september = dt.datetime(2026, 9, 20, tzinfo=UTC)
    schedule = [
        (result_id, detected + dt.timedelta(days=n), minutes)
        for n, (result_id, minutes) in enumerate(criticals)
    ] + [("R-september", september, 500)]
    detections: dict[str, AuditEvent] = {}
    for result_id, at, minutes in schedule:
        detections[result_id] = _critical(result_id, at, "lab.critical_result.detected")
        events.append(detections[result_id])
        if minutes is not None:
            ack_at = at + dt.timedelta(minutes=minutes)
            events.append(_critical(result_id, ack_at, "lab.critical_result.acknowledged"))

    # Events go in in time order, as a live system would write them.
    events.sort(key=lambda e: e.occurred_at)
    result = AuditLog(engine, keyring).log_batch(events)

    planted = Planted(total_events=result.count)
    for offset, event in enumerate(events):
        if PERIOD.start <= event.occurred_at < PERIOD.end:
            if event.action.startswith("phi.access."):
                planted.period_accesses += 1
                assert event.resource_id is not None
                planted.period_patients.add(event.resource_id)
            month = f"{event.occurred_at:%Y-%m}"
            planted.period_events_by_month[month] = planted.period_events_by_month.get(month, 0) + 1
        if event is emergency:
            planted.emergency_seq = result.first_seq + offset

    seqs = {id(event): result.first_seq + offset for offset, event in enumerate(events)}
    base = {"rule_set": "default", "loinc_code": "2823-3", "direction": "high"}
    rows = [
        {
            **base,
            "result_id": result_id,
            "analyte": "Potassium",
            "limit_value": Decimal("6.2"),
            "audit_seq": seqs[id(detections[result_id])],
            "detected_at": at,
            "acknowledged_at": None if minutes is None else at + dt.timedelta(minutes=minutes),
            "acknowledged_by": None if minutes is None else "rn01",
        }
        for result_id, at, minutes in schedule
    ]
    with engine.begin() as connection:
        connection.execute(insert(critical_results), rows)
    return planted
