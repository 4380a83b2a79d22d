"""The PHI canary: every flow runs on data with unique values in its PHI fields; none reach Prefect.

Canary values (tests/support/canary.py) go into every PHI field of every input: a PostgreSQL
hospital database (patients keyed by MRN, lab results), HL7 v2, FHIR and CSV lab files (good,
quarantined and rejected records, critical values) and application audit events (PHI accesses,
disclosures behind an opaque request id). Then every flow runs, the failing paths included:
migrate-tables (and a target that refuses a canary row), archive-to-s3 with delete,
restore-from-archive (into a table that now refuses a row, then for real), ingest-lab-results,
compliance-report with every report type, and with a type that fails.

Then the places Prefect keeps things are searched for the canaries, with zero hits expected:
the Prefect server's SQLite database as raw bytes (with -wal/-shm: run parameters, states and
their messages, logs, artifacts, events, variables, blocks), PREFECT_HOME with result storage,
the events read back through the API, everything written to stdout/stderr and every logging
record, the server process's own output when it is a file, every temporary file written during
the run (where Great Expectations would put anything on disk) and the in-memory stores of every
Great Expectations context the flows created. Custody's own store must hold PHI only where it
must: pipeline audit events, quarantine reasons, critical-result rows and report rows hold none.

Each search is proven able to find what it looks for: a second set of canaries is put into
each place on purpose (an artifact, an event, a log record, a print, a temp file, a file in
result storage, a GX validation that keeps unexpected values) and must be found there.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import secrets
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from sqlalchemy import Engine, select, text

from custody.audit import Keyring, verify_chain
from custody.labs.tables import critical_results, lab_files, lab_quarantine, lab_results
from custody.reports.model import ReportType
from custody.reports.tables import compliance_reports
from custody.storage import LockMode, open_store
from custody.storage.s3 import ensure_bucket
from custody.store.tables import audit_log, dead_letters, job_chunks
from flows.anchor_audit_chain import AnchorParams, anchor_audit_chain
from flows.archive import (
    ArchiveParams,
    RestoreParams,
    RetentionPolicy,
    archive_to_s3,
    restore_from_archive,
)
from flows.compliance_report import ReportParams, compliance_report
from flows.ingest_lab_results import IngestParams, ingest_lab_results
from flows.migrate import MigrateParams, migrate_tables
from tests.support.canary import (
    ALLERGIES,
    ARCHIVE_CUTOFF,
    LAB_ROWS,
    PATIENTS,
    Canaries,
    Hit,
    Scanner,
    count_rows,
    create_refusing_target,
    create_source,
    phi_file_name,
    plant_app_events,
    refuse_patient,
    write_lab_files,
)
from tests.support.env import TEST_KEYS, set_custody_env
from tests.support.pagila import table_digests
from tests.support.seaweed import S3Server

KEYRING = Keyring("k1", {k: v.encode() for k, v in TEST_KEYS.items()})
REFUSED = 1  # the patient row the refusing targets turn down


class Timings:
    """Wall time per phase, printed with -s and kept for the README part."""

    def __init__(self) -> None:
        self.started = self.last = time.monotonic()
        self.phases: list[tuple[str, float]] = []

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        self.phases.append((phase, round(now - self.last, 2)))
        self.last = now

    def __str__(self) -> str:
        parts = ", ".join(f"{name} {seconds}s" for name, seconds in self.phases)
        return f"{time.monotonic() - self.started:.1f}s: {parts}"


class _Records(logging.Handler):
    """Every logging record, formatted with its traceback, as a log file would hold it."""

    def __init__(self) -> None:
        super().__init__(level=0)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


# Loggers that do not pass their records up to the root logger.
_NON_PROPAGATING = ("prefect.extra", "prefect._internal", "uvicorn", "fastapi")


@pytest.fixture
def log_records() -> Iterator[_Records]:
    records = _Records()
    loggers = [logging.getLogger(), *map(logging.getLogger, _NON_PROPAGATING)]
    for logger in loggers:
        logger.addHandler(records)
    yield records
    for logger in loggers:
        logger.removeHandler(records)


@pytest.fixture
def gx_contexts(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every Great Expectations context the flows create (real ones, kept to read their stores)."""
    from custody.quality import labs, tables

    made: list[Any] = []
    real = tables.ephemeral_context

    def keep() -> Any:
        made.append(real())
        return made[-1]

    monkeypatch.setattr(tables, "ephemeral_context", keep)
    monkeypatch.setattr(labs, "ephemeral_context", keep)
    return made


