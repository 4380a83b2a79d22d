"""ingest-lab-results end to end on the shared sample data, and the critical-value path."""

from __future__ import annotations

import http.server
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, func, select

from custody.audit import AuditLog, AuditStatus, Keyring, verify_chain
from custody.labs import ingest as ingest_module
from custody.labs.critical import load_rules
from custody.labs.ingest import LabIngestor
from custody.labs.tables import (
    critical_results,
    lab_files,
    lab_quarantine,
    lab_results,
    lab_results_history,
)
from custody.store.tables import audit_log
from flows.ingest_lab_results import IngestParams, ingest_lab_results
from tests.support.env import TEST_KEYS, set_custody_env

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
KEYRING = Keyring("k1", {k: v.encode() for k, v in TEST_KEYS.items()})

HL7_NAMES = ["*.hl7", "*.er7", "*.txt"]
CRITICAL_K = (
    b"MSH|^~\\&|LIS|CUSTODY LAB|EHR|HOSP|20261123101500-0500||ORU^R01|CRIT-0001|P|2.5.1\r"
    b"PID|1||MRN-CANARY^^^HOSP^MR||DOE^JANE||19700101|F\r"
    b"OBR|1|ORD-1|ACC-1|2823-3^Potassium^LN|||20261123100000-0500|||||||||||||||"
    b"20261123101000-0500|||F\r"
    b"OBX|1|NM|2823-3^Potassium [Moles/volume] in Serum or Plasma^LN||6.8|mmol/L|3.5-5.1|HH|||F"
    b"|||20261123100000-0500\r"
)


def _mentions_value(text: str) -> bool:
    """The critical value as a number of its own, not digits inside a timestamp."""
    return re.search(r"(?<![\d.])6\.8(?![\d])", text) is not None


