"""The queries behind each compliance report, as SQLAlchemy Core that runs on PostgreSQL and SQLite.

Every report is built the same way: headline figures and chart series are small aggregates
computed by the database (GROUP BY, never a Python loop over audit rows), and the detail tables
are *streamed*: each ``ReportTable.rows`` opens its own server-side cursor when called, so a
report over millions of audit rows is rendered to CSV and then to HTML without ever being held
in memory, and without a second copy of PHI anywhere but the rendered report.

Patient references never enter function arguments: the HIPAA accounting of disclosures is asked
for by ``request_id`` and the patient is resolved inside the database, so nothing that identifies
a patient passes through Prefect parameters, logs or artifacts.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Engine,
    Float,
    Integer,
    Row,
    Text,
    and_,
    case,
    cast,
    extract,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.sql import Select

from custody.audit import Keyring, verify_chain
from custody.db import is_postgres, utc_now
from custody.labs.tables import critical_results
from custody.reports.model import Chart, Period, Report, ReportTable, ReportType
from custody.reports.tables import disclosure_requests
from custody.store.tables import audit_log

AnyRow = Row[*tuple[Any, ...]]
AnySelect = Select[*tuple[Any, ...]]
Rows = Callable[[], Iterator[tuple[object, ...]]]
Convert = Callable[[AnyRow], tuple[object, ...]]

YIELD_PER = 5_000
"""Rows fetched per round trip while streaming a table: bounded memory, few round trips."""

WORKDAY_START_HOUR = 7
WORKDAY_END_HOUR = 19
"""Accesses outside [07:00, 19:00) local time are "after hours" for HIPAA access review."""

BASELINE_DAYS = 30
UNUSUAL_RATIO = 10.0
UNUSUAL_MIN_ACCESSES = 50
"""A principal is flagged when their daily rate is >= 10x their own 30-day baseline rate and
they made at least 50 accesses in the period (so a quiet account reading 3 charts is not noise).
Principals with no baseline are never flagged: a new starter has nothing to compare against."""

DISCLOSURE_YEARS = 6
"""45 CFR 164.528(a): an individual may ask for disclosures made in the six years before."""

PHI_ACCESS_PATTERN = "phi.access.%"
EMERGENCY_ACTION = "phi.access.emergency"
DISCLOSURE_ACTION = "phi.disclosure.made"
PIPELINE_KINDS = ("data.migration", "data.archival", "lab.ingestion", "job")

TIMELINESS_BUCKETS = ((15, "0-15"), (30, "15-30"), (60, "30-60"), (120, "60-120"))
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

_US_PER_MINUTE = 60_000_000


# --------------------------------------------------------------------------------- shared helpers


def _streamed(engine: Engine, query: AnySelect, convert: Convert | None = None) -> Rows:
    """Rows of ``query`` on a fresh streaming connection each time they are asked for.

    A callable rather than a list so that renderers can stream the same table twice (CSV, then
    HTML) without any of it being held in memory.
    """

    def rows() -> Iterator[tuple[object, ...]]:
        options = {"stream_results": True, "yield_per": YIELD_PER}
        # The result is closed explicitly so that a consumer that stops early (GeneratorExit)
        # releases the server-side cursor before the connection goes back to the pool.
        with (
            engine.connect().execution_options(**options) as connection,
            connection.execute(query) as result,
        ):
            for row in result:
                yield convert(row) if convert is not None else tuple(row)

    return rows


def _all(engine: Engine, query: AnySelect) -> list[AnyRow]:
    """Fetch a small aggregate (a GROUP BY result, never raw audit rows)."""
    with engine.connect() as connection:
        return list(connection.execute(query))


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[Any]:
    """``COUNT(*) FILTER (WHERE ...)`` in a form both engines understand."""
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _in_period(column: Any, start: dt.datetime, end: dt.datetime) -> ColumnElement[bool]:
    """Half-open range on a timestamp column: lets PostgreSQL prune monthly partitions."""
    return and_(column >= start, column < end)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown IANA time zone {name!r}") from None


def _years_before(moment: dt.datetime, years: int) -> dt.datetime:
    """Same calendar day ``years`` earlier (29 February falls back to the 28th)."""
    try:
        return moment.replace(year=moment.year - years)
    except ValueError:
        return moment.replace(year=moment.year - years, day=28)


def _as_int(value: Any) -> int:
    """Counts come back as int, or Decimal from PostgreSQL's SUM over bigint."""
    return int(value or 0)


