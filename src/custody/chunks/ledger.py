"""The job_chunks ledger: the durable record that makes every chunked job resumable."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, case, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from custody.chunks.models import (
    Chunk,
    ChunkOutcome,
    ChunkStatus,
    JobPlan,
    JobSpec,
    KeyValue,
)
from custody.chunks.planner import KeyRange
from custody.chunks.recipe import recipe_for
from custody.db import utc_now, write_transaction
from custody.errors import JobPlanMismatchError
from custody.store.tables import dead_letters, job_chunks, jobs

Recorder = Callable[[Connection], object]
"""Extra writes that must commit together with a ledger update (e.g. the chunk's audit event)."""


def _counts(outcome: ChunkOutcome) -> dict[str, Any]:
    return {
        "source_count": outcome.source_count,
        "source_hash": outcome.source_hash,
        "target_count": outcome.target_count,
        "target_hash": outcome.target_hash,
    }


def _dump_key(value: KeyValue | None) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _load_key(value: str | None) -> KeyValue | None:
    if value is None:
        return None
    loaded = orjson.loads(value)
    assert isinstance(loaded, int | str)
    return loaded


class Ledger:
    """Reads and writes job plans, chunk states and dead letters in custody's store."""

    def __init__(self, engine: Engine) -> None:
        """Use the store behind ``engine`` (already upgraded)."""
        self.engine = engine

    def plan(self, spec: JobSpec, make_ranges: Callable[[], list[KeyRange]]) -> JobPlan:
        """Return the job's stored plan, creating it with ``make_ranges`` on first use.

        Raises:
            JobPlanMismatchError: the job id exists with a different kind, subject, key or size.
        """
        existing = self._load(spec)
        if existing is not None:
            return existing
        ranges = make_ranges()
        now = utc_now()
        try:
            with write_transaction(self.engine) as connection:
                connection.execute(
                    insert(jobs).values(
                        job_id=spec.job_id,
                        kind=spec.kind,
                        subject=spec.subject,
                        key_column=spec.key_column,
                        chunk_size=spec.chunk_size,
                        total_chunks=len(ranges),
                        planned_at=now,
                    )
                )
                if ranges:
                    connection.execute(
                        insert(job_chunks),
                        [
                            {
                                "job_id": spec.job_id,
                                "chunk_no": n,
                                "lower_key": _dump_key(lo),
                                "upper_key": _dump_key(hi),
                                "status": ChunkStatus.PENDING.value,
                                "attempts": 0,
                            }
                            for n, (lo, hi) in enumerate(ranges)
                        ],
                    )
        except IntegrityError:
            # Another process planned the same job at the same moment: use its plan.
            raced = self._load(spec)
            if raced is None:
                raise
            return raced
        chunks = tuple(
            Chunk(
                job_id=spec.job_id,
                chunk_no=n,
                lower=lo,
                upper=hi,
                audit_prefix=spec.audit_prefix,
                audit_verbs=spec.audit_verbs,
            )
            for n, (lo, hi) in enumerate(ranges)
        )
        return JobPlan(spec=spec, chunks=chunks)

    def _load(self, spec: JobSpec) -> JobPlan | None:
        with self.engine.connect() as connection:
            job = connection.execute(select(jobs).where(jobs.c.job_id == spec.job_id)).first()
            if job is None:
                return None
            stored = (job.kind, job.subject, job.key_column, job.chunk_size)
            wanted = (spec.kind, spec.subject, spec.key_column, spec.chunk_size)
            if stored != wanted:
                raise JobPlanMismatchError(
                    f"job {spec.job_id!r} was planned as kind={job.kind}, subject={job.subject}, "
                    f"key={job.key_column}, chunk_size={job.chunk_size}; re-use it with the same "
                    "parameters to resume, or choose a new job id"
                )
            rows = connection.execute(
                select(job_chunks)
                .where(job_chunks.c.job_id == spec.job_id)
                .order_by(job_chunks.c.chunk_no)
            ).all()
        chunks = tuple(
            Chunk(
                job_id=spec.job_id,
                chunk_no=r.chunk_no,
                lower=_load_key(r.lower_key),
                upper=_load_key(r.upper_key),
                audit_prefix=spec.audit_prefix,
                audit_verbs=spec.audit_verbs,
            )
            for r in rows
        )
        verified = frozenset(r.chunk_no for r in rows if r.status == ChunkStatus.VERIFIED)
        return JobPlan(spec=spec, chunks=chunks, verified=verified, resumed=True)

    def status_of(self, chunk: Chunk) -> ChunkStatus:
        """Current ledger status of one chunk."""
        with self.engine.connect() as connection:
            status = connection.execute(
                select(job_chunks.c.status).where(*self._key(chunk))
            ).scalar_one()
        return ChunkStatus(status)

    def start(self, chunk: Chunk) -> int | None:
        """Claim a chunk in one statement: mark it running and count the attempt.

        Returns:
            The attempt number, or None when the chunk is already verified (nothing to do).
        """
        with write_transaction(self.engine) as connection:
            attempts = connection.execute(
                update(job_chunks)
                .where(*self._key(chunk), job_chunks.c.status != ChunkStatus.VERIFIED.value)
                .values(
                    status=ChunkStatus.RUNNING.value,
                    attempts=job_chunks.c.attempts + 1,
                    started_at=utc_now(),
                    finished_at=None,
                    error=None,
                )
                .returning(job_chunks.c.attempts)
            ).scalar()
        return None if attempts is None else int(attempts)

    def finish(
        self, chunk: Chunk, outcome: ChunkOutcome, *, record: Recorder | None = None
    ) -> None:
        """Mark a chunk verified with both sides' counts and hashes.

        ``record`` runs in the same transaction (the audit event of the chunk), so a crash can
        never leave a verified chunk without its event, or an event for an unverified chunk.
        """
        with write_transaction(self.engine) as connection:
            connection.execute(
                update(job_chunks)
                .where(*self._key(chunk), job_chunks.c.status != ChunkStatus.VERIFIED.value)
                .values(
                    status=ChunkStatus.VERIFIED.value,
                    error=None,
                    finished_at=utc_now(),
                    **_counts(outcome),
                )
            )
            # The chunk is done: a dead letter it left earlier is settled by this verification.
            connection.execute(
                update(dead_letters)
                .where(
                    dead_letters.c.job_id == chunk.job_id,
                    dead_letters.c.item_ref == chunk.ref,
                    dead_letters.c.replayed_at.is_(None),
                )
                .values(replayed_at=utc_now(), resolution="verified")
            )
            if record is not None:
                record(connection)

    def fail(
        self,
        chunk: Chunk,
        error_type: str,
        error: str,
        *,
        dead_letter: bool,
        outcome: ChunkOutcome | None = None,
        record: Recorder | None = None,
    ) -> None:
        """Record a failed attempt; on the final one, also file a dead letter for replay."""
        now = utc_now()
        with write_transaction(self.engine) as connection:
            connection.execute(
                update(job_chunks)
                .where(*self._key(chunk), job_chunks.c.status != ChunkStatus.VERIFIED.value)
                .values(
                    status=ChunkStatus.FAILED.value,
                    error=f"{error_type}: {error}",
                    finished_at=now,
                    **(_counts(outcome) if outcome is not None else {}),
                )
            )
            if record is not None:
                record(connection)
            if not dead_letter:
                return
            attempts = connection.execute(
                select(job_chunks.c.attempts).where(*self._key(chunk))
            ).scalar_one()
            open_letter = connection.execute(
                select(dead_letters.c.id).where(
                    dead_letters.c.job_id == chunk.job_id,
                    dead_letters.c.item_ref == chunk.ref,
                    dead_letters.c.replayed_at.is_(None),
                )
            ).scalar()
            values: dict[str, Any] = {
                "error_type": error_type,
                "error": error,
                "attempts": attempts,
                "failed_at": now,
            }
            if open_letter is None:
                connection.execute(
                    insert(dead_letters).values(job_id=chunk.job_id, item_ref=chunk.ref, **values)
                )
            else:
                connection.execute(
                    update(dead_letters).where(dead_letters.c.id == open_letter).values(**values)
                )

    def remember_work(self, spec: JobSpec, work: object) -> bool:
        """Record how to rebuild the job's chunk work, so its dead letters can be replayed.

        Returns:
            False when the work has no exact recipe (a plain function, a class outside custody):
            its dead letters can then only be redone by re-running the job's flow.
        """
        recipe = recipe_for(spec, work)
        if recipe is None:
            return False
        with write_transaction(self.engine) as connection:
            connection.execute(
                update(jobs)
                .where(jobs.c.job_id == spec.job_id)
                .values(work=recipe.model_dump(mode="json"))
            )
        return True

    def has_job(self, job_id: str) -> bool:
        """The job has been planned (a run of it has begun)."""
        with self.engine.connect() as connection:
            found = connection.execute(select(jobs.c.job_id).where(jobs.c.job_id == job_id))
            return found.first() is not None

    def family_summary(self, job_id: str) -> dict[str, int]:
        """Chunk counts by status over a job and its sub-jobs (``<job_id>.<table>``)."""
        c = job_chunks.c
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(c.status, func.count())
                .where(or_(c.job_id == job_id, c.job_id.startswith(f"{job_id}.", autoescape=True)))
                .group_by(c.status)
            ).all()
        out = {status.value: 0 for status in ChunkStatus}
        out.update({status: int(count) for status, count in rows})
        return out

    def summary(self, job_id: str) -> dict[str, int]:
        """Chunk counts by status, plus rows verified so far."""
        c = job_chunks.c
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(
                    c.status,
                    func.count(),
                    func.coalesce(
                        func.sum(
                            case((c.status == ChunkStatus.VERIFIED.value, c.target_count), else_=0)
                        ),
                        0,
                    ),
                )
                .where(c.job_id == job_id)
                .group_by(c.status)
            ).all()
        out = {status.value: 0 for status in ChunkStatus}
        out["rows"] = 0
        for status, count, verified_rows in rows:
            out[status] = int(count)
            out["rows"] += int(verified_rows)
        return out

    @staticmethod
    def _key(chunk: Chunk) -> tuple[Any, Any]:
        return (job_chunks.c.job_id == chunk.job_id, job_chunks.c.chunk_no == chunk.chunk_no)
