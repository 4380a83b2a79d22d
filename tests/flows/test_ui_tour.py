"""The README's UI tour in a real browser: custom run, pause, Resume with approve and with deny.

Playwright drives Debian's Chromium (``/usr/bin/chromium``, which ``infra/dev/test`` installs)
through the Prefect UI of the session's loopback ``prefect server start``, with
``migrate-tables`` served from a child process as ``custody serve`` serves it. Each run is
checked as a user would: the form offers the configured connections, the run pauses, the plan
and approval artifacts say what is happening before and after the decision, the run ends as
promised and its logs hold no ERROR record.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine

from custody.db import get_engine
from tests.flows.test_end_states import run_artifacts, run_logs
from tests.support.chromium import chromium
from tests.support.env import custody_env
from tests.support.pagila import table_digests
from tests.support.postgres import DatabaseFactory
from tests.support.prefect_server import ROOT, PrefectServer, api_call, shared_prefect_server
from tests.support.tables import make_keys

pytestmark = pytest.mark.xdist_group("deployed-custody")
FLOWS = ("migrate-tables", "compliance-report")
SERVE = (
    "from prefect import serve; from flows.migrate import migrate_tables; "
    "from flows.compliance_report import compliance_report; "
    "serve(migrate_tables.to_deployment(name='ui-tour'), "
    "compliance_report.to_deployment(name='ui-tour'))"
)


def _poll(
    check: Callable[[], Any], what: str, timeout: float = 90, why: Callable[[], str] = str
) -> Any:
    """Wait for ``check``; on timeout, fail with ``why()``: what the run and the server said."""
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{why()}"
        time.sleep(0.3)
    return found


@dataclass
class Tour:
    """What the tour's browser and checks need: the server, the served deployments and more."""

    server: PrefectServer
    deployments: dict[str, str]  # flow name -> deployment id
    dst: str
    log: Path
    env: dict[str, str]


@pytest.fixture
def served(
    request: pytest.FixtureRequest, pg_store: Engine, pg_databases: DatabaseFactory, tmp_path: Path
) -> Iterator[Tour]:
    """migrate-tables and compliance-report served as ``custody serve`` serves them."""
    urls = {name: pg_databases.create(name) for name in ("src", "dst")}
    make_keys(get_engine(urls["src"]), 2_000)
    make_keys(get_engine(urls["dst"]), 10)
    server = shared_prefect_server(request)
    env = server.client_env(
        **custody_env(store_url=pg_store.url.render_as_string(hide_password=False),
                      connections=urls),
        CUSTODY_APPROVAL_POLL_SECONDS="1", PREFECT_RUNNER_POLL_FREQUENCY="1",
        CUSTODY_OBJECT_STORE_URL=f"file://{tmp_path / 'objects'}",
    )  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", SERVE], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        urls_of = {f: f"{server.api_url}/deployments/name/{f}/ui-tour" for f in FLOWS}
        found = _poll(
            lambda: (
                proc.poll() is not None
                or all(api_call("GET", u).status_code == 200 for u in urls_of.values())
            ),
            "the served deployments",
        )
        assert found and proc.poll() is None, log.read_text(errors="replace")[-3000:]
        ids = {f: str(api_call("GET", u).json()["id"]) for f, u in urls_of.items()}
        yield Tour(server, ids, urls["dst"], log, env)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _submit(page: Any, button: Any, endpoint: str) -> None:
    """Press ``button`` until the API call it makes to ``endpoint`` is not answered "busy".

    The session's Prefect server keeps its state in SQLite; on a loaded machine it answers 503
    ("database is locked") now and then, the UI shows "Oops. Something went wrong", and a person
    presses the button again. Any other error fails the test with the server's answer.
    """
    for _attempt in range(5):
        with page.expect_response(lambda r: r.url.split("?")[0].endswith(endpoint)) as sent:
            button.click()
        answer = sent.value
        if answer.status not in BUSY:
            break
        time.sleep(2)
    assert answer.ok, f"{endpoint} answered {answer.status}: {answer.text()[:1000]}"


def _prop(page: Any, label: str) -> Any:
    """A field of Prefect's schema form, by the title the params model gives it."""
    title = page.locator(
        ".schema-form-property__label", has_text=re.compile(f"^{re.escape(label)}")
    )
    return page.locator(".schema-form-property", has=title).last


