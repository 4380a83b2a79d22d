"""compliance-report with its object store failing: S3 stopped mid-run, a full local disk.

A failed report type must be recorded as ``type_failed`` with a ``failed`` row, no row may
point at a missing or partial object, nothing may be left in the store that no row accounts
for, and a re-run must store the report with its SHA-256.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from custody.audit import verify_chain
from custody.reports.model import ReportType
from custody.reports.output import new_report_id, save_report
from custody.reports.queries import build_report
from custody.reports.tables import compliance_reports
from custody.storage import ObjectStore, open_store, sha256_hex
from custody.storage.local import LocalStore
from custody.storage.s3 import ensure_bucket
from flows.compliance_report import ReportParams, compliance_report
from tests.faults.conftest import KEYRING, events_per_resource, libpq_url
from tests.support.env import set_custody_env
from tests.support.faults import FaultThread, hold_lock, stray_files, tmpfs, wait_for_backends
from tests.support.reports import PERIOD, plant
from tests.support.seaweed import pick_base, seaweed_server

OCTOBER = {"period": "custom", "period_start": date(2026, 10, 1), "period_end": date(2026, 11, 1)}
PAGE = 4096


@pytest.fixture
def planted(prefect_api: str, pg_store: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    set_custody_env(monkeypatch, store_url=pg_store.url.render_as_string(hide_password=False))
    plant(pg_store, KEYRING)
    return pg_store


def _rows(store: Engine) -> list[tuple[str, str, str | None, str | None, str | None, str | None]]:
    with store.connect() as c:
        return [
            tuple(r)  # type: ignore[misc]
            for r in c.execute(
                select(
                    compliance_reports.c.report_type, compliance_reports.c.status,
                    compliance_reports.c.csv_key, compliance_reports.c.csv_sha256,
                    compliance_reports.c.html_key, compliance_reports.c.html_sha256,
                ).order_by(compliance_reports.c.generated_at)
            )
        ]  # fmt: skip


def _rows_match_store(store: Engine, objects: ObjectStore) -> None:
    """Completed rows point at whole objects with their checksums; failed rows at nothing;
    and the store holds nothing else."""
    keys = set()
    for _, status, csv_key, csv_sha, html_key, html_sha in _rows(store):
        if status != "completed":
            assert (csv_key, html_key) == (None, None)
            continue
        assert csv_key and html_key
        assert sha256_hex(objects.get(csv_key)) == csv_sha
        assert sha256_hex(objects.get(html_key)) == html_sha
        keys |= {csv_key, html_key}
    assert {o.key for o in objects.list("reports")} == keys


def _failed_once_then_completed(store: Engine, report_type: str) -> None:
    statuses = [(t, s) for t, s, *_ in _rows(store) if t == report_type]
    assert statuses == [(report_type, "failed"), (report_type, "completed")]
    failed = events_per_resource(store, "compliance.report.generation.type_failed")
    assert len(failed) == 1 and set(failed.values()) == {1}
    assert verify_chain(store, KEYRING).ok


@pytest.mark.slow
def test_s3_stopped_mid_run_then_restarted(
    planted: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """phi_access is stored; the critical-timeliness query waits on a lock while S3 is stopped,
    so its upload fails. With the same server back, a re-run stores it."""
    root, base = tmp_path / "s3", pick_base()
    store_url = libpq_url(planted)
    types = [ReportType.PHI_ACCESS, ReportType.CRITICAL_TIMELINESS]
    with seaweed_server(root, base) as s3:
        ensure_bucket(s3.client(), "reports", object_lock=False)
        monkeypatch.setenv("CUSTODY_OBJECT_STORE_URL", "s3://reports/hospital-a")
        monkeypatch.setenv("CUSTODY_S3_ENDPOINT_URL", s3.endpoint_url)
        monkeypatch.setenv("CUSTODY_S3_ACCESS_KEY_ID", s3.access_key)
        monkeypatch.setenv("CUSTODY_S3_SECRET_ACCESS_KEY", s3.secret_key)
        with hold_lock(store_url, "LOCK TABLE critical_results IN ACCESS EXCLUSIVE MODE") as lock:

            def script() -> None:
                wait_for_backends(store_url, "%critical_results%")
                s3.process.terminate()
                s3.process.wait(timeout=30)
                lock.release()

            faults = FaultThread(script)
            state = compliance_report(
                ReportParams(report_types=types, **OCTOBER), return_state=True
            )
            faults.join()
    run = state.result(raise_on_failure=False)
    assert state.is_failed()
    assert [(r["report_type"], r["status"], r.get("error")) for r in run.reports] == [
        ("phi_access", "completed", None), ("critical_timeliness", "failed", "StorageError"),
    ]  # fmt: skip

    with seaweed_server(root, base):  # the same server, back with its data
        again = compliance_report(
            ReportParams(report_types=[ReportType.CRITICAL_TIMELINESS], **OCTOBER)
        )
        assert not again.failed, again.reports
        _rows_match_store(planted, open_store())
    _failed_once_then_completed(planted, "critical_timeliness")


def _sizes(store: Engine, scratch: Path) -> tuple[int, int]:
    """Pages the phi_access report's CSV and HTML take (rendered once, off the tmpfs)."""
    report = build_report(store, ReportType.PHI_ACCESS, PERIOD, keyring=KEYRING)
    saved = save_report(report, LocalStore(scratch), "reports", new_report_id(PERIOD.end))
    return -(-saved.csv_bytes // PAGE), -(-saved.html_bytes // PAGE)


def test_disk_full_leaves_no_partial_report_then_a_rerun_stores_it(
    planted: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Room for the CSV but not the HTML: the report fails whole (the CSV is taken back), then
    with room again it is stored with its checksums."""
    csv_pages, html_pages = _sizes(planted, tmp_path / "scratch")
    assert html_pages >= 3, "the HTML must need more room than is left after the CSV"
    params = ReportParams(report_types=[ReportType.PHI_ACCESS], **OCTOBER)
    with tmpfs(tmp_path / "objects", 1 << 20) as disk:
        monkeypatch.setenv("CUSTODY_OBJECT_STORE_URL", disk.path.as_uri())
        filler = disk.fill(leave_bytes=(csv_pages + 2) * PAGE)  # CSV + sidecar + one page
        state = compliance_report(params, return_state=True)
        assert state.is_failed()
        [failed] = state.result(raise_on_failure=False).reports
        assert (failed["status"], failed["error"]) == ("failed", "StorageError")
        assert stray_files(disk.path) == []  # no temp file, no CSV without its report
        _rows_match_store(planted, open_store())

        filler.unlink()  # room again
        again = compliance_report(params)
        assert not again.failed, again.reports
        assert stray_files(disk.path) == []
        _rows_match_store(planted, open_store())
    _failed_once_then_completed(planted, "phi_access")