@dataclass(frozen=True)
class _Clock:
    """Local hour of day (0-23) and weekday (0 = Monday) of a UTC timestamp column, in SQL."""

    hour: ColumnElement[Any]
    weekday: ColumnElement[Any]

    def after_hours(self) -> ColumnElement[bool]:
        return or_(self.hour < WORKDAY_START_HOUR, self.hour >= WORKDAY_END_HOUR)


def _offset_segments(zone: ZoneInfo, start: dt.datetime, end: dt.datetime) -> list[Any]:
    """The zone's UTC offsets over ``[start, end)``: ``[(until, seconds), ..., (None, seconds)]``.

    SQLite knows no time zones; a period spans at most a couple of DST changes, so a CASE over
    these few segments gives an exact local time in SQL. Transitions fall on whole seconds; they
    are found hour by hour, then bisected to the second.
    """

    def offset(epoch: int) -> int:
        delta = dt.datetime.fromtimestamp(epoch, dt.UTC).astimezone(zone).utcoffset()
        return int(delta.total_seconds()) if delta is not None else 0

    segments: list[Any] = []
    t, stop = int(start.timestamp()), int(end.timestamp()) + 1
    current = offset(t)
    while t < stop:
        nxt = min(t + 3600, stop)
        if offset(nxt) != current:
            lo, hi = t, nxt
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if offset(mid) == current else (lo, mid)
            segments.append((dt.datetime.fromtimestamp(hi, dt.UTC), current))
            current = offset(hi)
        t = nxt
    segments.append((None, current))
    return segments


def _clock(engine: Engine, column: Any, timezone: str, period: Period) -> _Clock:
    """Local clock of ``column`` in ``timezone``, computed by the database.

    PostgreSQL converts with its own time zone data (``timezone(zone, ts)``). SQLite stores UTC
    text; the zone's offsets over the period are applied with ``datetime(text, '+N seconds')``.
    Rows outside the period get the nearest segment's offset (callers only use in-period rows).
    """
    zone = _zone(timezone)
    if is_postgres(engine):
        wall = func.timezone(literal(timezone, Text), column)
        return _Clock(
            hour=cast(func.date_part("hour", wall), Integer),
            weekday=cast(func.date_part("isodow", wall), Integer) - 1,
        )
    segments = _offset_segments(zone, period.start, period.end)
    text_utc = func.substr(column, 1, 19)  # 'YYYY-MM-DDTHH:MM:SS' of the stored UTC text
    local: ColumnElement[Any] = text_utc
    if len(segments) > 1:
        whens = [(column < until, f"{seconds:+d} seconds") for until, seconds in segments[:-1]]
        local = func.datetime(text_utc, case(*whens, else_=f"{segments[-1][1]:+d} seconds"))
    elif segments[0][1] != 0:
        local = func.datetime(text_utc, f"{segments[0][1]:+d} seconds")
    return _Clock(
        hour=cast(func.strftime("%H", local), Integer),
        weekday=(cast(func.strftime("%w", local), Integer) + 6) % 7,
    )


def _elapsed_us(engine: Engine, later: Any, earlier: Any) -> ColumnElement[Any]:
    """Exact microseconds between two timestamps (no float rounding at the on-time boundary)."""
    if is_postgres(engine):
        return (extract("epoch", later) - extract("epoch", earlier)) * 1_000_000

    def micros(column: Any) -> ColumnElement[Any]:
        seconds = cast(func.strftime("%s", func.substr(column, 1, 19)), Integer)
        return seconds * 1_000_000 + cast(func.substr(column, 21, 6), Integer)

    return micros(later) - micros(earlier)


# ------------------------------------------------------------------------------------ PHI access


def _phi_access() -> ColumnElement[bool]:
    return audit_log.c.action.like(PHI_ACCESS_PATTERN)


