"""Dead-letter replay tasks: list open letters, rebuild their chunks, settle them afterwards.

The chunks themselves run through ``tasks.chunks.run_chunks``, i.e. the normal protocol: the
ledger claims the chunk, the job's own work runs, both sides are verified, the chunk's audit
event commits with its ledger row.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from custody.chunks import JobPlan
from custody.chunks.dead_letters import (
    DeadLetter,
    open_dead_letters,
    replay_plan,
    settle_dead_letters,
)
from tasks.retry import retry_if_transient
from tasks.runtime import runtime

_NO_CACHE: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


@task(
    name="list-dead-letters",
    retry_condition_fn=retry_if_transient,
    retries=2,
    retry_delay_seconds=1,
    **_NO_CACHE,
)
def list_dead_letters(job_id: str | None, kind: str | None, limit: int) -> list[DeadLetter]:
    """Open dead letters of a job (and its sub-jobs) or of every job, with whether each can run."""
    return open_dead_letters(runtime().store, job_id=job_id, kind=kind, limit=limit)


@task(
    name="prepare-replay",
    retry_condition_fn=retry_if_transient,
    retries=2,
    retry_delay_seconds=1,
    **_NO_CACHE,
)
def prepare_replay(job_id: str, chunk_nos: list[int]) -> tuple[JobPlan, Any]:
    """The job's stored plan narrowed to the dead-lettered chunks, and its recorded work."""
    return replay_plan(runtime().store, job_id, chunk_nos)


@task(
    name="settle-dead-letters",
    retry_condition_fn=retry_if_transient,
    retries=2,
    retry_delay_seconds=1,
    **_NO_CACHE,
)
def settle_replay(letters: list[DeadLetter], approver: str) -> dict[int, bool]:
    """Close the letters whose chunk now verifies and audit each letter's outcome."""
    rt = runtime()
    return settle_dead_letters(
        rt.store,
        rt.audit,
        letters,
        approver=approver,
        principal=rt.settings.principal,
        correlation_id=rt.correlation_id,
    )
