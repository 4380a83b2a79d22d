"""Custody's deployments as ``prefect.yaml`` declares them, for ``serve`` (one local process).

``prefect deploy --all`` reads ``prefect.yaml`` for work-pool deployments; ``custody serve``
builds its deployments here from the very same file (names, entrypoints, parameters,
schedules, tags, concurrency), so the two cannot drift. What only a work pool needs (pool,
queue, pull steps) is ignored here: ``serve`` runs each flow run in a subprocess of its own.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment
    from prefect.schedules import Schedule

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILE = PROJECT_ROOT / "prefect.yaml"
SCHEDULES_VARIABLE = "custody_schedules_active"


@dataclass(frozen=True)
class DeploymentSpec:
    """One entry of ``prefect.yaml``'s ``deployments`` list, as custody reads it."""

    name: str
    entrypoint: str
    raw: dict[str, Any]

    @property
    def module(self) -> str:
        """``flows/archive.py:archive_to_s3`` -> ``flows.archive``."""
        path = self.entrypoint.split(":", 1)[0]
        return path.removesuffix(".py").replace("/", ".")

    @property
    def function(self) -> str:
        """The flow function's name in its module."""
        return self.entrypoint.split(":", 1)[1]

    @property
    def work_queue(self) -> str | None:
        """The queue runs of this deployment go to in the work pool (None: pool default)."""
        return (self.raw.get("work_pool") or {}).get("work_queue_name")

    def load_flow(self) -> Flow[Any, Any]:
        """Import the flow object (the entrypoint's module is importable: flows/ is installed)."""
        flow: Flow[Any, Any] = getattr(importlib.import_module(self.module), self.function)
        return flow


def load_project(path: Path = PROJECT_FILE) -> dict[str, Any]:
    """``prefect.yaml`` as a dictionary (anchors resolved), with a clear error when malformed."""
    project = yaml.safe_load(path.read_text())
    if not isinstance(project, dict) or not isinstance(project.get("deployments"), list):
        raise ValueError(f"{path} has no 'deployments' list")
    return project


def deployment_specs(project: dict[str, Any]) -> list[DeploymentSpec]:
    """Every deployment of the project, in file order."""
    specs = []
    for raw in project["deployments"]:
        if not raw.get("name") or ":" not in str(raw.get("entrypoint", "")):
            raise ValueError(f"deployment {raw.get('name')!r} needs a name and path:function")
        specs.append(DeploymentSpec(raw["name"], raw["entrypoint"], raw))
    return specs


def build_deployments(
    path: Path = PROJECT_FILE,
    only: list[str] | None = None,
    schedules_active: bool | None = None,
) -> list[RunnerDeployment]:
    """Runner deployments for ``serve``, one per ``prefect.yaml`` entry (or those in ``only``).

    Args:
        path: the ``prefect.yaml`` to read.
        only: deployment names to build; None builds all of them.
        schedules_active: False switches every schedule off (on-demand runs only); None
            follows the Prefect variable ``custody_schedules_active`` when the server has it,
            and leaves schedules on when it does not.
    """
    specs = deployment_specs(load_project(path))
    unknown = sorted(set(only or []) - {s.name for s in specs})
    if unknown:
        raise ValueError(f"no such deployment in {path.name}: {', '.join(unknown)}")
    if schedules_active is None:
        schedules_active = asyncio.run(_schedules_variable())
    deployments = []
    for spec in specs:
        if only and spec.name not in only:
            continue
        deployment = _build(spec, schedules_active)
        if dropped := _drop_unconfigured_defaults(deployment, spec.load_flow()):
            print(
                f"{spec.name}: default {', '.join(dropped)} is not configured here; served "
                "without it (the form asks for it) and with its schedules off",
                file=sys.stderr,
                flush=True,
            )
        deployments.append(deployment)
    return deployments


def serve_all(
    path: Path = PROJECT_FILE,
    only: list[str] | None = None,
    schedules_active: bool | None = None,
    limit: int | None = None,
) -> None:
    """Serve the project's deployments from this process until Ctrl-C or SIGTERM.

    The runner is custody's hardened one (flows/hardened.py): a run whose deployment was changed
    through the API (pull steps, entrypoint, job variables) is refused and audited.

    Not ``prefect.serve``: in Prefect 3.8 its SIGTERM handler calls ``Runner.stop()`` from inside
    the running event loop, which only creates the ``astop()`` coroutine (``RuntimeWarning:
    coroutine 'Runner.astop' was never awaited``) and exits mid-loop. Here SIGTERM and SIGINT
    schedule ``astop()`` on the loop, so the runner stops polling, cancels its in-flight runs
    and returns.
    """
    deployments = build_deployments(path, only, schedules_active)
    asyncio.run(_serve(deployments, limit))