@pytest.fixture
def own_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Temporary files of this process and its children land here, to be searched."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("TMPDIR", str(folder))
    return folder


@pytest.mark.slow
def test_phi_canaries_never_reach_prefect(
    prefect_api: str,
    pg_store: Engine,
    pg_databases,  # type: ignore[no-untyped-def]
    s3_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    log_records: _Records,
    gx_contexts: list[Any],
    own_tempdir: Path,
    request: pytest.FixtureRequest,
) -> None:
    clock = Timings()
    since = datetime.now(UTC) - timedelta(seconds=5)
    c, control = Canaries.fresh(), Canaries.fresh()
    names = ("ehr", "warehouse", "refusing", "subset")
    src, dst, refusing, subset = (pg_databases.create(n) for n in names)
    monkeypatch.setenv("CUSTODY_LAB_INBOX_ROOTS", json.dumps([str(tmp_path / "inbox")]))
    set_custody_env(
        monkeypatch,
        store_url=pg_store.url.render_as_string(hide_password=False),
        connections={"ehr": src, "warehouse": dst, "refusing": refusing, "subset": subset},
    )
    bucket = f"canary-{secrets.token_hex(5)}"  # not the canary token: that stands for PHI only
    ensure_bucket(s3_server.client(), bucket, object_lock=False)
    for name, value in {
        "CUSTODY_OBJECT_STORE_URL": f"s3://{bucket}/hospital",
        "CUSTODY_S3_ENDPOINT_URL": s3_server.endpoint_url,
        "CUSTODY_S3_ACCESS_KEY_ID": s3_server.access_key,
        "CUSTODY_S3_SECRET_ACCESS_KEY": s3_server.secret_key,
    }.items():
        monkeypatch.setenv(name, value)
    eligible = create_source(src, c)
    create_refusing_target(refusing, c, REFUSED)
    source_digests = table_digests(src)
    clock.lap("setup")

    returned: list[Any] = []  # what the flows handed back to Prefect callers
    returned += _migrate(c, src, dst, subset, pg_store)
    clock.lap("migrate")
    returned += _archive_and_restore(c, src, eligible, source_digests)
    clock.lap("archive+restore")
    ingested, ingest_run, critical_seqs = _ingest(c, tmp_path / "inbox", pg_store)
    returned += ingested
    clock.lap("ingest")
    returned += _report(c, pg_store)
    clock.lap("reports+anchor")

    planted = _plant_controls(control, own_tempdir)
    request.addfinalizer(lambda: planted.unlink(missing_ok=True))  # the session's storage
    events = _persisted_events(since, control)
    announced = [
        e for e in events if e["event"] == "custody.lab.critical_result.detected"
        and f"prefect.flow-run.{ingest_run}" in {r["prefect.resource.id"] for r in e["related"]}
    ]  # fmt: skip
    assert {e["payload"]["audit_seq"] for e in announced} == critical_seqs, announced
    clock.lap("controls+events")

    out, err = capfd.readouterr()
    places: dict[str, Callable[[Scanner], list[Hit]]] = {
        "prefect database": lambda s: s.scan_tree(_database_dir()),
        "prefect home and result storage": lambda s: _scan_prefect_home(s),
        "prefect events (API)": lambda s: s.scan_json(events, "prefect events"),
        "stdout": lambda s: s.scan_text(out, "stdout"),
        "stderr": lambda s: s.scan_text(err, "stderr"),
        "log records": lambda s: s.scan_text("\n".join(log_records.lines), "log records"),
        "temporary files": lambda s: s.scan_tree(own_tempdir),
        "gx stores": lambda s: _scan_gx(s, gx_contexts),
        "flow results": lambda s: s.scan_json([_dump(r) for r in returned], "flow results"),
    }
    scanner, proof = Scanner(c), Scanner(control)
    leaks = {place: scan(scanner) for place, scan in places.items()}
    found = {place: scan(proof) for place, scan in places.items()}
    server_output = _scan_server_output(scanner)
    clock.lap("scan")

    # Each search finds the control canaries planted in its place (flow results have none).
    missed = [p for p, hits in found.items() if not hits and p != "flow results"]
    assert not missed, f"the scanner found no control canary in: {missed}"
    leaks["prefect server output"] = server_output
    assert not any(leaks.values()), "PHI canaries reached Prefect:\n" + _summary(leaks)
    _custody_store_holds_phi_only_where_it_must(Scanner(c), pg_store)
    assert verify_chain(pg_store, KEYRING).ok
    print(
        f"\nPHI canary: {len(scanner.needles)} needles, {len(places) + 1} places, "
        f"{scanner.files_scanned} files ({scanner.server_files} of the server's output), "
        f"{scanner.bytes_scanned / 1e6:.1f} MB searched; {clock}\n  " + "\n  ".join(scanner.paths)
    )


