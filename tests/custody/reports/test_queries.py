"""Report queries find exactly the planted patterns, on PostgreSQL and on SQLite."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import Engine

from custody.audit import Keyring
from custody.reports.model import Period, Report, ReportTable, ReportType
from custody.reports.queries import (
    _offset_segments,
    build_report,
    critical_timeliness_report,
    disclosures_report,
    phi_access_report,
    pipeline_activity_report,
    principal_activity_query,
)
from tests.support.audit import tamper
from tests.support.reports import BASELINE_START, HOSPITAL_TZ, PERIOD, Planted, plant

UTC = dt.UTC


@pytest.fixture
def planted(store: Engine, keyring: Keyring) -> Planted:
    return plant(store, keyring)


def table(report: Report, name: str) -> ReportTable:
    return next(t for t in report.tables if t.name == name)


def rows(report: Report, name: str) -> list[tuple[Any, ...]]:
    return list(table(report, name).rows())


def test_phi_access_finds_the_planted_patterns(store: Engine, planted: Planted) -> None:
    report = phi_access_report(store, PERIOD, timezone=HOSPITAL_TZ)

    assert report.summary == {
        "accesses": planted.period_accesses,
        "principals": 11,
        "distinct_patients": len(planted.period_patients),
        "after_hours": 4,
        "emergency": 1,
        "failed": 2,
        "unusual_volume": 1,
    }
    by_principal = rows(report, "by_principal")
    assert [r[0] for r in by_principal[:2]] == ["clin10", "newstarter"]
    flagged = {r[0]: r for r in by_principal if r[6] is True}
    assert list(flagged) == ["clin10"]
    assert flagged["clin10"][1:6] == (310, 10, 0, 0, 0)
    assert {r[0]: r[3] for r in by_principal if r[3]} == {"clin07": 4}
    assert {r[0]: r[4] for r in by_principal if r[4]} == {"clin02": 1}
    assert {r[0]: r[5] for r in by_principal if r[5]} == {"clin03": 2}
    assert all(isinstance(v, int) for r in by_principal for v in r[1:6])

    after = rows(report, "after_hours")
    assert [(r[1], r[2], r[3], r[4]) for r in after] == [
        ("clin07", "phi.access.read", "MRN0007", "ws-07")
    ] * 4
    assert [r[0] for r in after] == [
        dt.datetime(2026, 10, d, 3, 30, tzinfo=UTC) for d in (5, 10, 15, 20)
    ]
    assert rows(report, "emergency") == [
        (dt.datetime(2026, 10, 14, 16, 5, tzinfo=UTC), "clin02", "MRN0099", "break_the_glass")
    ]
    failed = rows(report, "failed")
    assert [(r[1], r[3], r[4]) for r in failed] == [("clin03", "MRN0066", "not_on_care_team")] * 2
    assert rows(report, "unusual_volume") == [("clin10", 10.0, 0.5, 20.0)]

    hours, weekdays, top = report.charts
    assert hours.kind == "bar" and len(hours.points) == 24
    assert dict(hours.points)["23"] == 4  # 03:30 UTC is 23:30 EDT
    assert sum(v for _, v in hours.points) == planted.period_accesses
    assert [label for label, _ in weekdays.points] == [
        "Mon",
        "Tue",
        "Wed",
        "Thu",
        "Fri",
        "Sat",
        "Sun",
    ]
    assert sum(v for _, v in weekdays.points) == planted.period_accesses
    assert top.kind == "hbar" and len(top.points) == 10
    assert top.points[0] == ("clin10", 310.0) and top.points[1] == ("newstarter", 60.0)

    # The summary is PHI-free: no patient refs, no principals.
    assert not any(isinstance(v, str) for v in report.summary.values())


def test_after_hours_is_judged_in_the_given_time_zone(store: Engine, planted: Planted) -> None:
    utc = phi_access_report(store, PERIOD, timezone="UTC")
    assert utc.summary["after_hours"] == 5  # clin05's 21:30 UTC is 17:30 in New York
    assert sorted({r[1] for r in rows(utc, "after_hours")}) == ["clin05", "clin07"]
    assert dict(utc.charts[0].points)["03"] == 4

    # A period across the end of DST (2026-11-01): 11:30 UTC on 2 November is 06:30 EST.
    across = Period(dt.datetime(2026, 10, 25, tzinfo=UTC), dt.datetime(2026, 11, 8, tzinfo=UTC))
    report = phi_access_report(store, across, timezone=HOSPITAL_TZ)
    assert [(r[0], r[1]) for r in rows(report, "after_hours")] == [
        (dt.datetime(2026, 11, 2, 11, 30, tzinfo=UTC), "clin04")
    ]
    assert report.summary["after_hours"] == 1

    with pytest.raises(ValueError, match="time zone"):
        phi_access_report(store, PERIOD, timezone="Mars/Olympus_Mons")


def test_rows_stream_again_for_each_rendering(store: Engine, planted: Planted) -> None:
    report = phi_access_report(store, PERIOD)
    first = table(report, "by_principal").rows
    assert list(first()) == list(first())
    rows_iter = iter(first())
    assert next(rows_iter)[0] == "clin10"  # a partly read stream is fine to abandon
    del rows_iter


def test_disclosures_for_one_request_within_six_years(store: Engine, planted: Planted) -> None:
    report = disclosures_report(store, PERIOD, request_id="DR-1")
    assert report.summary == {"request_id": "DR-1", "disclosures": 3}
    assert rows(report, "disclosures") == [
        (dt.datetime(2021, 3, 1, 10, tzinfo=UTC), "State registry", "d1", "public_health", "him01"),
        (dt.datetime(2024, 5, 10, 9, tzinfo=UTC), "County health", "d2", "public_health", "him01"),
        (dt.datetime(2026, 10, 15, 12, tzinfo=UTC), "FDA MedWatch", "d3", "public_health", "him01"),
    ]
    assert "MRN-D" not in repr(report.summary) + repr(report.findings)
    other = build_report(store, ReportType.DISCLOSURES, PERIOD, request_id="DR-2")
    assert [r[1] for r in rows(other, "disclosures")] == ["other-patient"] * 2

    with pytest.raises(ValueError, match="unknown disclosure request 'DR-404'"):
        disclosures_report(store, PERIOD, request_id="DR-404")


def test_critical_timeliness(store: Engine, planted: Planted) -> None:
    report = critical_timeliness_report(store, PERIOD, required_minutes=60)
    assert report.summary == {
        "required_minutes": 60,
        "total": 8,
        "acknowledged": 7,
        "on_time": 5,
        "late": 2,
        "unacknowledged": 1,
        "percent_on_time": 62.5,
        "audit_disagreements": 0,
    }
    assert report.findings == []  # every row agrees with its audit events
    notes = {r[0]: r for r in rows(report, "notifications")}
    assert list(notes) == [
        "R-ok-5",
        "R-ok-10",
        "R-ok-20",
        "R-ok-45",
        "R-ok-60",
        "R-late-75",
        "R-late-200",
        "R-unack",
    ]
    assert [r[0] for r in notes.values() if r[5] is False and r[4] is not None] == [
        "R-late-75",
        "R-late-200",
    ]
    assert notes["R-ok-60"][4:] == (60.0, True, "agrees")  # exactly on the limit is on time
    assert notes["R-late-200"][4:] == (200.0, False, "agrees")
    assert notes["R-unack"][3:] == (None, None, False, "agrees")
    (chart,) = report.charts
    assert chart.points == [
        ("0-15", 2.0),
        ("15-30", 1.0),
        ("30-60", 1.0),
        ("60-120", 2.0),
        ("120+", 1.0),
        ("unacknowledged", 1.0),
    ]
    stricter = critical_timeliness_report(store, PERIOD, required_minutes=15)
    assert (stricter.summary["on_time"], stricter.summary["late"]) == (2, 5)


def test_pipeline_activity(store: Engine, planted: Planted) -> None:
    report = pipeline_activity_report(store, PERIOD)
    assert report.summary == {
        "events": 13,
        "data.archival / success": 2,
        "data.migration / failed": 1,
        "data.migration / success": 3,
        "job / started": 1,
        "job / success": 1,
        "lab.ingestion / partial_failure": 1,
        "lab.ingestion / success": 4,
    }
    runs = rows(report, "runs")
    assert len(runs) == 13
    assert runs[0][1:] == ("data.migration.chunk", "success", "job-0", "run-0")
    assert {r[1] for r in runs} == {
        "data.migration.chunk",
        "data.archival.run",
        "lab.ingestion.file",
        "job.started",
        "job.completed",
    }
    (chart,) = report.charts
    assert chart.kind == "hbar"
    assert chart.points == [
        ("lab.ingestion", 5.0),
        ("data.migration", 4.0),
        ("data.archival", 2.0),
        ("job", 2.0),
    ]


def test_audit_integrity_names_the_tampered_row(
    store: Engine, planted: Planted, keyring: Keyring
) -> None:
    two_months = Period(BASELINE_START, PERIOD.end)
    intact = build_report(store, "audit_integrity", two_months, keyring=keyring)
    assert intact.summary["ok"] is True
    assert intact.summary["events_checked"] == planted.total_events
    assert intact.summary["gaps"] == 0 and intact.findings == []
    by_month = dict(rows(intact, "by_month"))
    assert by_month["2026-10"] == planted.period_events_by_month["2026-10"]
    assert sorted(by_month) == ["2026-09", "2026-10"]
    assert [label for label, _ in intact.charts[0].points] == ["2026-09", "2026-10"]

    bad = planted.emergency_seq
    removed = bad + 10
    if store.dialect.name == "postgresql":
        edit = "jsonb_set(details, '{reason}', '\"treatment\"')"
    else:
        edit = "json_set(details, '$.reason', 'treatment')"
    tamper(store, f"UPDATE audit_log SET details = {edit} WHERE seq = {bad}")
    tamper(store, f"DELETE FROM audit_log WHERE seq = {removed}")

    broken = build_report(store, ReportType.AUDIT_INTEGRITY, PERIOD, keyring=keyring)
    assert broken.summary["ok"] is False
    assert broken.summary["first_bad_seq"] == bad
    assert broken.findings[0].startswith(f"audit row seq {bad} fails verification: hash mismatch")
    assert rows(broken, "gaps") == [(removed, removed, 1)]
    assert broken.findings[1] == f"audit seq {removed} missing among the period's rows"


def test_build_report_needs_its_options(sqlite_store: Engine) -> None:
    with pytest.raises(ValueError, match="request_id"):
        build_report(sqlite_store, ReportType.DISCLOSURES, PERIOD)
    with pytest.raises(ValueError, match="keyring"):
        build_report(sqlite_store, ReportType.AUDIT_INTEGRITY, PERIOD)
    with pytest.raises(ValueError):
        build_report(sqlite_store, "no_such_report", PERIOD)
    empty = build_report(sqlite_store, ReportType.CRITICAL_TIMELINESS, PERIOD)
    assert empty.summary["total"] == 0 and empty.summary["percent_on_time"] is None


def test_offset_segments_follow_dst() -> None:
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(HOSPITAL_TZ)
    start, end = dt.datetime(2026, 10, 1, tzinfo=UTC), dt.datetime(2026, 12, 1, tzinfo=UTC)
    assert _offset_segments(zone, start, end) == [
        (dt.datetime(2026, 11, 1, 6, tzinfo=UTC), -4 * 3600),
        (None, -5 * 3600),
    ]
    assert _offset_segments(ZoneInfo("UTC"), start, end) == [(None, 0)]


def test_phi_by_principal_query_prunes_partitions_and_uses_an_index(
    pg_store: Engine, keyring: Keyring
) -> None:
    plant(pg_store, keyring)
    query = principal_activity_query(pg_store, PERIOD, HOSPITAL_TZ)
    compiled = query.compile(pg_store)
    with pg_store.connect() as connection:
        connection.exec_driver_sql("ANALYZE audit_log")
        plan = "\n".join(
            r[0] for r in connection.exec_driver_sql("EXPLAIN " + compiled.string, compiled.params)
        )
        # Period plus baseline: September and October only; August, November, December and
        # the default partition (years-old disclosures) are pruned at plan time.
        assert "audit_log_y2026m09" in plan and "audit_log_y2026m10" in plan
        for pruned in ("audit_log_y2026m08", "audit_log_y2026m11", "audit_log_default"):
            assert pruned not in plan, plan
        # On tables this small a seq scan is cheapest; with it priced out, an index serves.
        connection.exec_driver_sql("SET enable_seqscan = off")
        plan = "\n".join(
            r[0] for r in connection.exec_driver_sql("EXPLAIN " + compiled.string, compiled.params)
        )
        connection.rollback()
    assert "Index" in plan and "audit_log_y2026m10_" in plan, plan
