"""migrate-tables on a two-process Dask cluster: the same verified result as on threads."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
from distributed import Client, LocalCluster, get_task_stream
from prefect_dask import DaskTaskRunner
from sqlalchemy import Engine, select

from custody.audit import Keyring, verify_chain
from custody.db import get_engine
from custody.settings import reset_settings_cache
from custody.store.tables import audit_log, job_chunks
from flows.migrate import MigrateParams, migrate_tables
from tasks.runners import build_task_runner
from tasks.runtime import reset_runtime
from tests.support.env import set_custody_env
from tests.support.pagila import table_digests
from tests.support.tables import make_items, make_keys

ITEMS, LABELS, CHUNK = 8_000, 4_000, 2_000  # 4 + 2 chunks per run


def _worker_store() -> tuple[int, str | None]:
    """On a Dask worker: its pid and the store database its own runtime connects to."""
    from tasks.runtime import runtime

    return os.getpid(), runtime().store.url.database


@pytest.fixture
def databases(
    prefect_api: str,
    pg_store: Engine,
    pg_databases,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """A source with two tables and two empty targets, named in custody's settings."""
    urls = {name: pg_databases.create(name) for name in ("src", "dst_threads", "dst_dask")}
    make_items(get_engine(urls["src"]), ITEMS)
    make_keys(get_engine(urls["src"]), LABELS, table="labels")
    set_custody_env(
        monkeypatch, store_url=pg_store.url.render_as_string(hide_password=False), connections=urls
    )
    return urls


@pytest.fixture
def dask_cluster(databases: dict[str, str]) -> Iterator[Future[LocalCluster]]:
    """Two worker processes on loopback, spawned after the CUSTODY_* settings are in place.

    Built with the very arguments a flow run's own local cluster gets, but started here so the
    test can watch it. The workers inherit this process's environment at spawn and build their
    own runtime from it (the ``tasks.runners`` preload), as remote workers do from theirs.
    It starts in the background (worker imports take seconds of CPU) while the test runs the
    thread-pool migration.
    """
    per_run = build_task_runner("dask", dask_workers=2)  # what CUSTODY_TASK_RUNNER=dask starts
    assert isinstance(per_run, DaskTaskRunner)
    with ThreadPoolExecutor(max_workers=1) as pool:
        starting = pool.submit(LocalCluster, **per_run.cluster_kwargs)
        try:
            yield starting
        finally:
            starting.result().close()


def _ledger(store: Engine, job_prefix: str) -> set[tuple[Any, ...]]:
    c = job_chunks.c
    with store.connect() as conn:
        rows = conn.execute(
            select(
                c.job_id, c.chunk_no, c.lower_key, c.upper_key, c.status,
                c.source_count, c.source_hash, c.target_count, c.target_hash,
            ).where(c.job_id.startswith(f"{job_prefix}."))
        ).all()  # fmt: skip
    return {(r[0].removeprefix(job_prefix), *r[1:]) for r in rows}


def _chunk_tasks(stream: list[dict[str, Any]]) -> list[str]:
    """Workers that ran a process-chunk task, one entry per task."""
    return [t["worker"] for t in stream if "process_chunk" in str(t["key"])]


@pytest.mark.slow
def test_migration_on_dask_equals_the_thread_run(
    databases: dict[str, str],
    dask_cluster: Future[LocalCluster],
    pg_store: Engine,
    keyring: Keyring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    params = {"source": "src", "tables": ["items", "labels"], "chunk_size": CHUNK}
    threads = migrate_tables(MigrateParams(**params, target="dst_threads", job_id="t"))
    assert threads.status == "success", threads.model_dump_json()

    cluster = dask_cluster.result(timeout=120)
    monkeypatch.setenv("CUSTODY_TASK_RUNNER", "dask")
    monkeypatch.setenv("CUSTODY_DASK_ADDRESS", cluster.scheduler_address)
    reset_settings_cache()  # the flow is imported already: the runner is chosen per run
    reset_runtime()
    with (
        Client(cluster, set_as_default=False) as client,  # not a default client: the flow must
        get_task_stream(client) as on_dask,  # find the scheduler by CUSTODY_DASK_ADDRESS
    ):
        state = migrate_tables(
            MigrateParams(**params, target="dst_dask", job_id="d"), return_state=True
        )
        places = dict(client.run(_worker_store))  # worker address -> (pid, store database)
    dask = state.result()
    assert dask.status == "success", dask.model_dump_json()

    # Same rows, table by table, in both targets and the source.
    digests = table_digests(databases["src"])
    assert set(digests) == {"items", "labels"}
    assert digests["items"][0] == ITEMS and digests["labels"][0] == LABELS
    assert table_digests(databases["dst_threads"]) == digests
    assert table_digests(databases["dst_dask"]) == digests

    # Same plan, same counts and content hashes per chunk, every chunk verified.
    ledger = _ledger(pg_store, "d")
    assert ledger == _ledger(pg_store, "t")
    assert len(ledger) == 6 and {row[4] for row in ledger} == {"verified"}
    assert [(t.verified_rows, t.chunks) for t in dask.tables] == [(ITEMS, 4), (LABELS, 2)]
    assert all(t.quality is not None and t.quality.success for t in dask.tables)

    # Every chunk ran on a Dask worker process, and both workers took part.
    ran_on = _chunk_tasks(on_dask.data)
    assert len(ran_on) == 6 and set(ran_on) == set(places)
    pids = {places[w][0] for w in ran_on}
    assert len(pids) == 2 and os.getpid() not in pids
    # Each worker built its own runtime from CUSTODY_* and wrote to the same store.
    assert {db for _, db in places.values()} == {pg_store.url.database}

    # One audit event per chunk, carrying the flow run id across the process boundary.
    with pg_store.connect() as conn:
        events = conn.execute(
            select(audit_log.c.resource_id, audit_log.c.correlation_id).where(
                audit_log.c.action == "data.migration.chunk_processed",
                audit_log.c.resource_id.startswith("d."),
            )
        ).all()
    assert len(events) == 6 and len({ref for ref, _ in events}) == 6
    assert {run for _, run in events} == {str(state.state_details.flow_run_id)}
    assert verify_chain(pg_store, keyring).ok