async def _serve(deployments: list[RunnerDeployment], limit: int | None) -> None:
    import signal

    from flows.hardened import HardenedRunner

    class _Runner(HardenedRunner):
        def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
            stop()

    runner = _Runner(pause_on_shutdown=True, limit=limit)
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    stopping: list[asyncio.Task[None]] = []

    def begin_stop() -> None:
        if stopping:
            return
        print("Stopping: no new flow runs; runs in flight are cancelled.", flush=True)
        if not runner.started:  # still starting up: nothing to drain
            if main is not None:
                main.cancel()
            return
        stopping.append(loop.create_task(runner.astop()))

    def stop() -> None:  # may run inside a plain signal handler: hand over to the loop
        loop.call_soon_threadsafe(begin_stop)

    # From the first moment: a SIGTERM while deployments register must not kill the process.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    names = ", ".join(f"{d.flow_name}/{d.name}" for d in deployments)
    print(
        f"Serving {len(deployments)} deployment(s): {names}\nStop with Ctrl-C or SIGTERM.",
        flush=True,
    )
    try:
        for deployment in deployments:
            await runner.aadd_deployment(deployment)
        await runner.start()  # it installs handle_sigterm for SIGTERM
    except asyncio.CancelledError:
        if not stopping:  # stopped before the runner started
            return
        raise
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        for task in stopping:
            await task


def _build(spec: DeploymentSpec, schedules_active: bool) -> RunnerDeployment:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.deployments.runner import RunnerDeployment
    from prefect.types.entrypoint import EntrypointType

    raw = spec.raw
    concurrency = raw.get("concurrency_limit")
    if isinstance(concurrency, dict):
        concurrency = ConcurrencyLimitConfig(**concurrency)
    deployment = spec.load_flow().to_deployment(
        name=spec.name,
        description=raw.get("description"),
        tags=list(raw.get("tags") or []),
        version=raw.get("version"),
        parameters=copy.deepcopy(raw.get("parameters") or {}),  # may be trimmed, raw stays
        schedules=[_schedule(s, schedules_active) for s in raw.get("schedules") or []],
        concurrency_limit=concurrency,
        enforce_parameter_schema=bool(raw.get("enforce_parameter_schema", True)),
        # A module path, not a file path: the serve process may run from any directory.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    assert isinstance(deployment, RunnerDeployment)  # called from sync code: not a coroutine
    return deployment


def _drop_unconfigured_defaults(deployment: RunnerDeployment, flow: Flow[Any, Any]) -> list[str]:
    """Remove default parameters that name a connection or store this site has not configured.

    The form offers only the configured names (flows/params.py), and the Prefect server
    refuses a deployment whose defaults fall outside its own schema: ``prefect.yaml``'s
    ``database: ehr`` would stop ``custody serve`` where connections have other names (the
    README's tour, with the demo's). Dropping the default makes the form ask for it; the
    schedules go off, as their runs would start without it.

    Returns:
        ``params.database='ehr'`` for each default dropped.
    """
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(flow).model_dump()  # what the deployment sends the server
    definitions = schema.get("definitions", {})
    dropped = []
    for argument, value in deployment.parameters.items():
        ref = str(schema.get("properties", {}).get(argument, {}).get("$ref", ""))
        fields = definitions.get(ref.rsplit("/", 1)[-1], {}).get("properties", {})
        if not isinstance(value, dict):
            continue
        for field, given in list(value.items()):
            choices = fields.get(field, {}).get("enum")
            if choices is not None and given not in choices:
                del value[field]
                dropped.append(f"{argument}.{field}={given!r}")
    if dropped:
        for schedule in deployment.schedules or []:
            schedule.active = False
    return dropped


def _schedule(raw: dict[str, Any], active: bool) -> Schedule:
    from prefect.schedules import Cron, Interval, RRule

    common: dict[str, Any] = {
        "timezone": raw.get("timezone"),
        "parameters": raw.get("parameters") or {},
        "slug": raw.get("slug"),
        # A literal false in the file wins; the templated switch follows `active`.
        "active": active and raw.get("active") is not False,
    }
    if "cron" in raw:
        return Cron(raw["cron"], day_or=raw.get("day_or", True), **common)
    if "interval" in raw:
        return Interval(raw["interval"], **common)
    if "rrule" in raw:
        return RRule(raw["rrule"], **common)
    raise ValueError(f"schedule {raw.get('slug')!r} needs one of cron, interval or rrule")


async def _schedules_variable() -> bool:
    """The server's schedule switch (infra/prefect/setup_server.py sets it); on when unset."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        variable = await client.read_variable_by_name(SCHEDULES_VARIABLE)
    return variable is None or variable.value is not False