def principal_activity_query(
    engine: Engine, period: Period, timezone: str = "UTC", *, unusual_only: bool = False
) -> AnySelect:
    """Per-principal PHI access figures for the period, with each one's 30-day baseline.

    One pass over the period plus the baseline window (both bounded on ``occurred_at``, so
    PostgreSQL reads only those months' partitions). Public so that its plan can be checked.

    Returns:
        ``principal, accesses, distinct_patients, after_hours, emergency, failed,
        unusual_volume, period_daily_avg, baseline_daily_avg`` ordered by accesses descending.
    """
    c = audit_log.c
    clock = _clock(engine, c.occurred_at, timezone, period)
    baseline_start = period.start - dt.timedelta(days=BASELINE_DAYS)
    base = (
        select(
            c.principal,
            c.resource_id,
            c.action,
            c.status,
            case((c.occurred_at >= period.start, 1), else_=0).label("in_period"),
            case((clock.after_hours(), 1), else_=0).label("after_hours"),
        )
        .where(_phi_access(), _in_period(c.occurred_at, baseline_start, period.end))
        .subquery("phi")
    )
    b = base.c
    inside = b.in_period == 1
    accesses = _count_if(inside)
    baseline = _count_if(b.in_period == 0)
    period_days = (period.end - period.start).total_seconds() / 86_400
    factor = UNUSUAL_RATIO * period_days / BASELINE_DAYS
    unusual = and_(
        baseline > 0,
        accesses >= UNUSUAL_MIN_ACCESSES,
        cast(accesses, Float) >= cast(baseline, Float) * factor,
    )
    query = (
        select(
            b.principal,
            accesses.label("accesses"),
            func.count(func.distinct(case((inside, b.resource_id)))).label("distinct_patients"),
            _count_if(and_(inside, b.after_hours == 1)).label("after_hours"),
            _count_if(and_(inside, b.action == EMERGENCY_ACTION)).label("emergency"),
            _count_if(and_(inside, b.status == "denied")).label("failed"),
            case((unusual, 1), else_=0).label("unusual_volume"),
            (cast(accesses, Float) / period_days).label("period_daily_avg"),
            (cast(baseline, Float) / BASELINE_DAYS).label("baseline_daily_avg"),
        )
        .group_by(b.principal)
        .having(accesses > 0)
        .order_by(accesses.desc(), b.principal)
    )
    return query.having(unusual) if unusual_only else query