# --------------------------------------------------------------------------- the flows


def _migrate(c: Canaries, src: str, dst: str, subset: str, store: Engine) -> list[Any]:
    """Migrations: verified; into a target refusing a canary row; a table without its parent."""
    done = migrate_tables(
        MigrateParams(source="ehr", target="warehouse", chunk_size=3, job_id="canary-migrate")
    )
    assert done.status == "success", done.model_dump_json()
    assert table_digests(dst) == table_digests(src)  # the canaries landed, exactly
    assert count_rows(dst, "patients", f"family_name = '{c.family}'") == PATIENTS

    state = migrate_tables(
        MigrateParams(source="ehr", target="refusing", tables=["patients"], chunk_size=3,
                      job_id="canary-refused"),
        return_state=True,
    )  # fmt: skip
    refused = state.result(raise_on_failure=False)
    assert state.is_failed() and refused.status == "partial_failure", refused
    [table] = refused.tables
    assert table.failed_chunks == 1 and "CheckViolation" in table.failures[0]
    with store.connect() as conn:
        errors = conn.execute(
            select(job_chunks.c.error).where(job_chunks.c.status == "failed")
        ).all()
        letters = conn.execute(select(dead_letters.c.error)).all()
    # The database's own message quoted the refused row: it is kept in custody's store only.
    assert len(errors) == 1 and c.mrn(REFUSED) in errors[0][0] and c.family in errors[0][0], errors
    assert len(letters) == 1

    # One table of three: its rows reference patients the target does not get. The foreign key
    # is not migrated but named in the report (by its tables, never by a key value such as an
    # MRN, which is what the database would quote if it were added and failed).
    subset_run = migrate_tables(
        MigrateParams(source="ehr", target="subset", tables=["allergies"], job_id="canary-subset"),
    )
    assert subset_run.status == "success", subset_run.model_dump_json()
    assert any("allergies" in n and "patients" in n for n in subset_run.notes), subset_run.notes
    assert count_rows(subset, "allergies") == ALLERGIES
    return [done, refused, subset_run]


def _archive_and_restore(
    c: Canaries, src: str, eligible: dict[str, int], digests: dict[str, tuple[int, str]]
) -> list[Any]:
    """Archive with delete; restore into a table that now refuses a row; restore for real."""
    policies = [
        RetentionPolicy(name="patients", table="patients", timestamp_column="updated_at",
                        cutoff=ARCHIVE_CUTOFF),
        RetentionPolicy(name="lab_results", table="lab_results", timestamp_column="collected_at",
                        cutoff=ARCHIVE_CUTOFF),
    ]  # fmt: skip
    archived = archive_to_s3(
        ArchiveParams(database="ehr", policies=policies, batch_size=2, job_id="canary-archive")
    )
    assert archived.status == "success", archived.model_dump_json()
    assert [p.rows_archived for p in archived.policies] == list(eligible.values())
    assert count_rows(src, "patients") == PATIENTS - eligible["patients"]
    assert count_rows(src, "lab_results") == LAB_ROWS - eligible["lab_results"]
    with psycopg.connect(src) as conn:
        ids = [r[0] for r in conn.execute("SELECT archive_id FROM custody.archive_manifest")]
        keys = [r[0] for r in conn.execute("SELECT object_key FROM custody.archive_manifest")]
    assert len(ids) == 6 and all(open_store().head(k) is not None for k in keys)

    with psycopg.connect(src, autocommit=True) as conn:  # the schema changed since archival
        conn.execute(refuse_patient(c.mrn(REFUSED), "canary_refuse"))
    state = restore_from_archive(RestoreParams(database="ehr", table="patients"), return_state=True)
    assert state.is_failed(), state
    # Still actionable without the rows: which archive, which table, which SQLSTATE.
    assert "patients did not take its rows back (CheckViolation (SQLSTATE 23514))" in str(
        state.message
    ), state.message
    with psycopg.connect(src, autocommit=True) as conn:
        conn.execute("ALTER TABLE patients DROP CONSTRAINT canary_refuse")

    restored = restore_from_archive(RestoreParams(database="ehr", archive_ids=ids))
    assert restored["objects"] == 6
    assert table_digests(src) == digests  # every canary row back, exactly
    return [archived, restored, state.message]