def _custom_run(page: Any, ui: str, deployment_id: str) -> str:
    """Run -> Custom run, filled as the README says; returns the run's name."""
    page.goto(f"{ui}/deployments/deployment/{deployment_id}/run")
    for label, value in (("Source connection", "src"), ("Target connection", "dst")):
        _prop(page, label).locator(".p-select-button__control").click()
        page.keyboard.press("ArrowDown")  # opens the list of configured connections
        page.locator(".p-select-option", has_text=re.compile(f"^{value}$")).click()
    _prop(page, "Tables").get_by_role("button", name="Add item").click()
    _prop(page, "Tables").locator("textarea, input").last.fill("items")
    for label in ("Replace rows already in the target", "Wait for approval before replacing"):
        _prop(page, label).locator("[role=switch]").click()
    name = str(page.locator("input").first.input_value())  # the Run Name field
    submit = page.get_by_role("button", name="Submit")
    _submit(page, submit, f"/deployments/{deployment_id}/create_flow_run")
    page.locator(".toast-flow-run-create__button").first.wait_for()  # "... scheduled to start"
    return name


def _resume(page: Any, ui: str, run_id: str, approve: bool) -> None:
    """The run's page -> Resume, the approval form, Submit."""
    page.goto(f"{ui}/runs/flow-run/{run_id}")
    page.get_by_role("button", name="Resume").click()
    _prop(page, "Approver").locator("textarea, input").first.fill("jdoe")
    if approve:
        _prop(page, "Approve").locator("[role=switch]").click()
    _prop(page, "Reason or change ticket").locator("textarea, input").first.fill("CHG-1234")
    _submit(page, page.get_by_role("button", name="Submit").last, f"/flow_runs/{run_id}/resume")


def _run_id(api: str, name: str) -> str | None:
    body = {"flow_runs": {"name": {"any_": [name]}}}
    found = api_call("POST", f"{api}/flow_runs/filter", json=body).json()
    return str(found[0]["id"]) if found else None


def _state(api: str, run_id: str) -> str:
    return str(api_call("GET", f"{api}/flow_runs/{run_id}").json()["state"]["type"])


def _in_state(api: str, run_id: str, states: set[str]) -> bool:
    return _state(api, run_id) in states


BUSY = {429, 502, 503}  # a SQLite-backed Prefect server under load, as api_call knows
ENDS = {"COMPLETED", "CANCELLED", "FAILED", "CRASHED"}


def _why(api: str, run_id: str, log: Path) -> str:
    """The run's state and last logs, and the end of ``serve``'s output, for a failure message."""
    state = api_call("GET", f"{api}/flow_runs/{run_id}").json()["state"]
    logs = [f"{e['level']} {e['message'][:300]}" for e in run_logs(api, run_id, min_level=0)]
    head = f"state: {state['type']} {state['name']}: {state.get('message')}"
    tail = log.read_text(errors="replace")[-3000:]
    return "\n".join([head, "run logs:", *logs[-15:], "serve output:", tail])


def _quick_run(page: Any, ui: str, deployment_id: str) -> None:
    """The deployment's page -> Run -> Quick run -> Run (the parameters' defaults)."""
    page.goto(f"{ui}/deployments/deployment/{deployment_id}")
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Quick run", exact=True).click()
    run = page.get_by_role("button", name="Run", exact=True).last  # the dialog's, defaults kept
    _submit(page, run, f"/deployments/{deployment_id}/create_flow_run")
    page.locator(".toast-flow-run-create__button").first.wait_for()


def _latest_run(api: str, deployment_id: str) -> str | None:
    body = {"deployments": {"id": {"any_": [deployment_id]}}, "sort": "START_TIME_DESC"}
    found = api_call("POST", f"{api}/flow_runs/filter", json=body).json()
    return str(found[0]["id"]) if found else None