def phi_access_report(engine: Engine, period: Period, *, timezone: str = "UTC") -> Report:
    """Who looked at PHI, when, how much, and what stood out (HIPAA 164.312(b) audit controls).

    Args:
        engine: custody's store.
        period: the review period.
        timezone: IANA zone of the facility; "after hours" is outside 07:00-19:00 there.

    Returns:
        Tables ``by_principal``, ``after_hours``, ``emergency``, ``failed``, ``unusual_volume``;
        charts by hour of day, by day of week and top 10 principals; a PHI-free summary.
    """
    c = audit_log.c
    clock = _clock(engine, c.occurred_at, timezone, period)
    in_period = and_(_phi_access(), _in_period(c.occurred_at, period.start, period.end))
    workstation = c.details["workstation"].as_string()
    reason = c.details["reason"].as_string()

    per_row = (
        select(
            c.principal,
            c.resource_id,
            c.action,
            c.status,
            clock.hour.label("hour"),
            clock.weekday.label("weekday"),
        )
        .where(in_period)
        .subquery("access")
    )
    a = per_row.c
    after = or_(a.hour < WORKDAY_START_HOUR, a.hour >= WORKDAY_END_HOUR)
    totals = _all(
        engine,
        select(
            func.count().label("accesses"),
            func.count(func.distinct(a.principal)),
            func.count(func.distinct(a.resource_id)),
            _count_if(after),
            _count_if(a.action == EMERGENCY_ACTION),
            _count_if(a.status == "denied"),
        ),
    )[0]
    hours: dict[int, int] = dict(_all(engine, select(a.hour, func.count()).group_by(a.hour)))
    weekdays: dict[int, int] = dict(
        _all(engine, select(a.weekday, func.count()).group_by(a.weekday))
    )
    top = _all(
        engine,
        select(a.principal, func.count().label("n"))
        .group_by(a.principal)
        .order_by(func.count().desc(), a.principal)
        .limit(10),
    )
    unusual_query = principal_activity_query(engine, period, timezone, unusual_only=True)
    flagged = len(_all(engine, unusual_query))

    def by_principal(row: AnyRow) -> tuple[object, ...]:
        return (*(_as_int(v) if i else v for i, v in enumerate(row[:6])), bool(row[6]))

    def unusual_row(row: AnyRow) -> tuple[object, ...]:
        period_avg, baseline_avg = float(row.period_daily_avg), float(row.baseline_daily_avg)
        return (
            row.principal,
            round(period_avg, 2),
            round(baseline_avg, 2),
            round(period_avg / baseline_avg, 1),
        )

    order = (c.occurred_at, c.seq)
    tables = [
        ReportTable(
            "by_principal",
            "Access by principal",
            [
                "principal",
                "accesses",
                "distinct_patients",
                "after_hours",
                "emergency",
                "failed",
                "unusual_volume",
            ],
            _streamed(engine, principal_activity_query(engine, period, timezone), by_principal),
        ),
        ReportTable(
            "after_hours",
            f"Accesses outside {WORKDAY_START_HOUR:02d}:00-{WORKDAY_END_HOUR:02d}:00 ({timezone})",
            ["occurred_at", "principal", "action", "patient", "workstation"],
            _streamed(
                engine,
                select(c.occurred_at, c.principal, c.action, c.resource_id, workstation)
                .where(in_period, clock.after_hours())
                .order_by(*order),
            ),
        ),
        ReportTable(
            "emergency",
            "Break-the-glass (emergency) accesses",
            ["occurred_at", "principal", "patient", "reason"],
            _streamed(
                engine,
                select(c.occurred_at, c.principal, c.resource_id, reason)
                .where(in_period, c.action == EMERGENCY_ACTION)
                .order_by(*order),
            ),
        ),
        ReportTable(
            "failed",
            "Denied access attempts",
            ["occurred_at", "principal", "action", "patient", "reason", "workstation"],
            _streamed(
                engine,
                select(c.occurred_at, c.principal, c.action, c.resource_id, reason, workstation)
                .where(in_period, c.status == "denied")
                .order_by(*order),
            ),
        ),
        ReportTable(
            "unusual_volume",
            "Unusual access volume",
            ["principal", "period_daily_avg", "baseline_daily_avg", "ratio"],
            _streamed(engine, unusual_query, unusual_row),
            note=(
                f"Daily accesses >= {UNUSUAL_RATIO:g}x the principal's own average over the "
                f"{BASELINE_DAYS} days before the period, and >= {UNUSUAL_MIN_ACCESSES} accesses."
            ),
        ),
    ]
    charts = [
        Chart(
            f"Accesses by hour of day ({timezone})",
            "bar",
            [(f"{h:02d}", float(hours.get(h, 0))) for h in range(24)],
            x_label="hour",
            y_label="accesses",
        ),
        Chart(
            f"Accesses by day of week ({timezone})",
            "bar",
            [(name, float(weekdays.get(i, 0))) for i, name in enumerate(WEEKDAYS)],
            x_label="day",
            y_label="accesses",
        ),
        Chart(
            "Top 10 principals by accesses",
            "hbar",
            [(str(row.principal), float(row.n)) for row in top],
            x_label="accesses",
        ),
    ]
    summary: dict[str, object] = {
        "accesses": _as_int(totals[0]),
        "principals": _as_int(totals[1]),
        "distinct_patients": _as_int(totals[2]),
        "after_hours": _as_int(totals[3]),
        "emergency": _as_int(totals[4]),
        "failed": _as_int(totals[5]),
        "unusual_volume": flagged,
    }
    return Report(
        ReportType.PHI_ACCESS,
        "PHI access review (HIPAA 164.312(b))",
        period,
        utc_now(),
        summary=summary,
        tables=tables,
        charts=charts,
    )


# ----------------------------------------------------------------------------------- Disclosures