def _ingest(c: Canaries, inbox: Path, store: Engine) -> tuple[list[Any], str, set[int]]:
    """HL7 v2, FHIR and CSV files with good, quarantined and critical results, two rejected."""
    expected = write_lab_files(inbox, c)
    state = ingest_lab_results(IngestParams(source=str(inbox)), return_state=True)
    summary = state.result()
    got = (summary.files, summary.ingested, summary.rejected, summary.results,
           summary.quarantined, summary.critical)  # fmt: skip
    assert got == (expected.files, expected.ingested, expected.rejected, expected.results,
                   expected.quarantined, expected.critical), summary  # fmt: skip
    with store.connect() as conn:
        results = conn.execute(select(lab_results)).all()
        quarantined = conn.execute(select(lab_quarantine)).all()
        criticals = conn.execute(select(critical_results.c.audit_seq)).all()
        files = conn.execute(select(lab_files.c.status)).all()
    # The canaries landed where they must: in the results, traceable to their sources.
    assert all(c.token in (r.patient_ref or "") for r in results), results
    assert {r.value_text for r in results} - {None} == {c.result_text}
    assert {r.value_numeric for r in results} - {None} == {
        c.values[k] for k in ("hl7", "fhir", "csv")
    }
    assert len(quarantined) == expected.quarantined + expected.rejected
    names = {phi_file_name(c), phi_file_name(c, "sodium")}
    assert all(q.source_file.startswith("feed-") or q.source_file in names for q in quarantined)
    assert len(criticals) == expected.critical
    assert [s for (s,) in files].count("rejected") == expected.rejected
    # Issue 15 item 2: a rule-set "path" at a file full of PHI is refused before it is read.
    refused = ingest_lab_results(
        params={"source": str(inbox), "critical_rules": str(inbox / "feed-b.json")},  # type: ignore[arg-type]
        return_state=True,
    )
    assert refused.is_failed(), refused
    return (
        [summary, str(refused.message)],
        str(state.state_details.flow_run_id),
        {seq for (seq,) in criticals},
    )


def _report(c: Canaries, store: Engine) -> list[Any]:
    """Every report type over the canary events, a report type that fails, then an anchor."""
    request_id = f"DR-{secrets.token_hex(4)}"  # opaque: resolved to the MRN in the database
    disclosures = plant_app_events(store, KEYRING, c, request_id)
    today = datetime.now(UTC).date()
    period = {"period": "custom", "period_start": today - timedelta(days=30),
              "period_end": today + timedelta(days=1)}  # fmt: skip
    run = compliance_report(ReportParams(report_types=list(ReportType), request_id=request_id,
                                         **period))  # type: ignore[arg-type]  # fmt: skip
    assert not run.failed, run.reports
    [accounting] = [r for r in run.reports if r["report_type"] == "disclosures"]
    assert accounting["records"] == disclosures
    stored = open_store().get(accounting["csv_key"]).decode()
    assert stored.count(c.disclosure) == disclosures  # the patient's accounting lists them

    state = compliance_report(
        ReportParams(report_types=[ReportType.DISCLOSURES], request_id="DR-none",
                     **period),  # type: ignore[arg-type]
        return_state=True,
    )  # fmt: skip
    failed = state.result(raise_on_failure=False)
    assert state.is_failed() and failed.failed == ["disclosures"]
    with store.connect() as conn:
        statuses = [s for (s,) in conn.execute(select(compliance_reports.c.status))]
    assert sorted(statuses) == ["completed"] * len(ReportType) + ["failed"]

    # The chain that now holds the canary events, verified and anchored.
    anchored = anchor_audit_chain(AnchorParams(object_lock=LockMode.NONE))
    assert isinstance(anchored, dict) and anchored["seq"] > 0, anchored
    return [run, failed, state.message, anchored]


# --------------------------------------------------------------------------- controls


