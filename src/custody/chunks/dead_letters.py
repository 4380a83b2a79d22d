"""Dead letters: list the open ones, rebuild their chunks for replay, and settle them.

A dead letter is a chunk whose last attempt failed for good. It stays open (``replayed_at`` is
NULL) until its chunk verifies, by a re-run of its job (``resolution = 'verified'``, see
``Ledger.finish``) or by the replay flow (``'replayed'``, with the approver and the run).
What leaves this module for Prefect is PHI-free: job ids, chunk numbers, the exception type and
counts. The full error text stays in the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Engine, or_, select, update

from custody.audit import AuditEvent, AuditLog, AuditStatus
from custody.chunks.ledger import Ledger
from custody.chunks.models import ChunkStatus, JobPlan, JobSpec
from custody.chunks.recipe import ReplayRefusedError, WorkRecipe, load_work
from custody.db import utc_now, write_transaction
from custody.store.tables import dead_letters, job_chunks, jobs


class DeadLetter(BaseModel):
    """One open dead letter, as the replay plan shows it (no error text: it may quote data)."""

    model_config = ConfigDict(frozen=True)

    id: int
    job_id: str
    chunk_no: int
    kind: str | None
    error_type: str
    attempts: int
    failed_at: datetime
    replayable: bool
    why_not: str | None = None

    @property
    def ref(self) -> str:
        """The chunk reference used in the ledger and audit events."""
        return f"{self.job_id}#{self.chunk_no}"


def _chunk_no(item_ref: str) -> int:
    return int(item_ref.rpartition("#")[2])


def _why_not_replayable(work: Any) -> str | None:
    if work is None:
        return "no chunk work recorded for this job (planned before replay existed, or custom " \
            "work): re-run the job's flow with the same job id"  # fmt: skip
    try:
        load_work(WorkRecipe.model_validate(work))
    except (ReplayRefusedError, ValueError) as exc:
        return str(exc)
    return None


def open_dead_letters(
    engine: Engine, job_id: str | None = None, kind: str | None = None, limit: int = 1_000
) -> list[DeadLetter]:
    """Open dead letters, oldest job first.

    Args:
        engine: custody's store.
        job_id: a job id, or a flow-level job id whose sub-jobs (``<job_id>.<table>``) to take.
        kind: only jobs of this kind (``migration``, ``copy``, ``archival``, ...).
        limit: at most this many letters.
    """
    query = (
        select(
            dead_letters.c.id,
            dead_letters.c.job_id,
            dead_letters.c.item_ref,
            dead_letters.c.error_type,
            dead_letters.c.attempts,
            dead_letters.c.failed_at,
            jobs.c.kind,
            jobs.c.work,
        )
        .select_from(dead_letters.outerjoin(jobs, jobs.c.job_id == dead_letters.c.job_id))
        .where(dead_letters.c.replayed_at.is_(None))
        .order_by(dead_letters.c.job_id, dead_letters.c.id)
        .limit(limit)
    )
    if job_id is not None:
        query = query.where(
            or_(
                dead_letters.c.job_id == job_id,
                dead_letters.c.job_id.startswith(f"{job_id}.", autoescape=True),
            )
        )
    if kind is not None:
        query = query.where(jobs.c.kind == kind)
    with engine.connect() as connection:
        rows = connection.execute(query).all()
    verdicts: dict[str, str | None] = {}
    letters = []
    for row in rows:
        if row.job_id not in verdicts:
            verdicts[row.job_id] = (
                "its job is not in the ledger"
                if row.kind is None
                else _why_not_replayable(row.work)
            )
        why_not = verdicts[row.job_id]
        letters.append(
            DeadLetter(
                id=row.id,
                job_id=row.job_id,
                chunk_no=_chunk_no(row.item_ref),
                kind=row.kind,
                error_type=row.error_type,
                attempts=row.attempts,
                failed_at=row.failed_at,
                replayable=why_not is None,
                why_not=why_not,
            )
        )
    return letters


def replay_plan(engine: Engine, job_id: str, chunk_nos: Sequence[int]) -> tuple[JobPlan, Any]:
    """The stored plan of ``job_id`` narrowed to ``chunk_nos``, and the job's chunk work.

    Raises:
        ReplayRefusedError: the job or its work recipe is missing, or the work cannot be rebuilt.
    """
    with engine.connect() as connection:
        job = connection.execute(select(jobs).where(jobs.c.job_id == job_id)).first()
    if job is None:
        raise ReplayRefusedError(f"job {job_id!r} is not in the ledger")
    why_not = _why_not_replayable(job.work)
    if why_not is not None:
        raise ReplayRefusedError(f"job {job_id!r}: {why_not}")
    recipe = WorkRecipe.model_validate(job.work)
    spec = JobSpec(
        job_id=job_id, kind=job.kind, subject=job.subject, key_column=job.key_column,
        chunk_size=job.chunk_size, audit_prefix=recipe.audit_prefix,
        audit_verbs=recipe.audit_verbs,
    )  # fmt: skip

    def never_replan() -> list[Any]:
        raise ReplayRefusedError(f"job {job_id!r} has no stored plan")

    stored = Ledger(engine).plan(spec, never_replan)
    wanted = set(chunk_nos)
    chunks = tuple(c for c in stored.chunks if c.chunk_no in wanted)
    missing = wanted - {c.chunk_no for c in chunks}
    if missing:
        raise ReplayRefusedError(f"job {job_id!r} has no chunk(s) {sorted(missing)}")
    plan = JobPlan(spec=spec, chunks=chunks, verified=stored.verified & wanted, resumed=True)
    return plan, load_work(recipe)


def settle_dead_letters(
    engine: Engine,
    audit: AuditLog,
    letters: Sequence[DeadLetter],
    *,
    approver: str,
    principal: str,
    correlation_id: str | None,
) -> dict[int, bool]:
    """Close the letters whose chunk is now verified; audit every letter, in one transaction.

    Returns:
        Letter id -> True when replayed (its chunk verified), False when it is still open.
    """
    if not letters:
        return {}
    now = utc_now()
    with write_transaction(engine) as connection:
        rows = connection.execute(
            select(job_chunks.c.job_id, job_chunks.c.chunk_no, job_chunks.c.status).where(
                job_chunks.c.job_id.in_({letter.job_id for letter in letters})
            )
        ).all()
        statuses = {(r.job_id, r.chunk_no): r.status for r in rows}
        outcome: dict[int, bool] = {}
        events = []
        for letter in letters:
            replayed = statuses.get((letter.job_id, letter.chunk_no)) == ChunkStatus.VERIFIED
            outcome[letter.id] = replayed
            if replayed:
                connection.execute(
                    update(dead_letters)
                    .where(dead_letters.c.id == letter.id)
                    .values(
                        replayed_at=now,
                        resolution="replayed",
                        replayed_by=approver,
                        replay_run_id=correlation_id,
                    )
                )
            events.append(
                AuditEvent(
                    principal=principal,
                    action="dead_letter.replayed" if replayed else "dead_letter.replay_failed",
                    status=AuditStatus.SUCCESS if replayed else AuditStatus.FAILED,
                    resource_type="job_chunk",
                    resource_id=letter.ref,
                    correlation_id=correlation_id,
                    details={
                        "dead_letter_id": letter.id,
                        "job_id": letter.job_id,
                        "chunk_no": letter.chunk_no,
                        "kind": letter.kind,
                        "approved_by": approver,
                        "error_type": letter.error_type,
                    },
                )
            )
        audit.append_in(connection, events)
    return outcome
