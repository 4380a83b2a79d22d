"""Approval of destructive runs: an archive with deletion pauses until an approver answers."""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path

import psycopg
import pytest
from prefect import flow
from sqlalchemy import Engine

from custody.audit import Keyring, verify_chain
from flows.archive import ArchiveParams, RetentionPolicy, archive_to_s3
from tasks.approval import ApprovalRequest, await_approval
from tests.support.approval import Background, audit_rows, flow_run_state, paused_run, resume
from tests.support.artifacts import read_artifacts
from tests.support.env import TEST_KEYS, set_custody_env
from tests.support.labs import make_lab_results
from tests.support.pagila import table_digests

KEYRING = Keyring("k1", {k: v.encode() for k, v in TEST_KEYS.items()})
ROWS = 6_000  # all collected on 2026-01-01, so all before the cutoff


@pytest.fixture
def ehr(
    prefect_api: str,
    pg_store: Engine,
    pg_databases,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> str:
    """A hospital database ``ehr`` with lab results, and a local directory as object store."""
    url = pg_databases.create("ehr")
    monkeypatch.setenv("CUSTODY_APPROVAL_POLL_SECONDS", "1")
    monkeypatch.setenv("CUSTODY_OBJECT_STORE_URL", (tmp_path / "objects").as_uri())
    set_custody_env(
        monkeypatch,
        store_url=pg_store.url.render_as_string(hide_password=False),
        connections={"ehr": url},
    )
    make_lab_results(url, ROWS)
    return url


def archive_params(job_id: str) -> ArchiveParams:
    policy = RetentionPolicy(
        name="lab_results",
        table="lab_results",
        timestamp_column="collected_at",
        cutoff=date(2026, 1, 2),
    )
    return ArchiveParams(
        database="ehr", policies=[policy], batch_size=2_000, require_approval=True, job_id=job_id
    )


def _rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM lab_results").fetchone()
    return int(row[0]) if row else -1


@flow
def ask(request: ApprovalRequest, timeout_s: int) -> str:
    """The approval step alone, for what does not need a whole archive run."""
    return await_approval(request, timeout_s).outcome


@pytest.mark.slow
def test_archive_deletes_only_after_an_approver_says_yes(
    ehr: str, pg_store: Engine, tmp_path: Path
) -> None:
    before = table_digests(ehr)

    denied = Background(lambda: archive_to_s3(archive_params("appr-no"), return_state=True))
    run_id = paused_run(pg_store, "appr-no", denied)
    refused = resume(run_id, {"approver": "Not A User", "approved": True})
    assert refused["status"] == "REJECT" and "approver" in refused["details"]["reason"]
    assert flow_run_state(run_id)["type"] == "PAUSED"  # the server checked the input's schema
    assert resume(run_id, {"approver": "jdoe", "reason": "not tonight"})["status"] == "ACCEPT"
    state = denied.result()
    assert state.is_cancelled() and "denied by jdoe" in (state.message or "")
    assert table_digests(ehr) == before  # nothing archived, nothing deleted
    assert not (tmp_path / "objects").exists() or not any((tmp_path / "objects").rglob("*.parquet"))
    [decision] = audit_rows(pg_store, "approval.denied")
    assert (decision.principal, decision.resource_id, decision.correlation_id) == (
        "jdoe",
        "appr-no",
        run_id,
    )
    assert decision.details["reason"] == "not tonight"
    assert audit_rows(pg_store, "data.archival") == []

    approved = Background(lambda: archive_to_s3(archive_params("appr-yes")))
    run_id = paused_run(pg_store, "appr-yes", approved)
    answer = {"approver": "jdoe@hospital.org", "approved": True, "reason": "CHG-1234"}
    assert resume(run_id, answer)["status"] == "ACCEPT"
    result = approved.result()
    assert result.status == "success" and result.policies[0].rows_archived == ROWS
    assert _rows(ehr) == 0
    [granted] = audit_rows(pg_store, "approval.granted")
    assert (granted.principal, granted.resource_id, granted.correlation_id) == (
        "jdoe@hospital.org",
        "appr-yes",
        run_id,
    )
    assert granted.details["scope"]["delete_source"] is True
    [started] = audit_rows(pg_store, "data.archival.started")
    assert granted.seq < started.seq  # approved before anything was touched
    artifacts = asyncio.run(read_artifacts(flow_run_id=run_id))
    [request] = [a for a in artifacts if a.key == "approval-appr-yes"]  # rewritten, not doubled
    assert "Approved** by `jdoe@hospital.org`" in str(request.data) and "6000" in str(request.data)
    assert "paused" not in str(request.data)
    [plan] = [a for a in artifacts if a.key == "archive-plan-appr-yes"]
    assert "waiting for approval" in str(plan.data) and "dry run" not in str(plan.data)

    # Same job, same scope: the granted approval covers a re-run (e.g. after a cancellation).
    scope = granted.details["scope"]
    same = ApprovalRequest(job_id="appr-yes", flow="archive-to-s3", action="again", scope=scope)
    assert ask(same, 60) == "reused"
    # Nobody answers: the run gives up, and Prefect fails it ("never resumed").
    unanswered = ApprovalRequest(job_id="appr-late", flow="t", action="x", scope={"t": 1})
    state = ask(unanswered, 2, return_state=True)
    assert state.is_failed()
    [late] = audit_rows(pg_store, "approval.timed_out")
    assert late.resource_id == "appr-late" and late.principal == "custody"
    assert verify_chain(pg_store, KEYRING).ok
