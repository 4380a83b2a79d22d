"""Choosing the task runner from settings, per flow run, and what crosses to Dask workers."""

from __future__ import annotations

from datetime import UTC, datetime

import cloudpickle
import pytest
from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner
from sqlalchemy import Engine

from custody.archive.work import ArchiveRangeWork, ArchiveTarget
from custody.chunks import Chunk, ChunkFailedError, ChunkOutcome
from custody.db import get_engine
from custody.errors import ConfigError
from custody.migration.catalog import describe_table
from custody.settings import get_settings, reset_settings_cache
from custody.storage import LockMode
from custody.transfer.generic import CopyRangeWork
from flows.archive import archive_to_s3
from flows.copy_table import copy_table
from flows.examples.export_table import export_table
from flows.ingest_lab_results import ingest_lab_results
from flows.migrate import migrate_tables
from flows.replay_dead_letters import replay_dead_letters
from tasks.migration import chunk_work
from tasks.runners import (
    SettingsTaskRunner,
    build_task_runner,
    runner_from_settings,
    with_task_runner,
)
from tests.support.env import set_custody_env
from tests.support.tables import make_keys


def _settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(f"CUSTODY_{name.upper()}", value)
    reset_settings_cache()


def test_threads_by_default_and_dask_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(runner_from_settings(), ThreadPoolTaskRunner)  # today's behaviour

    _settings(monkeypatch, task_runner="dask", dask_workers="3")
    local = runner_from_settings()
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_class == "distributed.LocalCluster"
    assert local.cluster_kwargs == {
        "n_workers": 3,
        "processes": True,
        "threads_per_worker": 1,
        "host": "127.0.0.1",
        "dashboard_address": None,
        "preload": ["tasks.runners"],
    }

    _settings(monkeypatch, dask_address="tls://10.0.0.5:8786")
    remote = runner_from_settings()
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tls://10.0.0.5:8786"
    assert remote.cluster_class is None and remote.cluster_kwargs == {}


@pytest.mark.parametrize(
    ("name", "value", "field"),
    [
        ("task_runner", "spark", "CUSTODY_TASK_RUNNER"),
        ("dask_address", "http://dask.example:8786", "CUSTODY_DASK_ADDRESS"),
        ("dask_address", "10.0.0.5", "CUSTODY_DASK_ADDRESS"),
        ("dask_workers", "0", "CUSTODY_DASK_WORKERS"),
    ],
)
def test_bad_runner_settings_fail_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str
) -> None:
    _settings(monkeypatch, **{name: value})
    with pytest.raises(ConfigError, match=field):
        get_settings()


def test_build_refuses_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="unknown task runner 'ray'"):
        build_task_runner("ray")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 1"):
        build_task_runner("dask", dask_workers=0)


def test_the_flows_choose_their_runner_per_run() -> None:
    chunked_flows = (
        migrate_tables, archive_to_s3, copy_table, ingest_lab_results, replay_dead_letters,
        export_table,
    )  # fmt: skip
    for chunked in chunked_flows:
        assert chunked.task_runner == SettingsTaskRunner(), chunked.name
    with pytest.raises(RuntimeError, match="only chooses a runner"):
        SettingsTaskRunner().submit(None, {})
    forced = with_task_runner(migrate_tables, build_task_runner("dask", dask_address="h:8786"))
    assert isinstance(forced.task_runner, DaskTaskRunner) and forced.name == migrate_tables.name
    assert migrate_tables.task_runner == SettingsTaskRunner()  # the original is unchanged


def test_what_crosses_to_a_worker_is_names_not_secrets(
    pg_databases,  # type: ignore[no-untyped-def]
    pg_store: Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, dst = pg_databases.create("src"), pg_databases.create("dst")
    make_keys(get_engine(src), 10)
    set_custody_env(
        monkeypatch,
        store_url=pg_store.url.render_as_string(hide_password=False),
        connections={"src": src, "dst": dst},
    )
    info = describe_table(get_engine(src), "public", "items")
    chunk = Chunk(job_id="j", chunk_no=0, lower=None, upper=10)
    archive = ArchiveRangeWork(
        database="src",
        policy="p",
        info=info,
        time_column="at",
        cutoff=datetime(2026, 1, 1, tzinfo=UTC),
        classification="phi",
        regulation="HIPAA",
        target=ArchiveTarget(
            store_url="s3://bucket/prefix", prefix="p", lock=LockMode.NONE, keep_days=1
        ),
    )
    crossing: list[object] = [
        chunk_work("src", "dst", info, "hash", False),  # the PostgreSQL COPY work
        CopyRangeWork("src", "dst", "items", "id"),
        archive,
        chunk,
        ChunkOutcome(source_count=1, source_hash="a", target_count=1, target_hash="a"),
    ]
    for item in crossing:
        payload = cloudpickle.dumps(item)
        assert cloudpickle.loads(payload) == item, type(item).__name__
        for url in (src, dst, pg_store.url.render_as_string(hide_password=False)):
            assert url.encode() not in payload, type(item).__name__
    failure = cloudpickle.loads(cloudpickle.dumps(ChunkFailedError(chunk, "CheckViolation")))
    assert (failure.ref, failure.reason, failure.transient) == ("j#0", "CheckViolation", False)


@flow(task_runner=SettingsTaskRunner())
def _noop() -> str:
    return "ran"


def test_a_bad_runner_setting_stops_the_run_by_name(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _noop() == "ran"
    _settings(monkeypatch, task_runner="spark")
    with pytest.raises(ConfigError, match="CUSTODY_TASK_RUNNER"):
        _noop()
