"""Driving a run that waits for approval: run it in a thread, find it paused, resume it by REST."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from prefect.settings import PREFECT_API_URL
from sqlalchemy import Engine, select

from custody.store.tables import audit_log


class Background:
    """Runs ``target()`` in a thread and keeps its return value or exception."""

    def __init__(self, target: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.value = target()
            except BaseException as exc:  # handed to the test in result()
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self, timeout: float = 120) -> Any:
        """Wait for the thread; re-raise what it raised."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the flow did not finish in time"
        if self.error is not None:
            raise self.error
        return self.value


def _api() -> str:
    return str(PREFECT_API_URL.value()).rstrip("/")


def flow_run_state(flow_run_id: str) -> dict[str, Any]:
    """The run's current state as the REST API returns it (type, name, message)."""
    response = httpx.get(f"{_api()}/flow_runs/{flow_run_id}", timeout=30)
    response.raise_for_status()
    state: dict[str, Any] = response.json()["state"]
    return state


def paused_run(store: Engine, job_id: str, job: Background, timeout: float = 120) -> str:
    """The flow run that asked approval for ``job_id`` (or ``job_id*``), once it is paused."""
    deadline = time.monotonic() + timeout
    run_id = None
    while run_id is None:
        assert job.thread.is_alive(), f"the run ended without asking approval: {job.error!r}"
        assert time.monotonic() < deadline, f"no approval was requested for {job_id}"
        with store.connect() as c:
            run_id = c.execute(
                select(audit_log.c.correlation_id).where(
                    audit_log.c.action == "approval.requested",
                    audit_log.c.resource_id.startswith(job_id),
                )
            ).scalar()
        time.sleep(0.1)
    while flow_run_state(run_id)["type"] != "PAUSED":
        assert time.monotonic() < deadline, f"run {run_id} never paused"
        time.sleep(0.1)
    return str(run_id)


def resume(flow_run_id: str, run_input: dict[str, Any]) -> dict[str, Any]:
    """``POST /api/flow_runs/{id}/resume`` with a run input, as an approver's script would."""
    response = httpx.post(
        f"{_api()}/flow_runs/{flow_run_id}/resume", json={"run_input": run_input}, timeout=30
    )
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def audit_rows(store: Engine, action_prefix: str) -> list[Any]:
    """Audit rows whose action starts with ``action_prefix``, in chain order."""
    c = audit_log.c
    with store.connect() as connection:
        return list(
            connection.execute(
                select(c.seq, c.principal, c.action, c.status, c.resource_id, c.correlation_id,
                       c.details)
                .where(c.action.startswith(action_prefix))
                .order_by(c.seq)
            )
        )  # fmt: skip