def _plant_controls(control: Canaries, tempdir: Path) -> Path:
    """Put the control canaries into each searched place, to prove each search can find them.

    Returns:
        The file planted in Prefect's result storage, for the test to remove.
    """
    from prefect.artifacts import create_markdown_artifact
    from prefect.events import emit_event
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    create_markdown_artifact(f"# control\n\n{control.note}", key="phi-canary-control")
    emit_event(
        event="custody.test.phi-canary-control",
        resource={"prefect.resource.id": f"custody.test.control.{control.mrn()}"},
        payload={"note": control.note, "value": str(control.values["hl7"])},
    )
    logging.getLogger("custody.test.canary").warning("control %s", control.family)
    print(f"control {control.given}")
    os.write(2, f"control {control.mrn()}\n".encode())  # a child process would write so
    (tempdir / "control.txt").write_text(control.address)
    storage = Path(PREFECT_LOCAL_STORAGE_PATH.value())
    storage.mkdir(parents=True, exist_ok=True)
    stored = storage / f"phi-canary-control-{os.getpid()}"
    stored.write_text(control.note)
    _gx_control(control)
    return stored


def _gx_control(control: Canaries) -> None:
    """A GX validation that keeps unexpected values (COMPLETE), in a context the spy records."""
    import great_expectations as gx
    import pandas as pd

    from custody.quality import tables

    context = tables.ephemeral_context()
    source = context.data_sources.add_pandas("control")
    batch = source.add_dataframe_asset("frame").add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(gx.ExpectationSuite(name="control"))
    suite.add_expectation(gx.expectations.ExpectColumnValuesToBeInSet(column="mrn", value_set=[]))
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name="control", data=batch, suite=suite)
    )
    frame = pd.DataFrame({"mrn": [control.mrn()]})
    validation.run(batch_parameters={"dataframe": frame}, result_format="COMPLETE")


def _persisted_events(since: datetime, control: Canaries) -> list[dict[str, Any]]:
    """Every event stored since the test began, read back once the control event is stored.

    Events reach the database through the client's worker and the server's persister (batched
    every few seconds), in order: once the control event is readable, all before it are too.
    """
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30, at_exit=False)
    EventsWorker.drain_all(timeout=30, at_exit=False)
    with get_client(sync_client=True) as client:
        window = EventOccurredFilter(since=since, until=datetime.now(UTC) + timedelta(minutes=5))
        probe = EventFilter(
            occurred=window, event=EventNameFilter(name=["custody.test.phi-canary-control"])
        )
        deadline = time.monotonic() + 60
        while not client.read_events(filter=probe, limit=1).events:
            assert time.monotonic() < deadline, "the control event was never stored"
            time.sleep(0.25)
        page = client.read_events(filter=EventFilter(occurred=window), limit=50)
        events = list(page.events)
        while page.next_page:
            page = client.read_events_page(page.next_page)
            events += page.events
    return [e.model_dump(mode="json") for e in events]


# --------------------------------------------------------------------------- the places


def _database_dir() -> Path:
    """The directory of the test server's SQLite file (with its -wal and -shm)."""
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    url = PREFECT_SERVER_DATABASE_CONNECTION_URL.value()
    assert url and url.startswith("sqlite"), f"expected the harness's SQLite database, got {url}"
    database = Path(url.split(":///", 1)[1])
    assert database.is_file(), database
    return database.parent


def _scan_prefect_home(scanner: Scanner) -> list[Hit]:
    from prefect.settings import PREFECT_HOME, PREFECT_LOCAL_STORAGE_PATH

    hits = scanner.scan_tree(Path(PREFECT_HOME.value()))
    storage = Path(PREFECT_LOCAL_STORAGE_PATH.value())
    if not storage.is_relative_to(Path(PREFECT_HOME.value())):
        hits += scanner.scan_tree(storage)
    return hits


def _scan_gx(scanner: Scanner, contexts: list[Any]) -> list[Hit]:
    """The in-memory stores (suites, validation results, definitions) of every GX context.

    The ingestion's gates build them. The migrated tables here all have primary keys, so their
    gate reads uniqueness and NOT NULL from the target's constraints and counts rows in SQL:
    no GX context, so nothing of a migration can reach a GX store.
    """
    assert len(contexts) >= 2, "expected the GX gates of the lab ingestion"
    hits = []
    for number, context in enumerate(contexts):
        for name, store in context.stores.items():
            held = getattr(store.store_backend, "_store", None)
            assert held is not None, f"GX store {name} is not in memory"
            hits += scanner.scan_text(repr(held), f"gx context {number} {name}")
    return hits


