"""Dead letters on both store engines: listing, what can be replayed, settling, re-run closing."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select

from custody.audit import AuditLog, Keyring, verify_chain
from custody.chunks import ChunkOutcome, JobSpec, Ledger, ReplayRefusedError
from custody.chunks.dead_letters import open_dead_letters, replay_plan, settle_dead_letters
from custody.store.tables import audit_log, dead_letters
from custody.transfer.generic import CopyRangeWork

RANGES = [(None, 10), (10, 20), (20, 25)]
GOOD = ChunkOutcome(source_count=10, source_hash="aa", target_count=10, target_hash="aa")


def spec(job_id: str, kind: str = "copy") -> JobSpec:
    return JobSpec(job_id=job_id, kind=kind, subject="s", key_column="id", chunk_size=10,
                   audit_prefix="data.copy")  # fmt: skip


def test_letters_are_listed_replayed_and_closed(store: Engine, keyring: Keyring) -> None:
    ledger = Ledger(store)
    work = CopyRangeWork("src", "dst", "items", "id")
    plans = {job: ledger.plan(spec(job), lambda: RANGES) for job in ("m-1.items", "m-1x", "m-2")}
    assert ledger.remember_work(spec("m-1.items"), work)
    assert not ledger.remember_work(spec("m-1x"), lambda chunk: GOOD)  # no recipe: not replayable
    for plan in plans.values():
        ledger.start(plan.chunks[1])
        ledger.fail(plan.chunks[1], "CheckViolation", "row (k12345) refused", dead_letter=True)

    family = open_dead_letters(store, job_id="m-1")
    assert [(d.job_id, d.chunk_no, d.replayable) for d in family] == [("m-1.items", 1, True)]
    assert {d.job_id for d in open_dead_letters(store)} == {"m-1.items", "m-1x", "m-2"}
    assert open_dead_letters(store, kind="migration") == []
    [custom] = open_dead_letters(store, job_id="m-1x")
    assert not custom.replayable and "re-run the job's flow" in (custom.why_not or "")
    with pytest.raises(ReplayRefusedError, match="m-1x"):
        replay_plan(store, "m-1x", [1])

    plan, rebuilt = replay_plan(store, "m-1.items", [1])
    assert rebuilt == work and [c.chunk_no for c in plan.chunks] == [1]
    assert plan.spec.audit_prefix == "data.copy" and not plan.verified
    ledger.start(plan.chunks[0])
    ledger.finish(plan.chunks[0], GOOD)  # verified again: the letter is settled by it
    audit = AuditLog(store, keyring)
    outcome = settle_dead_letters(
        store, audit, family, approver="jdoe", principal="custody", correlation_id="run-9"
    )
    assert outcome == {family[0].id: True}
    with store.connect() as c:
        letter = c.execute(select(dead_letters).where(dead_letters.c.id == family[0].id)).one()
        actions = c.execute(select(audit_log.c.action, audit_log.c.principal)).all()
    assert (letter.resolution, letter.replayed_by, letter.replay_run_id) == (
        "replayed",
        "jdoe",
        "run-9",
    )
    assert letter.replayed_at is not None and actions == [("dead_letter.replayed", "custody")]
    assert open_dead_letters(store, job_id="m-1") == []
    assert verify_chain(store, keyring).ok


def test_a_rerun_that_verifies_the_chunk_closes_its_letter(store: Engine) -> None:
    ledger = Ledger(store)
    chunk = ledger.plan(spec("r-1"), lambda: RANGES).chunks[2]
    ledger.start(chunk)
    ledger.fail(chunk, "ConnectionResetError", "gone", dead_letter=True)
    assert len(open_dead_letters(store, job_id="r-1")) == 1
    ledger.start(chunk)
    ledger.finish(chunk, GOOD)
    assert open_dead_letters(store, job_id="r-1") == []
    with store.connect() as c:
        assert c.execute(select(dead_letters.c.resolution)).scalar_one() == "verified"
    assert ledger.family_summary("r") == {"pending": 0, "running": 0, "verified": 0, "failed": 0}
    assert ledger.family_summary("r-1")["verified"] == 1
