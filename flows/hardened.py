"""Hardened execution: run only the installed package's flows, as the shipped prefect.yaml says.

Whoever can write to the Prefect API can change a deployment: its pull steps (shell scripts a
stock worker runs before the flow), its entrypoint (which code is imported), its job variables
(the command and environment of the flow run's process). A stock ``prefect worker`` obeys them,
in the worker's environment, which holds the store's URL and the HMAC keys (issue 15 item 1).

The hardened worker (``custody worker``) obeys none of them:

* before a run starts, the deployment as the server holds it is compared with the shipped
  ``prefect.yaml``: its name must be one of the file's, its flow the file's flow, its entrypoint
  the file's entrypoint (or its module path, as ``custody serve`` registers it), its pull steps
  the file's pull steps (the deploy-time directory is the only value allowed to vary) and its
  job variables empty. A deployment that differs is refused: the run is marked crashed, nothing
  is started, and an audit event ``prefect.deployment.refused`` names the deployment and which
  fields differ (never their content);
* a run that passes is started as ``python -m flows.hardened <flow run id>``: the child checks
  the deployment again and imports the flow from the installed package by the file's entrypoint.
  It never runs pull steps, never reads code from storage, never takes a command or
  environment from job variables. What the API can still choose is the parameters, which every
  flow validates (named stores and connections, checked names; SECURITY.md promise 2).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

import anyio
import anyio.abc
from prefect.runner import Runner
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

from custody.audit import AuditEvent, AuditLog, AuditStatus, DataClassification, Keyring
from custody.db import get_engine
from custody.errors import CustodyError
from custody.settings import get_settings
from flows.deployments import PROJECT_FILE, DeploymentSpec, deployment_specs, load_project

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun, State
    from prefect.client.schemas.responses import DeploymentResponse

REFUSED_ACTION = "prefect.deployment.refused"
CANCEL_POLL_SECONDS = 2.0
"""How often the hardened worker asks whether a running flow run was cancelled."""
CANCEL_GRACE_SECONDS = 20.0
"""SIGTERM first (the flow ends its chunk cleanly); SIGKILL after this long."""

# A deploy-time value the file leaves to `prefect deploy` (the checkout's directory). In the
# stored steps it must be a plain path: nothing a shell would expand or split on.
_DEPLOY_TIME = re.compile(r"\{\{\s*project-root\.stdout\s*\}\}")
_PLAIN_PATH = r"[^'\"`$\\;&|<>(){}\n\r]*"


class DeploymentRefusedError(CustodyError):
    """The deployment on the server is not the one the shipped prefect.yaml declares."""


def shipped_specs(path: Path = PROJECT_FILE) -> tuple[dict[str, DeploymentSpec], list[Any]]:
    """The file's deployments by name, and its pull steps."""
    project = load_project(path)
    return {s.name: s for s in deployment_specs(project)}, list(project.get("pull") or [])


def deployment_problems(
    deployment: DeploymentResponse, flow_name: str | None, path: Path = PROJECT_FILE
) -> list[str]:
    """How the server's deployment differs from the shipped file ([] when it does not).

    Names the fields only: their content came from whoever wrote to the API.
    """
    specs, pull = shipped_specs(path)
    spec = specs.get(deployment.name)
    if spec is None:
        return ["the deployment is not in the shipped prefect.yaml"]
    problems = []
    if flow_name is not None and flow_name != spec.load_flow().name:
        problems.append("flow")
    served = deployment.entrypoint == f"{spec.module}.{spec.function}"
    if deployment.entrypoint != spec.entrypoint and not served:
        problems.append("entrypoint")
    steps = list(deployment.pull_steps or [])
    if not (_steps_match(pull, steps) or (served and not steps)):
        problems.append("pull_steps")
    if deployment.job_variables:
        problems.append("job_variables")
    if deployment.storage_document_id is not None:
        problems.append("storage")
    return problems


def _steps_match(shipped: Any, stored: Any) -> bool:
    if isinstance(shipped, dict):
        return (
            isinstance(stored, dict)
            and shipped.keys() == stored.keys()
            and all(_steps_match(shipped[k], stored[k]) for k in shipped)
        )
    if isinstance(shipped, list):
        return (
            isinstance(stored, list)
            and len(shipped) == len(stored)
            and all(_steps_match(a, b) for a, b in zip(shipped, stored, strict=True))
        )
    if isinstance(shipped, str) and isinstance(stored, str):
        parts = [re.escape(p) for p in _DEPLOY_TIME.split(shipped)]
        return re.fullmatch(_PLAIN_PATH.join(parts), stored) is not None
    return bool(shipped == stored)


def audit_refusal(deployment: DeploymentResponse, flow_run_id: UUID, problems: list[str]) -> None:
    """Write ``prefect.deployment.refused`` naming the deployment, at once (critical path)."""
    settings = get_settings()
    active, keys = settings.require_hmac_keys()
    audit = AuditLog(get_engine(settings.store_url()), Keyring(active, keys))
    audit.log(
        AuditEvent(
            principal=settings.principal,
            action=REFUSED_ACTION,
            status=AuditStatus.DENIED,
            resource_type="prefect_deployment",
            resource_id=deployment.name,
            correlation_id=str(flow_run_id),
            data_classification=DataClassification.INTERNAL,
            details={
                "deployment_id": str(deployment.id),
                "differs": problems,
                "shipped": str(PROJECT_FILE.name),
            },
        )
    )