@pytest.fixture(autouse=True)
def _inbox_roots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sources must be inside configured inbox roots (issue 15 item 5): the samples and tmp."""
    monkeypatch.setenv("CUSTODY_LAB_INBOX_ROOTS", json.dumps([str(DATA), str(tmp_path)]))


def count(store: Engine, table: object) -> int:
    with store.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


@pytest.mark.slow
def test_every_sample_file_lands_or_is_quarantined_and_a_rerun_adds_nothing(
    prefect_api: str, pg_store: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_custody_env(monkeypatch, store_url=pg_store.url.render_as_string(hide_password=False))
    runs = [
        IngestParams(source=str(DATA / "hl7v2"), format="hl7v2", include=HL7_NAMES),
        IngestParams(source=str(DATA / "fhir_r4"), format="fhir", include=["*.json"]),
        IngestParams(source=str(DATA / "synthea_csv" / "observations.csv"), format="csv",
                     csv_layout="synthea"),
    ]  # fmt: skip
    firsts = [ingest_lab_results(p) for p in runs]
    hl7, fhir, csv = firsts
    hl7_files = [p for p in (DATA / "hl7v2").rglob("*") if p.suffix in (".hl7", ".er7", ".txt")]
    assert hl7.files == len(hl7_files) and hl7.rejected == 0, hl7
    assert fhir.ingested + fhir.rejected == fhir.files > 30, fhir
    assert csv.results > 0 and csv.rejected == 0, csv
    landed = count(pg_store, lab_results)
    assert landed == sum(s.results for s in firsts) - _upserted_twice(pg_store)
    assert count(pg_store, lab_quarantine) == sum(s.quarantined + s.rejected for s in firsts)
    with pg_store.connect() as conn:
        missing_loinc = conn.execute(
            select(func.count())
            .select_from(lab_results)
            .where(
                lab_results.c.source_file == "observations.csv",
                lab_results.c.loinc_code.is_(None),
            )
        ).scalar_one()
    assert missing_loinc == 0

    quarantined = count(pg_store, lab_quarantine)
    again = [ingest_lab_results(p) for p in runs]
    assert [s.skipped for s in again] == [s.files - s.rejected for s in firsts]
    assert [s.rejected for s in again] == [s.rejected for s in firsts]
    assert [s.gated_files for s in again] == [0] * len(runs)  # completed runs gated them
    assert count(pg_store, lab_results) == landed
    assert count(pg_store, lab_quarantine) == quarantined  # nothing quarantined twice
    assert verify_chain(pg_store, KEYRING).ok


def _upserted_twice(store: Engine) -> int:
    """Results sent twice (a corrected resend of the same order) land once, by result id.

    Issue 16 item 7: the replaced rows are kept in lab_results_history, and the files'
    counts add up to the stored results.
    """
    with store.connect() as conn:
        per_file = conn.execute(select(func.sum(lab_files.c.results))).scalar_one()
    assert int(per_file) == count(store, lab_results)
    return count(store, lab_results_history)


def test_a_critical_potassium_is_audited_and_announced_within_a_second_of_parsing(
    pg_store: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    announced: list[tuple[float, str]] = []
    parsed_at: list[float] = []
    real_parse = ingest_module.parse

    def timed_parse(*args: object, **kwargs: object) -> object:
        records = list(real_parse(*args, **kwargs))  # type: ignore[arg-type]
        parsed_at.append(time.monotonic())
        return iter(records)

    monkeypatch.setattr(ingest_module, "parse", timed_parse)
    audit = AuditLog(
        pg_store, KEYRING,
        critical_listeners=[lambda event, seq: announced.append((time.monotonic(), event.action))],
    )  # fmt: skip
    ingestor = LabIngestor(
        pg_store, audit, load_rules("default"), principal="test", correlation_id=None,
        zone=ZoneInfo("UTC"),
    )  # fmt: skip
    report = ingestor.ingest("crit.hl7", CRITICAL_K)
    assert (report.status, report.results, report.critical) == ("ingested", 1, 1)
    ((when, action),) = announced
    assert action == "lab.critical_result.detected"
    assert 0 <= when - parsed_at[0] < 1.0, f"announced {when - parsed_at[0]:.3f}s after parsing"
    with pg_store.connect() as conn:
        row = conn.execute(select(critical_results)).one()
        event = conn.execute(
            select(audit_log.c.details, audit_log.c.status).where(
                audit_log.c.action == "lab.critical_result.detected"
            )
        ).one()
    assert (row.analyte, row.direction, str(row.limit_value)) == ("Potassium", "high", "6.2")
    assert event.status == AuditStatus.SUCCESS.value
    assert "MRN-CANARY" not in str(event.details) and not _mentions_value(str(event.details))
    assert verify_chain(pg_store, KEYRING).ok


def test_a_file_that_is_not_what_it_claims_is_rejected_whole(
    pg_store: Engine,
) -> None:
    audit = AuditLog(pg_store, KEYRING)
    ingestor = LabIngestor(
        pg_store, audit, load_rules("default"), principal="test", correlation_id=None,
        zone=ZoneInfo("UTC"),
    )  # fmt: skip
    report = ingestor.ingest("labs.hl7", b'{"resourceType": "Observation"}', "hl7v2")
    assert report.status == "rejected" and report.reason, report
    assert count(pg_store, lab_results) == 0
    with pg_store.connect() as conn:
        stage, reason = conn.execute(select(lab_quarantine.c.stage, lab_quarantine.c.reason)).one()
    assert stage == "file" and reason == report.reason


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTP server that records the bodies POSTed to it."""
    bodies: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/", bodies
    server.shutdown()


def test_the_example_automation_notifies_on_a_critical_result_without_phi(
    prefect_api: str,
    pg_store: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    webhook: tuple[str, list[str]],
) -> None:
    import yaml
    from prefect.automations import Automation
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    url, bodies = webhook
    block = CustomWebhookNotificationBlock(
        name="on-call", url=url, method="POST", json_data={"text": "{{body}}"}
    )
    spec = yaml.safe_load((ROOT / "infra/automations/critical-lab-result.yaml").read_text())
    action = spec["automations"][0]["actions"][0]
    action["block_document_id"] = str(block.save("custody-test-on-call", overwrite=True))
    automation = Automation.model_validate(spec["automations"][0]).create()
    try:
        set_custody_env(monkeypatch, store_url=pg_store.url.render_as_string(hide_password=False))
        (tmp_path / "crit.hl7").write_bytes(CRITICAL_K)
        summary = ingest_lab_results(IngestParams(source=str(tmp_path)))
        assert (summary.results, summary.critical, summary.quality) == (1, 1, "pass")
        deadline = time.monotonic() + 30
        while not bodies and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        automation.delete()
    with pg_store.connect() as conn:
        seq = conn.execute(
            select(audit_log.c.seq).where(audit_log.c.action == "lab.critical_result.detected")
        ).scalar_one()
    (body,) = bodies
    assert f"audit_log seq {seq} " in body
    assert "MRN-CANARY" not in body and "DOE" not in body and not _mentions_value(body)