def disclosures_report(engine: Engine, period: Period, *, request_id: str) -> Report:
    """The accounting of disclosures for the patient behind ``request_id`` (HIPAA 164.528).

    Covers the six years before the period end. The patient is looked up inside the query from
    ``disclosure_requests``: the caller (a Prefect flow) never holds the patient reference.

    Raises:
        ValueError: no disclosure request has that id.
    """
    with engine.connect() as connection:
        known = connection.execute(
            select(disclosure_requests.c.request_id).where(
                disclosure_requests.c.request_id == request_id
            )
        ).first()
    if known is None:
        raise ValueError(f"unknown disclosure request {request_id!r}")
    c = audit_log.c
    patient = (
        select(disclosure_requests.c.patient_ref)
        .where(disclosure_requests.c.request_id == request_id)
        .scalar_subquery()
    )
    since = _years_before(period.end, DISCLOSURE_YEARS)
    where = and_(
        c.action == DISCLOSURE_ACTION,
        c.resource_type == "patient",
        c.resource_id == patient,
        _in_period(c.occurred_at, since, period.end),
    )
    count = _all(engine, select(func.count()).select_from(audit_log).where(where))[0][0]
    rows = (
        select(
            c.occurred_at,
            c.details["recipient"].as_string(),
            c.details["description"].as_string(),
            c.details["purpose"].as_string(),
            c.principal,
        )
        .where(where)
        .order_by(c.occurred_at, c.seq)
    )
    table = ReportTable(
        "disclosures",
        "Accounting of disclosures",
        ["date", "recipient", "description", "purpose", "principal"],
        _streamed(engine, rows),
        note=f"Disclosures from {since:%Y-%m-%d} to {period.end:%Y-%m-%d} (six years, 164.528).",
    )
    return Report(
        ReportType.DISCLOSURES,
        "Accounting of disclosures (HIPAA 164.528)",
        period,
        utc_now(),
        summary={"request_id": request_id, "disclosures": _as_int(count)},
        tables=[table],
    )


# --------------------------------------------------------------------------- Critical timeliness


