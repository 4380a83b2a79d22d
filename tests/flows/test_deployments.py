"""prefect.yaml as users run it: setup, `prefect deploy --all`, a process worker, API triggers.

One loopback `prefect server start` (tests/support/prefect_server.py), custody's own store in a
fresh PostgreSQL database, a file:// object store and synthetic hospital data. Every deployment
is triggered through `POST /api/deployments/{id}/create_flow_run` (and one through
`run_deployment`), concurrently, and each run is checked the way a user would check it: its
state, its artifacts, and what it did to the databases.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import Engine, func, select, text

from custody.audit import Keyring, verify_chain
from custody.db import get_engine
from custody.labs.inbox import stage_payload
from custody.labs.tables import lab_results
from custody.storage import open_store
from custody.store.tables import audit_log
from custody.synth import write_ehr
from flows.deployments import SCHEDULES_VARIABLE, deployment_specs, load_project
from tests.support.artifacts import read_artifacts
from tests.support.env import TEST_KEYS, custody_env
from tests.support.labs import make_lab_results
from tests.support.pagila import table_digests
from tests.support.postgres import DatabaseFactory
from tests.support.prefect_server import (
    ROOT,
    DeployedProject,
    PrefectServer,
    api_call,
    deployed_custody,
    run_setup,
    shared_prefect_server,
    start_shared_prefect_server,
)

# Under xdist, tests sharing the deployed loopback server run in one worker: one deploy, not two.
pytestmark = pytest.mark.xdist_group("deployed-custody")

KEYRING = Keyring("k1", {k: v.encode() for k, v in TEST_KEYS.items()})
CANARY_MRN = "MRN-DEPLOY-CANARY-7731"
HL7 = (
    b"MSH|^~\\&|LIS|CUSTODY LAB|EHR|HOSP|20261123101500-0500||ORU^R01|DEP-0001|P|2.5.1\r"
    b"PID|1||" + CANARY_MRN.encode() + b"^^^HOSP^MR||DOE^JANE||19700101|F\r"
    b"OBR|1|ORD-1|ACC-1|24323-8^Metabolic panel^LN|||20261123100000-0500|||||||||||||||"
    b"20261123101000-0500|||F\r"
    b"OBX|1|NM|2823-3^Potassium [Moles/volume] in Serum or Plasma^LN||4.1|mmol/L|3.5-5.1|N|||F"
    b"|||20261123100000-0500\r"
    b"OBX|2|NM|2951-2^Sodium [Moles/volume] in Serum or Plasma^LN||140|mmol/L|136-145|N|||F"
    b"|||20261123100000-0500\r"
)
ARCHIVE_ROWS = 2_000  # one row every 7 s from 2026-01-01: all before the cutoff below
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture
def booting(request: pytest.FixtureRequest) -> PrefectServer:
    """The loopback server, launched now: it boots while the data below is prepared."""
    return start_shared_prefect_server(request)


@pytest.fixture
def deployed(request: pytest.FixtureRequest) -> DeployedProject:
    return deployed_custody(request)


@pytest.fixture
def hospital(
    booting: PrefectServer, pg_store: Engine, pg_databases: DatabaseFactory, tmp_path: Path
) -> dict[str, Any]:
    """Source data for every flow, and the CUSTODY_* settings a worker needs to reach it."""
    ehr, legacy = pg_databases.create("ehr"), pg_databases.create("legacy")
    newehr, warehouse = pg_databases.create("newehr"), pg_databases.create("warehouse")
    make_lab_results(ehr, ARCHIVE_ROWS)
    write_ehr(get_engine(legacy), patients_n=40, results_per_patient=10)
    objects = tmp_path / "objects"
    objects.mkdir()
    env = custody_env(
        store_url=pg_store.url.render_as_string(hide_password=False),
        connections={"ehr": ehr, "legacy": legacy, "newehr": newehr, "warehouse": warehouse},
    ) | {"CUSTODY_OBJECT_STORE_URL": f"file://{objects}"}
    return {"env": env, "ehr": ehr, "legacy": legacy, "newehr": newehr, "warehouse": warehouse,
            "objects": objects, "before": table_digests(ehr)}  # fmt: skip


@pytest.fixture
def worker(
    request: pytest.FixtureRequest, hospital: dict[str, Any], tmp_path: Path
) -> Iterator[DeployedProject]:
    """`prefect worker start --pool custody` from a directory that is not the checkout.

    It starts while `prefect deploy --all` runs: a worker needs only the pool, which the setup
    script made.
    """
    elsewhere = tmp_path / "worker-cwd"
    elsewhere.mkdir()
    with ExitStack() as stack:

        def start_worker() -> None:
            env = shared_prefect_server(request).client_env(
                **hospital["env"],
                PREFECT_WORKER_QUERY_SECONDS="1",
                PREFECT_WORKER_PREFETCH_SECONDS="5",
            )
            args = [sys.executable, "-m", "prefect", "worker", "start", "--pool", "custody"]
            stack.enter_context(
                _process([*args, "--limit", "10"], env, elsewhere, tmp_path / "worker.log")
            )

        yield deployed_custody(request, while_deploying=start_worker)


@pytest.mark.slow
def test_prefect_yaml_deploys_and_a_worker_runs_every_flow_from_the_api(
    hospital: dict[str, Any], worker: DeployedProject, pg_store: Engine
) -> None:
    deployed = worker
    clock = _Clock(f"deploy --all took {deployed.deploy_seconds:.1f} s")
    api = deployed.server.api_url
    ids = deployed.deployment_ids()
    specs = {s.name: s for s in deployment_specs(load_project())}
    assert set(specs) <= set(ids), f"not deployed: {set(specs) - set(ids)}"

    # Lab payloads never travel as parameters: stage first, trigger with the reference.
    store = open_store(f"file://{hospital['objects']}")
    source = stage_payload(store, HL7)
    assert source.startswith("store:inbox/") and source.endswith(".hl7")

    policy = {"name": "lab_results", "table": "lab_results", "timestamp_column": "collected_at"}
    archive = {
        "database": "ehr",
        "policies": [policy | {"cutoff": "2026-03-01"}],
        "batch_size": 500,
    }
    copy = {"table": "lab_results", "key_column": "result_id", "chunk_size": 100}
    runs = {
        "ingest-lab-results": {"source": source},
        "archive-to-s3": archive | {"job_id": "deploy-archive-a"},
        # A plan only: the migration itself is test_migrate.py's; its GX gate would add ~9 s of
        # CPU (the import) to this test for nothing the deployment changes.
        "migrate-tables": {"source": "legacy", "target": "newehr", "dry_run": True},
        "copy-table": {"source": "legacy", "target": "warehouse"} | copy,
        "compliance-report": {"regulation": "HIPAA", "period": "this_month"},
        "audit-maintenance": {"months_ahead": 8},
        "replay-dead-letters": {"kind": "copy"},
        "anchor-audit-chain": {},
    }
    run_ids = {name: _create_run(api, ids[name], params) for name, params in runs.items()}
    # A second archival of the same database, through the Python API, at the same time.
    run_ids["archive-b"] = _run_deployment(
        api, "archive-to-s3/archive-to-s3", archive | {"job_id": "deploy-archive-b"}
    )

    clock.lap("runs created")
    states = _wait(api, [run_ids["archive-to-s3"], run_ids["archive-b"]], timeout=180)
    clock.lap("both archive runs finished")
    run_ids["restore-from-archive"] = _create_run(
        api, ids["restore-from-archive"], {"database": "ehr", "table": "lab_results"}
    )
    states |= _wait(api, list(run_ids.values()), timeout=240)
    clock.lap("every run finished")
    failed = {n: states[i] for n, i in run_ids.items() if states[i]["type"] != "COMPLETED"}
    assert not failed, f"{failed}\n{deployed.server.log_tail()}"

    runs_by_id = {i: _flow_run(api, i) for i in run_ids.values()}
    for name, run_id in run_ids.items():
        run = runs_by_id[run_id]
        print(f"  {name}: created {run['created'][11:22]}, started {run['start_time'][11:22]}, "
              f"ran {run['total_run_time']:.1f} s")  # fmt: skip
    # Every deployment of prefect.yaml ran through its queue, from the pulled working directory.
    for name, run_id in run_ids.items():
        spec = specs["archive-to-s3" if name == "archive-b" else name]
        assert runs_by_id[run_id]["work_queue_name"] == spec.work_queue, name
    assert set(specs) <= set(run_ids)

    # Lab ingestion: the payload landed; Prefect saw the reference only.
    ingest = runs_by_id[run_ids["ingest-lab-results"]]
    assert ingest["parameters"] == {"params": {"source": source}}
    with pg_store.connect() as conn:
        assert conn.execute(select(func.count()).select_from(lab_results)).scalar_one() == 2
    summary = _artifact(api, run_ids["ingest-lab-results"], "ingest-summary-{run}")
    assert "| Results stored | 2 |" in summary["data"]

    # Archive: two runs on one database never overlapped, and restore put every row back.
    _assert_one_archival_at_a_time(pg_store, run_ids["archive-to-s3"], run_ids["archive-b"])
    archived = [
        _artifact(api, run_ids[n], f"archive-summary-deploy-archive-{x}")
        for n, x in (("archive-to-s3", "a"), ("archive-b", "b"))
    ]
    assert sum(r["rows_archived"] for a in archived for r in json.loads(a["data"])) == ARCHIVE_ROWS
    assert table_digests(hospital["ehr"]) == hospital["before"]

    # Copy: the target table holds the source rows. Migration: the plan covers every table.
    legacy = table_digests(hospital["legacy"])
    assert table_digests(hospital["warehouse"])["lab_results"] == legacy["lab_results"]
    _artifact(api, run_ids["copy-table"], "copy-lab-results-summary")
    plan = _artifact(api, run_ids["migrate-tables"], "migration-plan-migrate-{run}")["data"]
    assert all(f"| {table} |" in plan for table in legacy), plan
    assert table_digests(hospital["newehr"]) == {}

    # Compliance report, audit maintenance, replay: their own artifacts say what they did.
    reports = json.loads(
        _artifact(api, run_ids["compliance-report"], "compliance-reports-{run}")["data"]
    )
    assert {r["report_type"]: r["status"] for r in reports} == {
        "phi_access": "completed", "pipeline_activity": "completed",
        "audit_integrity": "completed",
    }  # fmt: skip
    [upkeep] = json.loads(
        _artifact(api, run_ids["audit-maintenance"], "audit-maintenance-{run}")["data"]
    )
    assert upkeep["chain"] == "intact" and upkeep["partitions_created"] >= 1, upkeep
    assert _partitions_through(pg_store, months_ahead=8)
    _artifact(api, run_ids["replay-dead-letters"], "replay-plan-{run}")
    # anchor-audit-chain's anchor, and one after each run that appended events (issue 15 item 3).
    anchors = list(store.list("audit-anchors"))
    assert anchors and all(a.retention is not None for a in anchors)  # written under retention
    anchor_run = _flow_run(api, run_ids["anchor-audit-chain"])
    assert anchor_run["state"]["type"] == "COMPLETED"

    # No PHI reached Prefect: not in any run's parameters, not in any artifact.
    for run_id in run_ids.values():
        assert CANARY_MRN not in json.dumps(runs_by_id[run_id]["parameters"])
        for artifact in asyncio.run(_artifacts(api, run_id)):
            assert CANARY_MRN not in json.dumps(artifact.data), artifact.key
    assert verify_chain(pg_store, KEYRING).ok

    # Schedules were deployed switched off (setup --schedules off): nothing ran on its own.
    assert not [r for r in _all_flow_runs(api) if r["auto_scheduled"]]
    clock.lap("checked")


def test_prefect_yaml_schedules_are_cron_in_a_zone_behind_the_setup_switch() -> None:
    project = load_project()
    pool = project["definitions"]["work_pool"]
    queues = {q["name"]: q["priority"] for q in pool["queues"]}
    assert queues == {"urgent": 1, "high": 2, "normal": 3, "low": 4}
    switch = "{{ prefect.variables." + SCHEDULES_VARIABLE + " }}"
    scheduled: dict[str, list[str]] = {}
    for spec in deployment_specs(project):
        raw = spec.raw
        assert raw["work_pool"]["name"] == pool["name"] and spec.work_queue in queues
        assert raw["description"] and "custody" in raw["tags"], spec.name
        assert raw.get("enforce_parameter_schema") is True, spec.name
        for schedule in raw.get("schedules", []):
            assert set(schedule) >= {"cron", "timezone", "slug", "active"}, spec.name
            assert schedule["active"] == switch, spec.name
            assert ZoneInfo(schedule["timezone"]).key == schedule["timezone"]
            scheduled.setdefault(spec.name, []).append(schedule["cron"])
    assert scheduled == {
        "ingest-lab-results": ["*/15 * * * *"], "archive-to-s3": ["30 3 * * *"],
        "compliance-report": ["0 6 1 * *", "30 6 1 * *"], "audit-maintenance": ["45 4 * * *"],
        "anchor-audit-chain": ["15 5 * * *"],
    }  # fmt: skip
    assert {s.name: s.work_queue for s in deployment_specs(project)} == {
        "ingest-lab-results": "urgent", "archive-to-s3": "normal",
        "restore-from-archive": "high", "migrate-tables": "normal", "copy-table": "normal",
        "compliance-report": "low", "audit-maintenance": "normal", "replay-dead-letters": "high",
        "anchor-audit-chain": "normal",
    }  # fmt: skip


def test_custody_serve_names_an_unknown_deployment(capsys: pytest.CaptureFixture[str]) -> None:
    from custody.cli import main

    assert main(["serve", "audit-maintenance", "nightly-backup"]) == 2
    assert "no such deployment in prefect.yaml: nightly-backup" in capsys.readouterr().err


def test_deployed_pool_queues_limits_and_schedules_match_prefect_yaml(
    deployed: DeployedProject,
) -> None:
    api = deployed.server.api_url
    project = load_project()
    queues = api_call("POST", f"{api}/work_pools/custody/queues/filter", json={}).json()
    assert {q["name"]: q["priority"] for q in queues} == {
        "urgent": 1, "high": 2, "normal": 3, "low": 4, "default": 5,
    }  # fmt: skip
    limit = api_call("GET", f"{api}/v2/concurrency_limits/custody-archive-ehr").json()
    assert (limit["limit"], limit["active"]) == (1, True)
    deployments = {
        d["name"]: d for d in api_call("POST", f"{api}/deployments/filter", json={}).json()
    }
    for spec in deployment_specs(project):
        deployment = deployments[spec.name]
        assert deployment["work_pool_name"] == "custody", spec.name
        assert deployment["work_queue_name"] == spec.work_queue, spec.name
        assert deployment["enforce_parameter_schema"] is True, spec.name
        declared = {s["slug"]: s for s in spec.raw.get("schedules", [])}
        deployed_schedules = {s["slug"]: s for s in deployment["schedules"]}
        assert set(deployed_schedules) == set(declared), spec.name
        for slug, schedule in deployed_schedules.items():
            assert schedule["active"] is False, (spec.name, slug)
            assert schedule["schedule"]["cron"] == declared[slug]["cron"]
            assert schedule["schedule"]["timezone"] == declared[slug]["timezone"]
    gcl = deployments["audit-maintenance"]["global_concurrency_limit"]
    assert gcl["limit"] == 1
    assert deployments["audit-maintenance"]["concurrency_options"]["collision_strategy"] == (
        "CANCEL_NEW"
    )
    # Setup is idempotent: a second run changes nothing it already made.
    again = run_setup(deployed.server, "--schedules", "off")
    assert not [line for line in again if "created" in line or "updated" in line], again


def test_the_pull_step_prefers_custody_project_dir_over_the_deploy_directory(
    deployed: DeployedProject, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.deployments.steps.core import run_steps
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api = deployed.server.api_url
    body = {"deployments": {"name": {"any_": ["copy-table"]}}}
    [deployment] = api_call("POST", f"{api}/deployments/filter", json=body).json()
    steps = deployment["pull_steps"]
    assert str(ROOT) in json.dumps(steps)  # recorded at deploy time, not written in the file
    assert str(ROOT) not in (ROOT / "prefect.yaml").read_text()
    here = os.getcwd()
    try:
        with temporary_settings({PREFECT_API_URL: api}):
            monkeypatch.delenv("CUSTODY_PROJECT_DIR", raising=False)
            assert asyncio.run(run_steps(steps))["directory"] == str(ROOT)
            monkeypatch.setenv("CUSTODY_PROJECT_DIR", str(tmp_path))
            assert asyncio.run(run_steps(steps))["directory"] == str(tmp_path)
    finally:
        os.chdir(here)


@pytest.mark.slow
def test_custody_serve_runs_a_deployment_of_prefect_yaml_in_its_own_process(
    deployed: DeployedProject, pg_store: Engine, tmp_path: Path
) -> None:
    """`custody serve NAME`: the deployment as prefect.yaml declares it, run by the serve process.

    One deployment keeps this short; tests/flows/test_parameter_schemas.py builds all of them
    with the same code (flows/deployments.py).
    """
    api = deployed.server.api_url
    settings = custody_env(store_url=pg_store.url.render_as_string(hide_password=False))
    env = deployed.server.client_env(**settings, PREFECT_RUNNER_POLL_FREQUENCY="1")
    custody = str(Path(sys.executable).parent / "custody")
    args = [custody, "serve", "audit-maintenance", "--no-schedules"]
    with _process(args, env, tmp_path, tmp_path / "serve.log"):
        served = _poll(lambda: _served(api, "audit-maintenance"), 120, "custody serve to register")
        run_id = _create_run(api, served["id"], {"verify_chain": True})
        state = _wait(api, [run_id], timeout=120)[run_id]
        assert state["type"] == "COMPLETED", state
    [upkeep] = json.loads(_artifact(api, run_id, "audit-maintenance-{run}")["data"])
    assert upkeep["chain"] == "intact"
    assert [s["active"] for s in served["schedules"]] == [False]
    assert served["parameters"] == {"params": {"months_ahead": 3, "verify_chain": True}}


# --- helpers ---------------------------------------------------------------------------------


class _Clock:
    """Prints how long each phase took (pytest shows it with -s, or when the test fails)."""

    def __init__(self, first: str) -> None:
        self.started = self.last = time.monotonic()
        print(first)

    def lap(self, what: str) -> None:
        now = time.monotonic()
        print(f"{what}: +{now - self.last:.1f} s ({now - self.started:.1f} s)")
        self.last = now


class _process:
    """A child process in its own session, stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.args, self.env, self.cwd, self.log = args, env, cwd, log

    def __enter__(self) -> subprocess.Popen[bytes]:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.args, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        return self.proc

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if exc[0] is not None:
            print(f"--- {self.log.name} ---\n{self.log.read_text(errors='replace')[-6000:]}")