def _approve_and_deny(page: Any, tour: Tour, before: dict[str, Any]) -> None:
    """Steps 3 and 4: a custom migrate-tables run, paused, then denied; again, then approved."""
    api, ui = tour.server.api_url, tour.server.api_url.removesuffix("/api")
    for approve, final in ((False, "CANCELLED"), (True, "COMPLETED")):
        name = _custom_run(page, ui, tour.deployments["migrate-tables"])
        run_id: str = _poll(partial(_run_id, api, name), f"run {name}")
        why = partial(_why, api, run_id, tour.log)
        _poll(partial(_in_state, api, run_id, {"PAUSED"}), f"{name} to pause", why=why)
        job = f"migrate-{run_id}"
        shown = {a["key"]: a["data"] for a in run_artifacts(api, run_id)}
        assert "waiting for approval" in shown[f"migration-plan-{job}"]
        assert "is **paused**" in shown[f"approval-{job}"]
        _resume(page, ui, run_id, approve)
        _poll(partial(_in_state, api, run_id, ENDS), f"{name} to finish", 120, why)
        assert _state(api, run_id) == final, why()
        shown = {a["key"]: a["data"] for a in run_artifacts(api, run_id)}
        verdict = "Approved** by `jdoe`" if approve else "Denied** by `jdoe`"
        assert verdict in shown[f"approval-{job}"] and "paused" not in shown[f"approval-{job}"]
        if not approve:
            assert table_digests(tour.dst) == before  # denied: nothing touched
        errors = run_logs(api, run_id, min_level=40)
        assert errors == [], [e["message"][:300] for e in errors]


def _report_location(page: Any, tour: Tour, tmp_path: Path) -> None:
    """A compliance report run from the UI; its ``report-*`` artifact's location gives the file.

    The location is read off the artifact's page as a person sees it, and its command is run
    as they would run it; the file must be the stored report, byte for byte (the checksum the
    store database recorded, read here with the test's own SQL).
    """
    api, ui = tour.server.api_url, tour.server.api_url.removesuffix("/api")
    deployment_id = tour.deployments["compliance-report"]
    _quick_run(page, ui, deployment_id)
    run_id: str = _poll(partial(_latest_run, api, deployment_id), "the report run")
    why = partial(_why, api, run_id, tour.log)
    _poll(partial(_in_state, api, run_id, ENDS), "the report run to finish", 120, why)
    assert _state(api, run_id) == "COMPLETED", why()
    keys = [a["key"] for a in run_artifacts(api, run_id)]
    reports = [k for k in keys if k.startswith("report-") and not k.startswith(f"report-{run_id}")]
    assert reports, keys
    page.goto(f"{ui}/artifacts/key/{reports[0]}")  # the key's timeline: its one version
    page.get_by_role("link", name=re.compile(r"^[0-9a-f]{8}$")).first.click()
    page.get_by_text("custody store get").first.wait_for()
    text = page.locator("body").inner_text()
    command = re.search(r"custody store get '([^']+)' -o (\S+?\.html)", text)
    checksum = re.search(r"SHA-256 ([0-9a-f]{16})", text)
    assert command and checksum, text[:2000]
    custody = Path(sys.executable).parent / "custody"
    done = subprocess.run([str(custody), "store", "get", command[1], "-o", command[2]],
                          cwd=tmp_path, env=tour.env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    body = (tmp_path / command[2]).read_bytes()
    digest = hashlib.sha256(body).hexdigest()
    with psycopg.connect(tour.env["CUSTODY_DATABASE_URL"].replace("+psycopg", "")) as conn:
        rows = conn.execute("SELECT html_key, html_sha256 FROM compliance_reports").fetchall()
    recorded: dict[str, str] = dict(rows)
    mine = [sha for key, sha in recorded.items() if key and key.endswith(f"/{command[2]}")]
    assert mine == [digest] and digest.startswith(checksum[1]), (command[0], recorded)
    assert body.lstrip().startswith(b"<!DOCTYPE html") or b"<html" in body[:500]


@pytest.mark.slow
def test_the_tour_in_chromium(served: Tour, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    before = table_digests(served.dst)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.set_default_timeout(60_000)
        try:
            _approve_and_deny(page, served, before)
            _report_location(page, served, tmp_path)
        except Exception:
            page.screenshot(path=str(tmp_path / "tour-failed.png"), full_page=True)
            print(f"screenshot: {tmp_path / 'tour-failed.png'}")
            raise
        finally:
            browser.close()
    with psycopg.connect(served.dst) as conn:  # approved: the target now holds the source's rows
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (2_000,)