def critical_timeliness_report(
    engine: Engine, period: Period, *, required_minutes: int = 60
) -> Report:
    """How fast critical lab values were acknowledged (CLIA 493.1291(g)).

    Elapsed time is computed exactly (integer microseconds on SQLite, numeric epochs on
    PostgreSQL), so a result acknowledged at exactly ``required_minutes`` counts as on time.

    The times come from ``critical_results``, a table pipelines and applications write. So each
    row is checked against the signed audit trail: its ``lab.critical_result.detected`` event
    (``audit_seq``) and the first ``lab.critical_result.acknowledged`` event for its result. A
    row whose times disagree with its events (a ``detected_at`` moved to turn a late
    notification into an on-time one, an acknowledgement nobody audited) is named in the
    table's ``audit`` column and as a finding (issue 15 item 6).
    """
    if required_minutes <= 0:
        raise ValueError("required_minutes must be positive")
    cr = critical_results.c
    limit_us = required_minutes * _US_PER_MINUTE
    limit = literal(limit_us, BigInteger)  # beyond int4 on PostgreSQL
    elapsed = _elapsed_us(engine, cr.acknowledged_at, cr.detected_at)
    detected = _in_period(cr.detected_at, period.start, period.end)
    per_row = select(cr.acknowledged_at, elapsed.label("us")).where(detected).subquery("crit")
    r = per_row.c
    acked = r.acknowledged_at.is_not(None)
    totals = _all(
        engine,
        select(
            func.count(),
            _count_if(acked),
            _count_if(and_(acked, r.us <= limit)),
            _count_if(and_(acked, r.us > limit)),
            _count_if(r.acknowledged_at.is_(None)),
        ),
    )[0]
    bucket = case(
        (r.acknowledged_at.is_(None), "unacknowledged"),
        *[
            (r.us < literal(bound * _US_PER_MINUTE, BigInteger), label)
            for bound, label in TIMELINESS_BUCKETS
        ],
        else_="120+",
    ).label("bucket")
    bucketed = select(bucket).subquery("b")
    counts: dict[str, int] = dict(
        _all(engine, select(bucketed.c.bucket, func.count()).group_by(bucketed.c.bucket))
    )
    labels = [label for _, label in TIMELINESS_BUCKETS] + ["120+", "unacknowledged"]

    def notification(row: AnyRow) -> tuple[object, ...]:
        us = row.us
        minutes = None if us is None else round(float(us) / _US_PER_MINUTE, 2)
        on_time = us is not None and us <= limit_us
        return (
            row.result_id, row.analyte, row.detected_at, row.acknowledged_at, minutes, on_time,
            _audit_disagreement(row) or "agrees",
        )  # fmt: skip

    rows = _timeliness_rows(period, elapsed, detected)
    disagreements: list[tuple[str, str]] = []

    def check(row: AnyRow) -> tuple[object, ...]:
        if problem := _audit_disagreement(row):
            disagreements.append((row.result_id, problem))
        return ()

    for _ in _streamed(engine, rows, check)():
        pass
    findings = [f"critical result {rid}: {problem}" for rid, problem in disagreements[:20]]
    if len(disagreements) > 20:
        findings.append(f"... and {len(disagreements) - 20} more (see column 'audit')")
    total, acknowledged, on_time, late, unacknowledged = (_as_int(v) for v in totals)
    return Report(
        ReportType.CRITICAL_TIMELINESS,
        "Critical result notification timeliness (CLIA)",
        period,
        utc_now(),
        summary={
            "required_minutes": required_minutes,
            "total": total,
            "acknowledged": acknowledged,
            "on_time": on_time,
            "late": late,
            "unacknowledged": unacknowledged,
            "percent_on_time": round(100 * on_time / total, 1) if total else None,
            "audit_disagreements": len(disagreements),
        },
        findings=findings,
        tables=[
            ReportTable(
                "notifications",
                "Critical results and their acknowledgement",
                [
                    "result_id",
                    "analyte",
                    "detected_at",
                    "acknowledged_at",
                    "minutes",
                    "on_time",
                    "audit",
                ],
                _streamed(engine, rows, notification),
                note=f"On time: acknowledged within {required_minutes} minutes of detection. "
                "Audit: whether the row's times agree with its detected and acknowledged audit "
                "events.",
            )
        ],
        charts=[
            Chart(
                "Minutes to acknowledgement",
                "bar",
                [(label, float(counts.get(label, 0))) for label in labels],
                x_label="minutes",
                y_label="results",
            )
        ],
    )


DETECTED_ACTION = "lab.critical_result.detected"
ACKNOWLEDGED_ACTION = "lab.critical_result.acknowledged"
"""The audit events a critical result's row is checked against: the ingest writes the first
(its seq is the row's ``audit_seq``); whoever acknowledges writes the second, same transaction."""

DETECTION_LAG = dt.timedelta(minutes=5)
"""The row is written when its file lands, after the detected event was written and announced
at once: ``detected_at`` may trail the event by this much, never precede it."""

ACK_TOLERANCE = dt.timedelta(seconds=1)
"""The acknowledgement and its event are written together with the same time."""


def _timeliness_rows(
    period: Period, elapsed: ColumnElement[Any], detected: ColumnElement[bool]
) -> AnySelect:
    """Each critical result with its detected event and the first acknowledgement event."""
    cr = critical_results.c
    det = audit_log.alias("det")
    ack = audit_log.alias("ack")
    first_ack = (
        select(func.min(ack.c.occurred_at))
        .where(
            ack.c.action == ACKNOWLEDGED_ACTION,
            ack.c.resource_id == cr.result_id,
            ack.c.occurred_at >= period.start,
            ack.c.occurred_at >= func.coalesce(det.c.occurred_at, cr.detected_at),
        )
        .scalar_subquery()
    )
    return (
        select(
            cr.result_id,
            cr.analyte,
            cr.detected_at,
            cr.acknowledged_at,
            elapsed.label("us"),
            det.c.occurred_at.label("detected_event_at"),
            det.c.action.label("detected_action"),
            det.c.resource_id.label("detected_resource"),
            first_ack.label("ack_event_at"),
        )
        .select_from(
            critical_results.outerjoin(
                det, and_(det.c.seq == cr.audit_seq, det.c.occurred_at <= period.end)
            )
        )
        .where(detected)
        .order_by(cr.detected_at, cr.id)
    )