def _scan_server_output(scanner: Scanner) -> list[Hit]:
    """The test server's stdout/stderr, when they are files (pytest's capture) and not a tty."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer._instances.get(None)
    process = getattr(server, "server_process", None)
    assert process is not None, "the Prefect test server process is not known"
    hits = []
    for fd in (1, 2):
        path = Path(f"/proc/{process.pid}/fd/{fd}")
        try:
            if stat.S_ISREG(path.stat().st_mode):
                hits += scanner.scan_file(path, f"prefect server fd {fd}")
                scanner.server_files += 1
        except OSError:
            continue
    return hits


def _summary(leaks: dict[str, list[Hit]]) -> str:
    """Per place: how many hits of which needles, and the distinct excerpts (a few)."""
    lines = []
    for place, hits in leaks.items():
        if not hits:
            continue
        needles = sorted({h.needle for h in hits})
        lines.append(f"- {place}: {len(hits)} hits ({', '.join(needles)})")
        excerpts = dict.fromkeys(" ".join(h.excerpt.split()) for h in hits)
        lines += [f"    …{e}…" for e in list(excerpts)[:4]]
    return "\n".join(lines)


def _dump(value: Any) -> Any:
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


# --------------------------------------------------------------------------- custody's store


def _custody_store_holds_phi_only_where_it_must(scanner: Scanner, store: Engine) -> None:
    """Patient references belong in PHI-access events and lab results; nowhere else here."""
    with store.connect() as conn:
        events = conn.execute(select(audit_log)).mappings().all()
        reasons = conn.execute(select(lab_quarantine.c.reason)).all()
        reports = conn.execute(select(compliance_reports)).mappings().all()
        criticals = conn.execute(select(critical_results)).mappings().all()
        # source_file is the sender's file name, which may itself be PHI (issue 15 item 5):
        # it stays in the store (to find the file) and never reaches Prefect (scanned above).
        files = conn.execute(text("SELECT format, status FROM lab_files")).all()
    pipeline = [dict(e) for e in events if not e["action"].startswith("phi.")]
    actions = {e["action"].split(".")[0] for e in pipeline}
    assert actions >= {"data", "lab", "compliance", "hl7v2", "fhir", "csv"}, actions
    app = [e for e in events if e["action"].startswith("phi.")]
    assert len(app) == 5 and all(e["resource_id"] == scanner.canaries.mrn() for e in app)
    hits = scanner.scan_json(pipeline, "audit_log (pipeline events)")
    hits += scanner.scan_json([r for (r,) in reasons], "lab_quarantine.reason")
    hits += scanner.scan_json([dict(r) for r in reports], "compliance_reports")
    hits += scanner.scan_json([dict(r) for r in criticals], "critical_results")
    hits += scanner.scan_json([tuple(f) for f in files], "lab_files")
    assert not hits, "PHI canaries in custody's own records:\n" + "\n".join(map(str, hits))


def test_the_scanner_finds_each_encoding_and_nothing_else() -> None:
    c = Canaries.fresh()
    scanner = Scanner(c)

    def found(data: str | bytes) -> set[str]:
        raw = data.encode() if isinstance(data, str) else data
        return {h.needle for h in scanner.scan_bytes(raw, "test")}

    assert found(json.dumps({"name": c.given})) == {"token"}  # "Zo\u00eb…"
    assert found(c.note.upper()) == {"token"}
    assert found(html.escape(f"<b>{c.address}</b>")) == {"token"}
    assert found(quote(c.mrn())) == {"token"}
    assert found(c.family.encode("utf-16-le")) == {"token (UTF-16)"}
    for pad in range(3):
        assert "token (base64)" in found(base64.b64encode(b"x" * pad + c.note.encode()))
    born, value = c.birth_date, c.values["hl7"]
    assert found(f"PID|1||x||y||{born:%Y%m%d}|F") == {"birth date"}
    assert found(f'{{"birthDate": "{born.isoformat()}"}}') == {"birth date"}
    assert found(f"id a{born:%Y%m%d}f") == set()  # eight digits inside a hex id
    assert found(f"OBX|1|NM|x||{value}|mmol/L") == {"hl7 result value"}
    assert found(f"1{value}") == set()  # a longer number
    other = Scanner(Canaries.fresh())
    assert other.scan_text(f"{c.note} {c.mrn()} {value}", "test") == []
