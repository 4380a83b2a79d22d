"""compliance-report end to end: every report stored with its checksum, recorded and audited."""

from __future__ import annotations

import asyncio
import re
from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError

from custody.audit import Keyring, verify_chain
from custody.cli import main
from custody.reports.model import ReportType
from custody.reports.output import SavedReport
from custody.reports.tables import compliance_reports
from custody.storage import open_store, sha256_hex
from custody.store.tables import audit_log
from flows.compliance_report import ReportParams, compliance_report
from tests.support import chromium
from tests.support.artifacts import read_artifacts
from tests.support.env import TEST_KEYS, set_custody_env
from tests.support.reports import HOSPITAL_TZ, plant

KEYRING = Keyring("k1", {k: v.encode() for k, v in TEST_KEYS.items()})
BAR = (0x3B, 0x6E, 0xA5)  # custody.reports.render's bar colour
OCTOBER = {"period": "custom", "period_start": date(2026, 10, 1), "period_end": date(2026, 11, 1)}


async def artifacts(prefix: str, flow_run_id: str | None = None) -> list[str]:
    found = await read_artifacts(key_like=prefix, flow_run_id=flow_run_id)
    return [str(a.data) for a in found if a.key and a.key.startswith(prefix)]


@pytest.fixture
def planted(prefect_api: str, pg_store: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    set_custody_env(monkeypatch, store_url=pg_store.url.render_as_string(hide_password=False))
    monkeypatch.setenv("CUSTODY_OBJECT_STORE_URL", f"file://{tmp_path / 'objects'}")
    plant(pg_store, KEYRING)
    return pg_store


def test_every_report_type_is_stored_recorded_and_audited(planted: Engine, tmp_path: Path) -> None:
    params = ReportParams(
        regulation="HIPAA", report_types=list(ReportType), request_id="DR-1",
        timezone=HOSPITAL_TZ, **OCTOBER,
    )  # fmt: skip
    state = compliance_report(params, return_state=True)
    run, run_id = state.result(), str(state.state_details.flow_run_id)
    assert not run.failed, run.reports
    store = open_store()
    with planted.connect() as conn:
        rows = conn.execute(select(compliance_reports)).all()
        actions = [
            a
            for (a,) in conn.execute(
                select(audit_log.c.action)
                .where(audit_log.c.action.like("compliance.report.generation.%"))
                .order_by(audit_log.c.seq)
            )
        ]
    assert sorted(r.report_type for r in rows) == sorted(t.value for t in ReportType)
    for row in rows:
        assert row.status == "completed" and row.record_count is not None
        assert sha256_hex(store.get(row.csv_key)) == row.csv_sha256
        assert sha256_hex(store.get(row.html_key)) == row.html_sha256
        assert len(store.get(row.html_key)) == row.html_bytes
    disclosures = next(r for r in rows if r.report_type == "disclosures")
    assert disclosures.record_count == 3  # the three planted for DR-1's patient, nothing else
    assert actions == [
        "compliance.report.generation.started",
        *["compliance.report.generation.type_completed"] * len(ReportType),
        "compliance.report.generation.completed",
    ]
    tables = asyncio.run(artifacts("compliance-reports-", run_id))  # this run's, not others'
    assert len(tables) == 1 and all(r.report_id in tables[0] for r in rows)
    published = " ".join(tables + asyncio.run(artifacts("report-r", run_id)))
    assert "MRN-" not in published  # patient references stay in the stored reports
    # Each report artifact says where the page is and how to get it; no link a browser refuses.
    where = asyncio.run(artifacts(f"report-{rows[0].report_id}", run_id))
    assert len(where) == 1 and "](file:" not in where[0] and "custody store get" in where[0]
    command = re.search(r"`custody store get '([^']+)' -o ([^`]+)`", where[0])
    assert command is not None, where[0]
    copy = tmp_path / command.group(2)
    assert main(["store", "get", command.group(1), "-o", str(copy)]) == 0
    assert sha256_hex(copy.read_bytes()) == rows[0].html_sha256
    assert verify_chain(planted, KEYRING).ok
    # The stored PHI-access page, as an auditor opens it: no errors, no requests, bars drawn.
    page = tmp_path / "phi_access.html"
    page.write_bytes(store.get(next(r for r in rows if r.report_type == "phi_access").html_key))
    run = chromium.screenshot(page, tmp_path / "phi_access.png")
    assert run.problems() == [], chromium.summarise(run.problems())
    shot = chromium.read_png((tmp_path / "phi_access.png").read_bytes())
    assert shot.count_near(BAR) > 2_000


def test_a_failing_report_type_does_not_stop_the_others(planted: Engine) -> None:
    params = ReportParams(
        regulation="HIPAA",
        report_types=[ReportType.DISCLOSURES, ReportType.PHI_ACCESS],
        request_id="DR-404",  # no such request
        **OCTOBER,
    )
    state = compliance_report(params, return_state=True)
    assert state.is_failed()
    run = state.result(raise_on_failure=False)
    assert [(r["report_type"], r["status"]) for r in run.reports] == [
        ("disclosures", "failed"), ("phi_access", "completed"),
    ]  # fmt: skip
    with planted.connect() as conn:
        statuses = dict(
            conn.execute(
                select(compliance_reports.c.report_type, compliance_reports.c.status)
            ).all()
        )
        failed = conn.execute(
            select(audit_log.c.details).where(
                audit_log.c.action == "compliance.report.generation.type_failed"
            )
        ).scalar_one()
    assert statuses == {"disclosures": "failed", "phi_access": "completed"}
    assert failed["report_type"] == "disclosures" and "DR-404" not in str(failed)


def test_a_report_that_cannot_be_recorded_leaves_no_objects_behind(
    planted: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.reports

    real_record = tasks.reports.record_report

    def refuse_phi_access(engine: Engine, saved: SavedReport, *args: object) -> None:
        if saved.report_type == "phi_access":  # both objects are stored by now
            assert len(list(open_store().list("reports"))) >= 2
            raise OperationalError("INSERT", {}, Exception("server closed the connection"))
        real_record(engine, saved, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(tasks.reports, "record_report", refuse_phi_access)
    params = ReportParams(
        regulation="HIPAA",
        report_types=[ReportType.PHI_ACCESS, ReportType.AUDIT_INTEGRITY],
        **OCTOBER,
    )
    run = compliance_report(params, return_state=True).result(raise_on_failure=False)
    assert [(r["report_type"], r["status"]) for r in run.reports] == [
        ("phi_access", "failed"), ("audit_integrity", "completed"),
    ]  # fmt: skip
    with planted.connect() as conn:
        rows = conn.execute(select(compliance_reports)).all()
    assert {(r.report_type, r.status) for r in rows} == {
        ("phi_access", "failed"), ("audit_integrity", "completed"),
    }  # fmt: skip
    # Only the recorded report's two objects remain: no PHI that no row points to.
    (done,) = [r for r in rows if r.status == "completed"]
    assert sorted(o.key for o in open_store().list("reports")) == sorted(
        [done.csv_key, done.html_key]
    )


def test_parameters_refuse_what_cannot_be_reported() -> None:
    with pytest.raises(ValueError, match="needs a request_id"):
        ReportParams(report_types=[ReportType.DISCLOSURES])
    with pytest.raises(ValueError, match="after period_start"):
        ReportParams(period="custom", period_start=date(2026, 2, 1), period_end=date(2026, 1, 1))
    with pytest.raises(ValueError, match="unknown time zone"):
        ReportParams(timezone="Mars/Olympus")
    last_quarter = ReportParams(period="last_quarter").bounds(today=date(2026, 11, 23))
    assert [b.date() for b in last_quarter] == [date(2026, 7, 1), date(2026, 10, 1)]
    last_month = ReportParams().bounds(today=date(2026, 1, 15))
    assert [b.date() for b in last_month] == [date(2025, 12, 1), date(2026, 1, 1)]
