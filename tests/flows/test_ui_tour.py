"""The README's UI tour in a real browser: custom run, pause, Resume with approve and with deny.

Playwright drives Debian's Chromium (``/usr/bin/chromium``, which ``infra/dev/test`` installs)
through the Prefect UI of the session's loopback ``prefect server start``, with
``migrate-tables`` served from a child process as ``custody serve`` serves it. Each run is
checked as a user would: the form offers the configured connections, the run pauses, the plan
and approval artifacts say what is happening before and after the decision, the run ends as
promised and its logs hold no ERROR record.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
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
SERVE = (
    "from prefect import serve; from flows.migrate import migrate_tables; "
    "serve(migrate_tables.to_deployment(name='ui-tour'))"
)


def _poll(check: Callable[[], Any], what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)
    return found


@pytest.fixture
def served(
    request: pytest.FixtureRequest, pg_store: Engine, pg_databases: DatabaseFactory, tmp_path: Path
) -> Iterator[tuple[PrefectServer, str, str]]:
    """migrate-tables/ui-tour served; ``src`` and a ``dst`` that already holds rows."""
    urls = {name: pg_databases.create(name) for name in ("src", "dst")}
    make_keys(get_engine(urls["src"]), 2_000)
    make_keys(get_engine(urls["dst"]), 10)
    server = shared_prefect_server(request)
    env = server.client_env(
        **custody_env(store_url=pg_store.url.render_as_string(hide_password=False),
                      connections=urls),
        CUSTODY_APPROVAL_POLL_SECONDS="1", PREFECT_RUNNER_POLL_FREQUENCY="1",
    )  # fmt: skip
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", SERVE], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        url = f"{server.api_url}/deployments/name/migrate-tables/ui-tour"
        found = _poll(lambda: proc.poll() is not None or api_call("GET", url).status_code == 200,
                      "the served deployment")  # fmt: skip
        assert found and proc.poll() is None, log.read_text(errors="replace")[-3000:]
        yield server, api_call("GET", url).json()["id"], urls["dst"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


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
    page.get_by_role("button", name="Submit").click()
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
    page.get_by_role("button", name="Submit").last.click()


def _run_id(api: str, name: str) -> str | None:
    body = {"flow_runs": {"name": {"any_": [name]}}}
    found = api_call("POST", f"{api}/flow_runs/filter", json=body).json()
    return str(found[0]["id"]) if found else None


def _state(api: str, run_id: str) -> str:
    return str(api_call("GET", f"{api}/flow_runs/{run_id}").json()["state"]["type"])


def _in_state(api: str, run_id: str, states: set[str]) -> bool:
    return _state(api, run_id) in states


@pytest.mark.slow
def test_the_tour_in_chromium_approve_and_deny(
    served: tuple[PrefectServer, str, str], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    server, deployment_id, dst = served
    api, ui = server.api_url, server.api_url.removesuffix("/api")
    before, shots = table_digests(dst), tmp_path
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.set_default_timeout(60_000)
        try:
            for approve, final in ((False, "CANCELLED"), (True, "COMPLETED")):
                name = _custom_run(page, ui, deployment_id)
                run_id: str = _poll(partial(_run_id, api, name), f"run {name}")
                _poll(partial(_in_state, api, run_id, {"PAUSED"}), f"{name} to pause")
                job = f"migrate-{run_id}"
                shown = {a["key"]: a["data"] for a in run_artifacts(api, run_id)}
                assert "waiting for approval" in shown[f"migration-plan-{job}"]
                assert "is **paused**" in shown[f"approval-{job}"]
                _resume(page, ui, run_id, approve)
                ends = {"COMPLETED", "CANCELLED", "FAILED", "CRASHED"}
                _poll(partial(_in_state, api, run_id, ends), f"{name} to finish", timeout=120)
                assert _state(api, run_id) == final
                shown = {a["key"]: a["data"] for a in run_artifacts(api, run_id)}
                verdict = "Approved** by `jdoe`" if approve else "Denied** by `jdoe`"
                assert (
                    verdict in shown[f"approval-{job}"] and "paused" not in shown[f"approval-{job}"]
                )
                if not approve:
                    assert table_digests(dst) == before  # denied: nothing touched
                errors = run_logs(api, run_id, min_level=40)
                assert errors == [], [e["message"][:300] for e in errors]
        except Exception:
            page.screenshot(path=str(shots / "tour-failed.png"), full_page=True)
            print(f"screenshot: {shots / 'tour-failed.png'}")
            raise
        finally:
            browser.close()
    with psycopg.connect(dst) as conn:  # approved: the target now holds the source's rows
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (2_000,)
