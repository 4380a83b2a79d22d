"""The per-chunk protocol: ledger first, work, verify, ledger and audit after.

Kept free of Prefect so the same protocol runs under any scheduler; ``tasks/chunks.py`` wraps it
in a Prefect task with retries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from custody.audit import AuditEvent, AuditLog, AuditStatus
from custody.chunks.ledger import Ledger, Recorder
from custody.chunks.models import Chunk, ChunkOutcome
from custody.chunks.retry import is_transient
from custody.errors import CustodyError, safe_error

ChunkWork = Callable[[Chunk], ChunkOutcome]
"""Does one chunk's work idempotently and returns both sides' counts and hashes."""


class ChunkFailedError(CustodyError):
    """A chunk failed; the message is PHI-free, the full error is in the ledger."""

    def __init__(self, chunk: Chunk, reason: str, *, transient: bool = False) -> None:
        """Describe the failure of ``chunk`` without quoting any data."""
        super().__init__(f"chunk {chunk.ref} failed: {reason}")
        self.chunk = chunk
        self.ref = chunk.ref
        self.reason = reason
        self.transient = transient

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuildable after pickling (Dask workers, result storage).
        return (_rebuild_failure, (self.chunk, self.reason, self.transient))


def _rebuild_failure(chunk: Chunk, reason: str, transient: bool) -> ChunkFailedError:
    return ChunkFailedError(chunk, reason, transient=transient)


def run_chunk(
    chunk: Chunk,
    work: ChunkWork,
    *,
    ledger: Ledger,
    audit: AuditLog,
    principal: str,
    correlation_id: str | None,
    final_attempt: bool,
) -> ChunkOutcome | None:
    """Run one chunk unless the ledger already shows it verified (then return None).

    Raises:
        ChunkFailedError: the work raised or did not verify. ``transient`` says whether a retry
            may help; on the final attempt (or a non-transient error) a dead letter is filed.
    """
    attempt = ledger.start(chunk)
    if attempt is None:  # verified by an earlier run (or a concurrent one)
        return None
    chunk = chunk.model_copy(update={"attempt": attempt})

    def recorder(status: AuditStatus, **details: Any) -> Recorder:
        event = _event(chunk, principal, correlation_id, status, attempt=attempt, **details)
        return lambda connection: audit.append_in(connection, [event])

    try:
        outcome = work(chunk)
    except Exception as exc:
        transient = is_transient(exc)
        last = final_attempt or not transient
        ledger.fail(
            chunk,
            type(exc).__name__,
            str(exc),  # the full error stays in custody's own store
            dead_letter=last,
            record=recorder(AuditStatus.FAILED, error=safe_error(exc)) if last else None,
        )
        failed: ChunkFailedError | None = ChunkFailedError(
            chunk, safe_error(exc), transient=transient
        )
    else:
        failed = None
    if failed is not None:
        # Raised outside the except block, so no __context__ links it to the original error,
        # whose message may quote rows: Prefect pickles failed tasks' exceptions whole.
        raise failed
    if not outcome.verified:
        reason = (
            f"verification mismatch: source {outcome.source_count} rows/{outcome.source_hash}, "
            f"target {outcome.target_count} rows/{outcome.target_hash}"
        )
        ledger.fail(
            chunk,
            "VerificationMismatch",
            reason,
            dead_letter=True,
            outcome=outcome,
            record=recorder(
                AuditStatus.FAILED, error=reason, **outcome.model_dump(exclude={"details"})
            ),
        )
        raise ChunkFailedError(chunk, reason, transient=False)
    facts = {**outcome.model_dump(exclude={"details"}), **outcome.details}
    ledger.finish(chunk, outcome, record=recorder(AuditStatus.SUCCESS, **facts))
    return outcome


def _event(
    chunk: Chunk,
    principal: str,
    correlation_id: str | None,
    status: AuditStatus,
    **details: Any,
) -> AuditEvent:
    ok, failed = chunk.audit_verbs
    verb = ok if status is AuditStatus.SUCCESS else failed
    return AuditEvent(
        principal=principal,
        action=f"{chunk.audit_prefix}.{verb}",
        status=status,
        resource_type="job_chunk",
        resource_id=chunk.ref,
        correlation_id=correlation_id,
        details={"job_id": chunk.job_id, "chunk_no": chunk.chunk_no, **details},
    )