def _create_run(api: str, deployment_id: str, params: dict[str, Any]) -> str:
    """The REST call an external system makes; returns the flow run id."""
    response = api_call(
        "POST",
        f"{api}/deployments/{deployment_id}/create_flow_run",
        json={"parameters": {"params": params}},
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _run_deployment(api: str, name: str, params: dict[str, Any]) -> str:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        run = run_deployment(name, parameters={"params": params}, timeout=0)
    return str(run.id)


def _flow_run(api: str, run_id: str) -> dict[str, Any]:
    response = api_call("GET", f"{api}/flow_runs/{run_id}")
    response.raise_for_status()
    return dict(response.json())


def _all_flow_runs(api: str) -> list[dict[str, Any]]:
    return list(api_call("POST", f"{api}/flow_runs/filter", json={"limit": 200}).json())


def _wait(api: str, run_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Poll until every run is final; returns each run's state."""

    def final() -> dict[str, dict[str, Any]] | None:
        states = {i: _flow_run(api, i)["state"] for i in run_ids}
        return states if all(s["type"] in FINAL for s in states.values()) else None

    return _poll(final, timeout, f"flow runs {run_ids} to finish")


def _poll(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while (found := check()) is None or found == {}:
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return found


def _served(api: str, name: str) -> dict[str, Any] | None:
    """The deployment once `custody serve` has registered it (its entrypoint a module path)."""
    body = {"deployments": {"name": {"any_": [name]}}}
    found = api_call("POST", f"{api}/deployments/filter", json=body).json()
    [spec] = [s for s in deployment_specs(load_project()) if s.name == name]
    served = [d for d in found if d["entrypoint"] == f"{spec.module}.{spec.function}"]
    return served[0] if served else None


async def _artifacts(api: str, run_id: str) -> list[Any]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        return await read_artifacts(flow_run_id=run_id)


def _artifact(api: str, run_id: str, key: str) -> dict[str, Any]:
    """The run's artifact with this key (``{run}`` stands for the flow run id)."""
    key = key.format(run=run_id)
    found = [a for a in asyncio.run(_artifacts(api, run_id)) if a.key == key]
    assert found, f"no artifact {key} for run {run_id}"
    return {"key": found[0].key, "data": found[0].data, "type": found[0].type}


def _assert_one_archival_at_a_time(store: Engine, run_a: str, run_b: str) -> None:
    """From the audit log: each run's started..completed span; the spans must not overlap."""
    spans = []
    with store.connect() as conn:
        for run in (run_a, run_b):
            times = conn.execute(
                select(audit_log.c.action, audit_log.c.occurred_at).where(
                    audit_log.c.correlation_id == run,
                    audit_log.c.action.in_(["data.archival.started", "data.archival.completed"]),
                )
            ).all()
            by_action = dict(times)
            spans.append((by_action["data.archival.started"], by_action["data.archival.completed"]))
    (_, first_end), (second_start, _) = sorted(spans)
    assert first_end <= second_start, f"archival runs overlapped: {spans}"


def _partitions_through(store: Engine, months_ahead: int) -> bool:
    with store.connect() as conn:
        names = set(
            conn.execute(
                text(
                    "SELECT relname FROM pg_class WHERE relname LIKE 'audit_log_y%' "
                    "AND relkind = 'r'"
                )
            ).scalars()
        )
        last = conn.execute(
            text(
                "SELECT to_char(date_trunc('month', now() AT TIME ZONE 'UTC') "
                '+ make_interval(months => :m), \'"audit_log_y"YYYY"m"MM\')'
            ),
            {"m": months_ahead - 1},
        ).scalar_one()
    return last in names