async def check_flow_run(client: PrefectClient, flow_run: FlowRun) -> DeploymentSpec:
    """The shipped spec a flow run may run as; refused (and audited) when the deployment differs.

    Raises:
        DeploymentRefusedError: no deployment, or one that differs from the shipped file.
    """
    if flow_run.deployment_id is None:
        raise DeploymentRefusedError(f"flow run {flow_run.id} has no deployment: refused")
    deployment = await client.read_deployment(flow_run.deployment_id)
    flow = await client.read_flow(deployment.flow_id)
    problems = deployment_problems(deployment, flow.name)
    if problems:
        await anyio.to_thread.run_sync(audit_refusal, deployment, flow_run.id, problems)
        raise DeploymentRefusedError(
            f"deployment {deployment.name!r} differs from the shipped prefect.yaml "
            f"({', '.join(problems)}): refused, nothing was run"
        )
    return shipped_specs()[0][deployment.name]


class HardenedWorker(ProcessWorker):
    """A process worker that runs only the installed flows of the shipped prefect.yaml."""

    _description = "Runs only custody's installed flows, as the shipped prefect.yaml declares."
    _display_name = "Custody (hardened)"

    @classmethod
    def __dispatch_key__(cls) -> str:
        # Same pool type as the stock process worker ("process"), its own registry key: importing
        # this module must not replace the stock worker in Prefect's registry.
        return "custody-hardened"

    async def run(
        self,
        flow_run: FlowRun,
        configuration: ProcessJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
    ) -> ProcessWorkerResult:
        """Check the deployment, then start the installed flow in a child process of our own.

        The configuration (command, environment, working directory from job variables) is
        ignored on purpose: the child gets this worker's own environment.
        """
        spec = await check_flow_run(self.client, flow_run)
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT__")}
        env["PREFECT__FLOW_RUN_ID"] = str(flow_run.id)
        process = await anyio.open_process(
            [sys.executable, "-m", "flows.hardened", str(flow_run.id)],
            env=env,
            stdin=None,
            stdout=None,
            stderr=None,
        )
        if task_status is not None:
            task_status.started(process.pid)
        cancelled = False
        async with anyio.create_task_group() as watching:

            async def watch_for_cancel() -> None:
                nonlocal cancelled
                while True:
                    await anyio.sleep(CANCEL_POLL_SECONDS)
                    current = await self.client.read_flow_run(flow_run.id)
                    if current.state is not None and current.state.is_cancelling():
                        # Cancelled first: the process's own "crashed" on SIGTERM is then refused.
                        cancelled = True
                        await self._mark_cancelled(flow_run)
                        await _stop(process)
                        return

            watching.start_soon(watch_for_cancel)
            status = await process.wait()
            watching.cancel_scope.cancel()
        if cancelled:  # the process has stopped: the installed flow's own hooks run now
            from prefect.runner.runner import _run_hooks

            flow = spec.load_flow()
            refreshed = await self.client.read_flow_run(flow_run.id)
            if refreshed.state is None or not refreshed.state.is_cancelled():
                # The process's crash report on SIGTERM can still land after ours: cancel again.
                await self._mark_cancelled(flow_run)
                refreshed = await self.client.read_flow_run(flow_run.id)
            assert refreshed.state is not None
            await _run_hooks(flow.on_cancellation_hooks or [], refreshed, flow, refreshed.state)
            status = 0  # the run is Cancelled, not crashed
        return ProcessWorkerResult(status_code=status, identifier=str(process.pid))

    async def _mark_cancelled(self, flow_run: FlowRun) -> None:
        from prefect.states import Cancelled

        state: State[Any] = Cancelled(
            message="Flow run cancelled: custody worker stopped its process."
        )
        await self.client.set_flow_run_state(flow_run.id, state, force=True)


async def _stop(process: anyio.abc.Process) -> None:
    process.terminate()
    with anyio.move_on_after(CANCEL_GRACE_SECONDS):
        await process.wait()
        return
    process.kill()


class _CheckedStarter:
    """Wraps the runner's way of starting a served flow: the deployment is checked first."""

    def __init__(self, inner: Any, runner: HardenedRunner) -> None:
        self._inner = inner
        self._runner = runner

    async def start(self, flow_run: FlowRun, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        await check_flow_run(self._runner.client, flow_run)
        await self._inner.start(flow_run, task_status=task_status)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class HardenedRunner(Runner):
    """``custody serve``'s runner: served flows run only if their deployment is the shipped one.

    Prefect's runner already runs a served deployment's own flow object (it never runs the
    API's pull steps or entrypoint for it); this adds the same check, refusal and audit event
    as the hardened worker, so a tampered deployment is seen rather than silently ignored.
    """

    @property
    def client(self) -> PrefectClient:
        """The runner's API client (set when it starts)."""
        return self._client

    async def __aenter__(self) -> HardenedRunner:
        await super().__aenter__()
        poller = self._scheduled_run_poller
        resolve = poller._resolve_starter
        poller._resolve_starter = lambda flow_run: _CheckedStarter(resolve(flow_run), self)
        return self


def run_hardened_flow_run(flow_run_id: UUID) -> None:
    """The child: check again, import the flow from the installed package, run it."""
    from prefect.client.orchestration import get_client
    from prefect.engine import handle_engine_signals
    from prefect.flow_engine import load_flow_run, run_flow

    with handle_engine_signals(flow_run_id):
        flow_run = load_flow_run(flow_run_id=flow_run_id)

        async def check() -> DeploymentSpec:
            async with get_client() as client:
                return await check_flow_run(client, flow_run)

        spec = asyncio.run(check())
        flow = spec.load_flow()
        run_flow(flow, flow_run=flow_run)


if __name__ == "__main__":
    run_hardened_flow_run(UUID(sys.argv[1]))
