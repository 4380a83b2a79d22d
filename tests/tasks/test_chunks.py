"""Chunk tasks under a real Prefect server: retries, failures, resume, artifacts, no PHI."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.task_runners import ThreadPoolTaskRunner
from sqlalchemy import Engine, select

from custody.audit import verify_chain
from custody.chunks import BatchResult, JobSpec, Ledger
from custody.store.tables import dead_letters, job_chunks
from tasks.chunks import run_chunks
from tests.support.artifacts import read_artifacts
from tests.support.env import set_custody_env
from tests.support.work import ScriptedWork

RANGES = [(None, 100), *[(i, i + 100) for i in range(100, 1000, 100)]]  # 10 chunks


@flow(task_runner=ThreadPoolTaskRunner(max_workers=3))
def scripted_job(
    job_id: str, work: ScriptedWork, continue_on_error: bool = True, max_concurrency: int = 3
) -> BatchResult:
    from tasks.runtime import runtime

    spec = JobSpec(job_id=job_id, kind="test", subject="t", key_column="id", chunk_size=100)
    plan = runtime().ledger.plan(spec, lambda: list(RANGES))
    return run_chunks(
        plan,
        work,
        max_concurrency=max_concurrency,
        continue_on_error=continue_on_error,
        title=job_id,
    )


@pytest.fixture
def env(prefect_api: str, pg_store: Engine, monkeypatch: pytest.MonkeyPatch) -> Engine:
    set_custody_env(monkeypatch, store_url=pg_store.url.render_as_string(hide_password=False))
    return pg_store


async def _flow_run_details(flow_run_id: str) -> tuple[list[str], list[str]]:
    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    messages = [r.state.message or "" for r in runs if r.state]
    keys = [a.key for a in await read_artifacts(flow_run_id=flow_run_id) if a.key]
    return messages, keys


def test_failures_retries_and_resume(env: Engine, tmp_path: Path) -> None:
    work = ScriptedWork(
        str(tmp_path), data_error_chunks=frozenset({3}), transient_once_chunks=frozenset({5})
    )
    state = scripted_job("job-a", work, return_state=True)
    result = state.result()
    assert (result.total, result.successful, result.failed, result.status) == (
        10,
        9,
        1,
        "partial_failure",
    )
    assert [f.ref for f in result.failures] == ["job-a#3"]
    assert work.attempts(3) == 1  # data errors are not retried
    assert work.attempts(5) == 2  # transient errors are

    with env.connect() as c:
        ledger = {r.chunk_no: (r.status, r.attempts) for r in c.execute(select(job_chunks))}
        letters = c.execute(select(dead_letters.c.item_ref)).scalars().all()
    assert ledger[3] == ("failed", 1) and ledger[5] == ("verified", 2)
    assert letters == ["job-a#3"]

    messages, keys = asyncio.run(_flow_run_details(str(state.state_details.flow_run_id)))
    assert "job-a-progress" in keys
    assert any("chunk job-a#3 failed: ValueError" in m for m in messages)
    assert not any("MRN0099999" in m or "Canary" in m for m in messages)  # no PHI reaches Prefect

    fixed = ScriptedWork(str(tmp_path))  # the data is corrected; re-run the same job
    again = scripted_job("job-a", fixed)
    assert (again.successful, again.skipped, again.failed) == (1, 9, 0)
    assert work.attempts(3) == 2 and work.attempts(0) == 1  # only the failed chunk ran again
    assert Ledger(env).summary("job-a")["verified"] == 10
    assert verify_chain(env, __import__("tasks.runtime").runtime.runtime().audit.keyring).ok


@pytest.mark.parametrize("max_concurrency", [1, 3])
def test_stop_on_first_error(env: Engine, tmp_path: Path, max_concurrency: int) -> None:
    work = ScriptedWork(str(tmp_path), data_error_chunks=frozenset({0}))
    job_id = f"job-b{max_concurrency}"
    result = scripted_job(
        job_id, work, continue_on_error=False, max_concurrency=max_concurrency, return_state=True
    ).result()
    not_run = [f for f in result.failures if f.error.startswith("not run")]
    assert result.failed == 1 + len(not_run)
    assert result.successful + result.failed == 10
    if max_concurrency == 1:
        # One chunk at a time makes the order certain: nothing starts after the failure. With
        # more in flight, chunks that finish before the failure is known may start others.
        assert (result.successful, len(not_run)) == (0, 9)
    with env.connect() as c:
        pending = (
            c.execute(
                select(job_chunks.c.chunk_no).where(
                    job_chunks.c.job_id == job_id, job_chunks.c.status == "pending"
                )
            )
            .scalars()
            .all()
        )
    assert len(pending) == len(not_run)  # left untouched, ready to resume