def _audit_disagreement(row: AnyRow) -> str:
    """What is wrong between a critical result's times and its audit events ('' if nothing)."""
    problems = []
    event_at = row.detected_event_at
    if (
        event_at is None
        or row.detected_action != DETECTED_ACTION
        or row.detected_resource != row.result_id
    ):
        problems.append("no detected audit event for this result")
    elif not event_at - ACK_TOLERANCE <= row.detected_at <= event_at + DETECTION_LAG:
        shift = (row.detected_at - event_at).total_seconds() / 60
        problems.append(f"detected_at is {shift:+.1f} min from its detected audit event")
    ack_at, acknowledged = row.ack_event_at, row.acknowledged_at
    if acknowledged is not None and ack_at is None:
        problems.append("acknowledged_at has no acknowledged audit event")
    elif acknowledged is None and ack_at is not None:
        problems.append("an acknowledged audit event exists but acknowledged_at is empty")
    elif acknowledged is not None and abs(acknowledged - ack_at) > ACK_TOLERANCE:
        shift = (acknowledged - ack_at).total_seconds() / 60
        problems.append(f"acknowledged_at is {shift:+.1f} min from its acknowledged audit event")
    return "; ".join(problems)


# ----------------------------------------------------------------------------- Pipeline activity


def _pipeline_kind() -> ColumnElement[Any]:
    action = audit_log.c.action
    return case(
        *[(action.like(f"{kind}.%"), kind) for kind in PIPELINE_KINDS[:-1]],
        else_=PIPELINE_KINDS[-1],
    )


def pipeline_activity_report(engine: Engine, period: Period) -> Report:
    """What the data pipelines did: migrations, archival, lab ingestion and scheduled jobs."""
    c = audit_log.c
    where = and_(
        or_(*[c.action.like(f"{kind}.%") for kind in PIPELINE_KINDS]),
        _in_period(c.occurred_at, period.start, period.end),
    )
    events = select(_pipeline_kind().label("kind"), c.status).where(where).subquery("ev")
    e = events.c
    by_kind_status = _all(
        engine,
        select(e.kind, e.status, func.count())
        .group_by(e.kind, e.status)
        .order_by(e.kind, e.status),
    )
    per_kind: dict[str, int] = {}
    summary: dict[str, object] = {"events": sum(_as_int(n) for _, _, n in by_kind_status)}
    for kind, status, n in by_kind_status:
        summary[f"{kind} / {status}"] = _as_int(n)
        per_kind[kind] = per_kind.get(kind, 0) + _as_int(n)
    rows = (
        select(c.occurred_at, c.action, c.status, c.resource_id, c.correlation_id)
        .where(where)
        .order_by(c.occurred_at, c.seq)
    )
    return Report(
        ReportType.PIPELINE_ACTIVITY,
        "Pipeline activity",
        period,
        utc_now(),
        summary=summary,
        tables=[
            ReportTable(
                "runs",
                "Pipeline events",
                ["occurred_at", "action", "status", "resource_id", "correlation_id"],
                _streamed(engine, rows),
            )
        ],
        charts=[
            Chart(
                "Events per kind",
                "hbar",
                [(kind, float(n)) for kind, n in sorted(per_kind.items(), key=lambda kv: -kv[1])],
                x_label="events",
            )
        ],
    )


# ------------------------------------------------------------------------------- Audit integrity


def _month(engine: Engine, column: Any) -> ColumnElement[Any]:
    if is_postgres(engine):
        return func.to_char(func.timezone(literal("UTC", Text), column), "YYYY-MM")
    return func.substr(column, 1, 7)


