"""Chunked work as Prefect tasks: plan once, run each chunk as a retried, cached task.

``run_chunks`` is what a flow calls: it submits chunk tasks to the flow's task runner (threads
or Dask) with at most ``max_concurrency`` in flight, keeps a progress artifact with an ETA, and
returns a ``BatchResult``. Re-running a flow with the same job id resumes it: chunks the ledger
shows verified are not run again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import task_run
from prefect.tasks import exponential_backoff

from custody.chunks import (
    BatchResult,
    Chunk,
    ChunkFailedError,
    ChunkFailure,
    ChunkOutcome,
    ChunkWork,
    JobPlan,
    JobSpec,
    plan_key_ranges,
    run_chunk,
)
from custody.errors import safe_error
from custody.identifiers import reflect_table
from custody.prefect_glue import ProgressReporter
from tasks.retry import retry_if_transient
from tasks.runtime import runtime

CHUNK_RETRIES = 3


def _chunk_run_name() -> str:
    chunk = task_run.parameters["chunk"]
    return f"chunk-{chunk.chunk_no}"


@task(
    name="plan-chunks",
    cache_policy=NO_CACHE,
    persist_result=False,
    retry_condition_fn=retry_if_transient,
    retries=2,
    retry_delay_seconds=2,
)
def plan_table_chunks(spec: JobSpec, connection: str, table: str) -> JobPlan:
    """Plan keyset chunks over a table, or load the stored plan when the job id exists."""
    rt = runtime()
    engine = rt.engine(connection)

    def make_ranges() -> list[tuple[Any, Any]]:
        return plan_key_ranges(
            engine, reflect_table(engine, table), spec.key_column, spec.chunk_size
        )

    return rt.ledger.plan(spec, make_ranges)


@task(
    name="process-chunk",
    retries=CHUNK_RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=1),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
    # No result cache: the ledger is the durable, store-scoped record of what is done. A Prefect
    # cache hit would skip the ledger and report success for a target it cannot see.
    cache_policy=NO_CACHE,
    persist_result=False,
    task_run_name=_chunk_run_name,
)
def process_chunk(chunk: Chunk, work: ChunkWork) -> ChunkOutcome | None:
    """Run one chunk through the ledger protocol; None means the ledger had it verified."""
    rt = runtime()
    return run_chunk(
        chunk,
        work,
        ledger=rt.ledger,
        audit=rt.audit,
        principal=rt.settings.principal,
        correlation_id=rt.correlation_id,
        final_attempt=task_run.run_count > CHUNK_RETRIES,
    )


def run_chunks(
    plan: JobPlan,
    work: ChunkWork,
    *,
    max_concurrency: int = 4,
    continue_on_error: bool = True,
    title: str | None = None,
    submit: Callable[..., PrefectFuture[ChunkOutcome | None]] | None = None,
) -> BatchResult:
    """Run a plan's pending chunks as tasks and gather a BatchResult. Call it inside a flow.

    Args:
        plan: from ``plan_table_chunks`` (or ``Ledger.plan``).
        work: picklable callable doing one chunk idempotently (e.g. a frozen dataclass).
        max_concurrency: chunk tasks in flight at once.
        continue_on_error: keep going after a failed chunk; otherwise stop submitting new ones
            (chunks already running finish, and everything is left resumable).
        title: progress artifact title (default: the job id).
        submit: override how a chunk task is submitted (defaults to ``process_chunk.submit``).
    """
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
    submit = submit or process_chunk.submit
    runtime().ledger.remember_work(plan.spec, work)  # so replay-dead-letters can rebuild it
    progress = ProgressReporter(title or plan.spec.job_id, total=len(plan.chunks))
    skipped = len(plan.verified)
    if skipped:
        progress.advance(skipped, resumed=True)
    successful = rows = 0
    failures: list[ChunkFailure] = []
    waiting = iter(plan.pending)
    in_flight: dict[PrefectFuture[ChunkOutcome | None], Chunk] = {}

    def submit_next() -> None:
        chunk = next(waiting, None)
        if chunk is not None:
            in_flight[submit(chunk, work)] = chunk

    for _ in range(max_concurrency):
        submit_next()
    while in_flight:
        future = next(as_completed(list(in_flight)))
        chunk = in_flight.pop(future)
        outcome = future.result(raise_on_failure=False)
        if isinstance(outcome, BaseException):
            reason = (
                outcome.reason if isinstance(outcome, ChunkFailedError) else safe_error(outcome)
            )
            failures.append(ChunkFailure(ref=chunk.ref, error=reason))
        elif outcome is None:
            skipped += 1
        else:
            successful += 1
            rows += outcome.target_count
        progress.advance(1, rows=rows, failed=len(failures))
        if continue_on_error or not failures:
            submit_next()
    failures += [
        ChunkFailure(ref=c.ref, error="not run: stopped after an earlier failure") for c in waiting
    ]
    return BatchResult(
        total=len(plan.chunks),
        successful=successful,
        skipped=skipped,
        failed=len(failures),
        rows=rows,
        failures=failures,
    )
