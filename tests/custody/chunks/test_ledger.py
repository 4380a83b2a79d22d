from __future__ import annotations

import pytest
from sqlalchemy import Engine, select

from custody.audit import AuditLog, Keyring, verify_chain
from custody.chunks import ChunkFailedError, ChunkOutcome, ChunkStatus, JobSpec, Ledger, run_chunk
from custody.errors import JobPlanMismatchError
from custody.store.tables import dead_letters, job_chunks

SPEC = JobSpec(job_id="job-1", kind="copy", subject="src.items", key_column="id", chunk_size=10)
RANGES = [(None, 10), (10, 20), (20, 25)]
GOOD = ChunkOutcome(source_count=10, source_hash="aa", target_count=10, target_hash="aa")


def test_plan_is_stored_once_and_resumed(store: Engine) -> None:
    ledger = Ledger(store)
    first = ledger.plan(SPEC, lambda: RANGES)
    assert [(c.lower, c.upper) for c in first.chunks] == RANGES and not first.resumed
    again = ledger.plan(SPEC, lambda: pytest.fail("a stored plan must not be re-planned"))  # type: ignore[arg-type, return-value]
    assert again.resumed and again.chunks == first.chunks


def test_reusing_a_job_id_with_other_parameters_is_refused(store: Engine) -> None:
    ledger = Ledger(store)
    ledger.plan(SPEC, lambda: RANGES)
    with pytest.raises(JobPlanMismatchError, match="chunk_size=10"):
        ledger.plan(SPEC.model_copy(update={"chunk_size": 99}), lambda: RANGES)


def test_protocol_verifies_skips_and_dead_letters(store: Engine, keyring: Keyring) -> None:
    ledger, audit = Ledger(store), AuditLog(store, keyring)
    plan = ledger.plan(SPEC, lambda: RANGES)
    common = {
        "ledger": ledger,
        "audit": audit,
        "principal": "t",
        "correlation_id": "run-1",
        "final_attempt": False,
    }
    assert run_chunk(plan.chunks[0], lambda c: GOOD, **common) == GOOD  # type: ignore[arg-type]
    assert (
        run_chunk(plan.chunks[0], lambda c: pytest.fail("verified chunks are skipped"), **common)
        is None
    )  # type: ignore[arg-type]

    mismatch = GOOD.model_copy(update={"target_count": 9})
    with pytest.raises(ChunkFailedError, match="verification mismatch") as failed:
        run_chunk(plan.chunks[1], lambda c: mismatch, **common)  # type: ignore[arg-type]
    assert not failed.value.transient

    def constraint_violation(_chunk: object) -> ChunkOutcome:
        raise ValueError("duplicate key value (mrn)=(MRN0001234)")

    with pytest.raises(ChunkFailedError) as data_error:
        run_chunk(plan.chunks[2], constraint_violation, **common)  # type: ignore[arg-type]
    assert "MRN0001234" not in str(data_error.value)  # the message may reach Prefect: no values
    # Nor through its context: Prefect pickles a failed task's exception with its chain.
    assert data_error.value.__context__ is None and data_error.value.__cause__ is None

    with store.connect() as c:
        rows = {
            r.chunk_no: r
            for r in c.execute(select(job_chunks).where(job_chunks.c.job_id == "job-1"))
        }
        letters = c.execute(select(dead_letters.c.item_ref, dead_letters.c.error_type)).all()
    assert rows[0].status == ChunkStatus.VERIFIED and rows[0].attempts == 1
    assert rows[1].status == ChunkStatus.FAILED and "mismatch" in rows[1].error
    assert (
        rows[2].status == ChunkStatus.FAILED and "MRN0001234" in rows[2].error
    )  # full error stays inside
    assert sorted(letters) == [("job-1#1", "VerificationMismatch"), ("job-1#2", "ValueError")]
    assert ledger.summary("job-1") == {
        "pending": 0,
        "running": 0,
        "verified": 1,
        "failed": 2,
        "rows": 10,
    }
    assert verify_chain(store, keyring).events_checked == 3  # processed, failed, failed


def test_transient_errors_are_not_dead_lettered_until_the_last_attempt(
    store: Engine, keyring: Keyring
) -> None:
    ledger, audit = Ledger(store), AuditLog(store, keyring)
    chunk = ledger.plan(SPEC, lambda: RANGES).chunks[0]

    def lost_connection(_chunk: object) -> ChunkOutcome:
        raise ConnectionResetError("server closed the connection")

    for final in (False, True):
        with pytest.raises(ChunkFailedError) as err:
            run_chunk(
                chunk,
                lost_connection,
                ledger=ledger,
                audit=audit,
                principal="t",
                correlation_id=None,
                final_attempt=final,
            )
        assert err.value.transient
        with store.connect() as c:
            assert c.execute(select(dead_letters)).all().__len__() == (1 if final else 0)
    with store.connect() as c:
        assert (
            c.execute(select(job_chunks.c.attempts).where(job_chunks.c.chunk_no == 0)).scalar_one()
            == 2
        )


def test_a_verified_chunk_cannot_be_claimed_or_downgraded(store: Engine) -> None:
    ledger = Ledger(store)
    chunk = ledger.plan(SPEC, lambda: RANGES).chunks[0]
    assert ledger.start(chunk) == 1
    ledger.finish(chunk, GOOD)
    assert ledger.start(chunk) is None
    ledger.fail(chunk, "ValueError", "late failure from a concurrent run", dead_letter=False)
    assert ledger.status_of(chunk) is ChunkStatus.VERIFIED


def test_chunk_failures_survive_pickling() -> None:
    import pickle

    chunk = ChunkFailedError(SPEC_CHUNK, "ValueError", transient=True)
    again = pickle.loads(pickle.dumps(chunk))
    assert (again.ref, again.reason, again.transient, str(again)) == (
        chunk.ref,
        "ValueError",
        True,
        str(chunk),
    )


SPEC_CHUNK = __import__("custody.chunks", fromlist=["Chunk"]).Chunk(
    job_id="job-1", chunk_no=3, lower=1, upper=2
)