def gaps_query(period: Period) -> AnySelect:
    """Missing sequence numbers among the period's audit rows (window function LAG over seq).

    The window spans every row between the period's first and last seq, not only the period's
    own rows: events are chained in append order, so rows of another period can sit between
    two of this period's, and only a seq with no row at all is a gap.
    """
    c = audit_log.c
    in_period = _in_period(c.occurred_at, period.start, period.end)
    lo = select(func.min(c.seq)).where(in_period).scalar_subquery()
    hi = select(func.max(c.seq)).where(in_period).scalar_subquery()
    windowed = (
        select(c.seq, func.lag(c.seq).over(order_by=c.seq).label("prev"))
        .where(c.seq >= lo, c.seq <= hi)
        .subquery("w")
    )
    w = windowed.c
    return (
        select(
            (w.prev + 1).label("first_missing_seq"),
            (w.seq - 1).label("last_missing_seq"),
            (w.seq - w.prev - 1).label("missing"),
        )
        .where(w.prev.is_not(None), w.seq - w.prev > 1)
        .order_by(w.seq)
    )


def audit_integrity_report(engine: Engine, period: Period, *, keyring: Keyring) -> Report:
    """Proof that the audit trail is intact: the whole chain verified, the period's rows counted.

    The chain is verified from genesis (a break anywhere undermines every later row); a broken
    chain is reported as a finding that names the first failing row.
    """
    verdict = verify_chain(engine, keyring)
    c = audit_log.c
    months = select(_month(engine, c.occurred_at).label("month")).where(
        _in_period(c.occurred_at, period.start, period.end)
    )
    m = months.subquery("m")
    by_month_query = select(m.c.month, func.count().label("events")).group_by(m.c.month)
    by_month = _all(engine, by_month_query.order_by(m.c.month))
    gaps = _all(engine, gaps_query(period))
    findings: list[str] = []
    if not verdict.ok:
        findings.append(
            f"audit row seq {verdict.first_bad_seq} fails verification: {verdict.reason}"
        )
    for first, last, _missing in gaps[:20]:
        span = f"seq {first}" if first == last else f"seqs {first}-{last}"
        findings.append(f"audit {span} missing among the period's rows")
    if len(gaps) > 20:
        findings.append(f"... and {len(gaps) - 20} more gaps (see table 'gaps')")
    return Report(
        ReportType.AUDIT_INTEGRITY,
        "Audit trail integrity",
        period,
        utc_now(),
        summary={
            "ok": verdict.ok,
            "events_checked": verdict.events_checked,
            "last_seq": verdict.last_seq,
            "first_bad_seq": verdict.first_bad_seq,
            "reason": verdict.reason,
            "period_events": sum(_as_int(n) for _, n in by_month),
            "gaps": len(gaps),
        },
        findings=findings,
        tables=[
            ReportTable(
                "by_month",
                "Audit events by month (UTC)",
                ["month", "events"],
                _streamed(engine, by_month_query.order_by(m.c.month)),
            ),
            ReportTable(
                "gaps",
                "Sequence gaps",
                ["first_missing_seq", "last_missing_seq", "missing"],
                _streamed(engine, gaps_query(period)),
            ),
        ],
        charts=[
            Chart(
                "Audit events by month",
                "bar",
                [(str(month), float(n)) for month, n in by_month],
                x_label="month",
                y_label="events",
            )
        ],
    )


# ------------------------------------------------------------------------------------ Dispatcher


def build_report(
    engine: Engine,
    report_type: ReportType | str,
    period: Period,
    *,
    keyring: Keyring | None = None,
    request_id: str | None = None,
    timezone: str = "UTC",
    required_minutes: int = 60,
) -> Report:
    """Build any report by type, with the options that type needs.

    Raises:
        ValueError: the type is unknown, or a needed option (``request_id`` for disclosures,
            ``keyring`` for integrity) is missing.
    """
    kind = ReportType(report_type)
    if kind is ReportType.PHI_ACCESS:
        return phi_access_report(engine, period, timezone=timezone)
    if kind is ReportType.DISCLOSURES:
        if not request_id:
            raise ValueError("the disclosures report needs a request_id")
        return disclosures_report(engine, period, request_id=request_id)
    if kind is ReportType.CRITICAL_TIMELINESS:
        return critical_timeliness_report(engine, period, required_minutes=required_minutes)
    if kind is ReportType.PIPELINE_ACTIVITY:
        return pipeline_activity_report(engine, period)
    if keyring is None:
        raise ValueError("the audit integrity report needs the HMAC keyring")
    return audit_integrity_report(engine, period, keyring=keyring)
