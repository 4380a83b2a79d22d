"""Where a flow's tasks run: threads in the flow's own process, or a Dask cluster.

The choice is a setting (``CUSTODY_TASK_RUNNER=threads|dask``, ``CUSTODY_DASK_ADDRESS``,
``CUSTODY_DASK_WORKERS``), read when each flow run *starts*, not when the flow module is
imported. Prefect begins every flow run with ``flow.task_runner.duplicate()``;
``SettingsTaskRunner`` answers that call with the runner the settings name. So one decorator
serves a worker that starts a fresh process per run, a long-lived ``serve`` process, and a test
or notebook that imported the flow earlier and changed the settings since (after
``reset_settings_cache()``). To force a runner for one call, ignoring the settings, use
``with_task_runner(flow, build_task_runner("dask", dask_address=...))``.

What travels to a Dask worker is what Prefect pickles for a task run: the task, its parameters
(chunk references and work descriptors holding connection *names*, never URLs or rows) and the
flow run's context. Each worker process then builds its own runtime (store, audit log, ledger)
from its own ``CUSTODY_*`` environment (``tasks/runtime.py``), so credentials and keys never
cross the wire.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NoReturn, ParamSpec, TypeVar

from prefect import Flow
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from custody.settings import Settings, TaskRunnerKind, get_settings

P = ParamSpec("P")
R = TypeVar("R")

LOOPBACK = "127.0.0.1"


def build_task_runner(
    kind: TaskRunnerKind = "threads",
    *,
    dask_address: str | None = None,
    dask_workers: int = 2,
) -> TaskRunner[Any]:
    """A task runner of the given kind, not yet started.

    Args:
        kind: ``threads`` (Prefect's thread pool in the flow's process, the default) or ``dask``.
        dask_address: an existing scheduler (``tls://host:8786``). Without one, each flow run
            starts a local cluster of ``dask_workers`` processes, bound to loopback, and stops
            it when the run ends; its workers inherit the flow process's environment.
        dask_workers: worker processes of that local cluster, one thread each (every chunk
            holds two database connections and a psql process: scale with processes).

    Raises:
        ValueError: an unknown kind, or fewer than one worker.
    """
    if kind == "threads":
        return ThreadPoolTaskRunner()
    if kind != "dask":
        raise ValueError(f"unknown task runner {kind!r}: use 'threads' or 'dask'")
    if dask_workers < 1:
        raise ValueError(f"dask_workers must be at least 1, got {dask_workers}")
    from prefect_dask import DaskTaskRunner  # imports dask: only when asked for

    if dask_address:
        runner: TaskRunner[Any] = DaskTaskRunner(address=dask_address)
        return runner
    runner = DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": dask_workers,
            "processes": True,  # real parallelism: parsing and hashing hold the GIL
            "threads_per_worker": 1,
            "host": LOOPBACK,  # a Dask scheduler runs whatever it is sent: never off-host
            "dashboard_address": None,
            "preload": [__name__],  # dask_setup below: each worker builds its runtime first
        },
    )
    return runner


def runner_from_settings(settings: Settings | None = None) -> TaskRunner[Any]:
    """The task runner the ``CUSTODY_*`` settings choose (read now, cached per process)."""
    s = settings or get_settings()
    return build_task_runner(
        s.task_runner, dask_address=s.dask_address, dask_workers=s.dask_workers
    )


class SettingsTaskRunner(TaskRunner[PrefectFuture[Any]]):
    """The flows' declared task runner: a stand-in that picks the real one per flow run.

    Prefect never submits to the runner given to ``@flow``: it calls ``duplicate()`` when a run
    starts and uses the copy. This class returns ``runner_from_settings()`` from that call, so
    the runner follows the settings of the process running the flow at that moment. On a Dask
    worker, Prefect rebuilds the flow run context with the same call: it reads that worker's
    settings, and a Dask runner made there stays idle (its client is created only on submit).
    """

    def __init__(self) -> None:
        """Nothing to configure: the settings decide at each run."""
        super().__init__()  # type: ignore[no-untyped-call]  # Prefect leaves it unannotated

    def duplicate(self) -> TaskRunner[Any]:  # type: ignore[override]  # another class: by design
        """The runner the settings choose now (Prefect starts it and submits to it)."""
        return runner_from_settings()

    def submit(
        self,
        task: Any,
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
        dependencies: dict[str, Any] | None = None,
    ) -> NoReturn:
        """Never used: Prefect submits to the runner ``duplicate()`` returned."""
        raise RuntimeError(
            "SettingsTaskRunner only chooses a runner when a flow run starts; "
            "submit tasks inside a flow run"
        )

    def __eq__(self, other: object) -> bool:
        """All instances choose the same way."""
        return isinstance(other, SettingsTaskRunner)

    def __hash__(self) -> int:
        """Consistent with ``__eq__``."""
        return hash(SettingsTaskRunner)


def with_task_runner(flow: Flow[P, R], runner: TaskRunner[Any] | None = None) -> Flow[P, R]:
    """A copy of ``flow`` whose tasks run on ``runner``, whatever the settings say later.

    Without ``runner``, the one the settings choose right now. For a flow object that is
    already imported, e.g. ``with_task_runner(migrate_tables, build_task_runner("dask",
    dask_address="tls://10.0.0.5:8786"))(params)``.
    """
    return flow.with_options(task_runner=runner or runner_from_settings())


def dask_setup(worker: object) -> None:
    """Dask preload hook (``dask worker ... --preload tasks.runners``): build the runtime first.

    Settings, the store connection and the signing keys are checked when the worker starts,
    from the worker's own ``CUSTODY_*`` environment, and the imports (Prefect, psycopg,
    SQLAlchemy: seconds of CPU) move out of the first chunk. Dask logs a failing preload
    ("Failed to start preload: tasks.runners" and the ConfigError naming the variable) and
    starts the worker anyway; the chunk tasks it runs then fail with that error and stay
    pending in the ledger, to be redone by a re-run once the worker is fixed.
    """
    import tasks.chunks  # noqa: F401  # what chunk tasks unpickle into
    from tasks.runtime import runtime

    runtime()
