"""ingest-lab-results with a file's transaction cut off: connection terminated, process killed.

Six CSV files of 40 results, ingested three files per task. The third file, which carries two
critical potassium values, is stopped inside its transaction by an uncommitted row with the id
of one of its results (its upsert waits there). Then either its connection is terminated (the
task retries in the same run) or the flow process is SIGKILLed (a re-run finishes the job).
Either way every result must land exactly once, no file half, each critical result recorded
once, and the audit chain intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, func, select

from custody.audit import verify_chain
from custody.labs.claims import claim
from custody.labs.tables import critical_results, lab_files, lab_results
from custody.store.tables import audit_log
from flows.ingest_lab_results import IngestParams, ingest_lab_results
from tests.faults.conftest import KEYRING, events_per_resource, libpq_url
from tests.support.env import custody_env, set_custody_env
from tests.support.faults import (
    FaultThread,
    HeldLock,
    backends,
    terminate,
    wait_for_backends,
)
from tests.support.kill import ROOT, flow_command, kill_when

FILES, PER_FILE, CRITICAL_FILE = 6, 40, 2
HEADER = (
    "result_id,patient_ref,loinc_code,value,unit,reference_low,reference_high,status,collected_at"
)


@dataclass(frozen=True)
class Inbox:
    """The files written, and what must land from them."""

    root: Path
    expected: set[tuple[str, str, str]]  # (result id, patient, value)
    critical: set[str]


def _inbox(root: Path) -> Inbox:
    root.mkdir()
    expected: set[tuple[str, str, str]] = set()
    critical: set[str] = set()
    for f in range(FILES):
        lines = [HEADER]
        for i in range(PER_FILE):
            rid, patient = f"F{f}-R{i:03d}", f"SYN-{f * PER_FILE + i:05d}"
            value = "6.8" if f == CRITICAL_FILE and i in (5, 30) else f"4.{i % 10}"
            when = f"2026-11-0{f + 1}T08:{i:02d}:00Z"
            lines.append(f"{rid},{patient},2823-3,{value},mmol/L,3.5,5.1,final,{when}")
            expected.add((f"csv:{rid}", patient, value))
            if value == "6.8":
                critical.add(f"csv:{rid}")
        (root / f"batch-{f}.csv").write_text("\n".join(lines) + "\n")
    return Inbox(root, expected, critical)


def _params(inbox: Inbox) -> IngestParams:
    return IngestParams(source=str(inbox.root), format="csv", include=["*.csv"], chunk_size=3)


# The statement that lands a file's results, waiting on the held row: the staged upsert
# (INSERT INTO lab_results (...) SELECT ...) or the straight binary COPY lab_results (...) of a
# batch that replaces nothing it can see (the held row is not committed).
LANDING = "% lab_results (%"


def _blocking_row(store_url: str) -> HeldLock:
    """An uncommitted result with the critical file's first id: that file's upsert waits on it."""
    return HeldLock(
        store_url,
        "INSERT INTO lab_results (result_id, status, source_file, source_position, file_sha256, "
        "ingested_at) VALUES (%s, 'final', 'held', 'held', 'held', now())",
        (f"csv:F{CRITICAL_FILE}-R000",),
    )


def _exactly_once(store: Engine, inbox: Inbox) -> None:
    with store.connect() as c:
        landed = c.execute(
            select(lab_results.c.result_id, lab_results.c.patient_ref, lab_results.c.value_numeric)
        ).all()
        files = c.execute(
            select(lab_files.c.status, lab_files.c.results, lab_files.c.file_sha256)
        ).all()
        per_file = dict(
            c.execute(
                select(lab_results.c.file_sha256, func.count()).group_by(lab_results.c.file_sha256)
            ).all()
        )
        recorded = c.execute(
            select(critical_results.c.result_id, critical_results.c.audit_seq)
        ).all()
        detections = dict(
            c.execute(
                select(audit_log.c.seq, audit_log.c.resource_id).where(
                    audit_log.c.action == "lab.critical_result.detected"
                )
            ).all()
        )
    assert len(landed) == FILES * PER_FILE  # nothing twice
    assert {(r, p, str(v)) for r, p, v in landed} == inbox.expected  # nothing lost or altered
    assert sorted((s, n) for s, n, _ in files) == [("ingested", PER_FILE)] * FILES
    assert {sha: per_file.get(sha) for *_, sha in files} == {sha: PER_FILE for *_, sha in files}
    processed = events_per_resource(store, "csv.lab_result.processed")
    assert processed == {r: 1 for r, _, _ in inbox.expected}  # one event per result, no more
    assert sorted(r for r, _ in recorded) == sorted(inbox.critical)  # each recorded once
    assert all(detections[seq] == rid for rid, seq in recorded)  # pointing at its detection
    assert set(detections.values()) == inbox.critical  # announced (again after a cut: >= 1)
    assert verify_chain(store, KEYRING).ok


@pytest.fixture
def inbox(prefect_api: str, pg_store: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CUSTODY_LAB_INBOX_ROOTS", json.dumps([str(tmp_path)]))
    set_custody_env(monkeypatch, store_url=pg_store.url.render_as_string(hide_password=False))
    return _inbox(tmp_path / "inbox")


def test_connection_terminated_inside_a_file_transaction_then_the_task_retries(
    inbox: Inbox, pg_store: Engine
) -> None:
    store_url = libpq_url(pg_store)
    held = _blocking_row(store_url)

    def script() -> None:
        upsert = wait_for_backends(store_url, LANDING)
        with psycopg.connect(store_url) as c:  # the two files before it are in, it is not
            landed = c.execute("SELECT count(*) FROM lab_files").fetchone()
        assert landed is not None and landed[0] >= 2
        assert terminate(store_url, upsert) == 1
        held.release()

    faults = FaultThread(script)
    try:
        summary = ingest_lab_results(_params(inbox))
    finally:
        held.release()
    faults.join()
    # The retried task finds the files its failed attempt landed, and counts them as skipped.
    assert (summary.files, summary.ingested + summary.skipped, summary.rejected) == (
        FILES,
        FILES,
        0,
    )
    _exactly_once(pg_store, inbox)
    # Critical values are announced before their file commits, so the cut-off attempt announced
    # them and the retry did again (at-least-once alerting); critical_results has each once.
    detected = events_per_resource(pg_store, "lab.critical_result.detected")
    assert detected == {rid: 2 for rid in inbox.critical}


@pytest.mark.slow
def test_sigkill_inside_a_file_transaction_then_a_rerun_finishes(
    inbox: Inbox, pg_store: Engine, prefect_api: str
) -> None:
    store_url = libpq_url(pg_store)
    env = {
        **os.environ,
        **custody_env(pg_store.url.render_as_string(hide_password=False)),
        "CUSTODY_LAB_INBOX_ROOTS": json.dumps([str(inbox.root)]),
        "PREFECT_API_URL": prefect_api,
    }
    args = flow_command(
        "flows.ingest_lab_results", "ingest_lab_results", "IngestParams",
        _params(inbox).model_dump(mode="json"),
    )  # fmt: skip
    held = _blocking_row(store_url)
    try:
        kill_when(args, env, lambda: bool(backends(store_url, LANDING)))
    finally:
        held.release()
    with psycopg.connect(store_url) as c:
        before = c.execute("SELECT count(*) FROM lab_files").fetchone()
    assert before is not None and 2 <= before[0] < FILES  # killed mid-batch

    summary = ingest_lab_results(_params(inbox))
    assert (summary.files, summary.skipped, summary.ingested) == (
        FILES, before[0], FILES - before[0],
    )  # fmt: skip
    # The killed run never reached its gate: the files it landed are gated by this one.
    assert (summary.gated_files, summary.quality) == (FILES, "pass")
    _exactly_once(pg_store, inbox)


def test_issue_15_item_10_two_overlapping_runs_share_the_inbox_and_both_succeed(
    inbox: Inbox, pg_store: Engine, prefect_api: str
) -> None:
    """Issue 15 item 10: two ingest runs at once on one inbox; neither fails, nothing twice.

    A third, slow run is simulated by holding the claim on one file throughout: both runs
    must skip it (claimed), and it lands once the claim is released.
    """
    env = {
        **os.environ,
        **custody_env(pg_store.url.render_as_string(hide_password=False)),
        "CUSTODY_LAB_INBOX_ROOTS": json.dumps([str(inbox.root)]),
        "PREFECT_API_URL": prefect_api,
    }
    args = flow_command(
        "flows.ingest_lab_results", "ingest_lab_results", "IngestParams",
        _params(inbox).model_dump(mode="json"),
    )  # fmt: skip
    held = hashlib.sha256((inbox.root / f"batch-{CRITICAL_FILE}.csv").read_bytes()).hexdigest()
    with claim(pg_store, held) as taken:
        assert taken
        runs = [subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
                for _ in range(2)]  # fmt: skip
        outputs = [r.communicate(timeout=600)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outputs
    first, second = (json.loads(o.split("RESULT", 1)[1]) for o in outputs)
    assert first["files"] == second["files"] == FILES
    assert first["ingested"] + second["ingested"] == FILES - 1  # each landed by exactly one
    # The held file is skipped by both; a run may also find files the other run holds just then.
    assert first["claimed"] >= 1 and second["claimed"] >= 1
    for run in (first, second):  # every file was landed, found landed, or found claimed
        assert run["ingested"] + run["skipped"] + run["claimed"] == FILES, run
    assert first["rejected"] == second["rejected"] == 0
    last = ingest_lab_results(_params(inbox))  # the claim released: the held file lands
    assert (last.ingested, last.skipped, last.claimed) == (1, FILES - 1, 0)
    _exactly_once(pg_store, inbox)