def test_a_payload_staged_in_the_store_is_ingested_by_reference(
    prefect_api: str,
    pg_store: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from custody.cli import main

    set_custody_env(monkeypatch, store_url=pg_store.url.render_as_string(hide_password=False))
    monkeypatch.setenv("CUSTODY_OBJECT_STORE_URL", f"file://{tmp_path / 'objects'}")
    payload = tmp_path / "posted.hl7"
    payload.write_bytes(CRITICAL_K)
    observation = DATA / "fhir_r4" / "hl7-r4-official-examples" / "Observation-f001.json"
    assert main(["labs", "stage", str(payload), str(observation)]) == 0
    sources = capsys.readouterr().out.split()
    assert [s.rsplit(".", 1)[-1] for s in sources] == ["hl7", "json"]
    assert all(s.startswith("store:inbox/") and "posted" not in s for s in sources)
    assert main(["labs", "stage", str(payload)]) == 0  # staging again changes nothing
    assert capsys.readouterr().out.split() == sources[:1]
    summaries = [ingest_lab_results(IngestParams(source=s)) for s in sources]
    assert [(s.files, s.results) for s in summaries] == [(1, 1), (1, 1)]


def test_issue_15_item_5_phi_file_names_never_reach_prefect_and_symlinks_are_refused(
    prefect_api: str, pg_store: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from tests.support.artifacts import read_artifacts

    set_custody_env(monkeypatch, store_url=pg_store.url.render_as_string(hide_password=False))
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    (inbox / "DOE_JANE_MRN0099123_potassium.hl7").write_bytes(CRITICAL_K)
    (outside / "other.hl7").write_bytes(CRITICAL_K.replace(b"CRIT-0001", b"CRIT-0002"))
    (inbox / "ROE_RICHARD_MRN0099124_sodium.hl7").symlink_to(outside / "other.hl7")
    state = ingest_lab_results(IngestParams(source=str(inbox)), return_state=True)
    summary = state.result()
    assert (summary.files, summary.ingested, summary.rejected, summary.results) == (2, 1, 1, 1)
    with pg_store.connect() as conn:
        refused = conn.execute(
            select(lab_quarantine.c.stage, lab_quarantine.c.reason).where(
                lab_quarantine.c.source_file == "ROE_RICHARD_MRN0099124_sodium.hl7"
            )
        ).one()
        landed = conn.execute(select(lab_results.c.source_message)).scalars().all()
    assert refused.stage == "file" and refused.reason.startswith("symlink refused")
    assert landed == ["CRIT-0001"]  # the file behind the link was never read
    run_id = str(state.state_details.flow_run_id)
    artifacts = asyncio.run(read_artifacts(flow_run_id=run_id))
    shown = " ".join(str(a.data) + str(a.description) for a in artifacts)
    assert artifacts and "MRN00991" not in shown and "DOE_JANE" not in shown, shown
    with pg_store.connect() as conn:
        events = conn.execute(select(audit_log.c.resource_id, audit_log.c.details)).all()
    assert "MRN00991" not in str(events)
    # Outside the configured roots: refused before anything is read.
    monkeypatch.setenv("CUSTODY_LAB_INBOX_ROOTS", json.dumps([str(inbox)]))
    set_custody_env(monkeypatch, store_url=pg_store.url.render_as_string(hide_password=False))
    outside_run = ingest_lab_results(IngestParams(source=str(outside)), return_state=True)
    assert outside_run.is_failed() and "outside" not in str(outside_run.message)
