"""`custody demo` as a new user runs it: a fresh directory, nothing configured, twice."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from prefect.client.orchestration import get_client
from sqlalchemy import text

from custody.audit import Keyring, verify_chain
from custody.db import get_engine

ROOT = Path(__file__).resolve().parents[2]


async def artifact_keys() -> set[str]:
    async with get_client() as client:
        return {a.key for a in await client.read_artifacts() if a.key}


def test_demo_runs_twice_from_nothing(prefect_api: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTODY_")}
    env["PREFECT_API_URL"] = prefect_api
    command = [
        sys.executable,
        "-m",
        "custody.cli",
        "demo",
        "--patients",
        "60",
        "--access-events",
        "800",
    ]
    for _ in (1, 2):
        done = subprocess.run(
            command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "lab results copied        1200" in done.stdout
        assert "audit chain               intact" in done.stdout

    work = tmp_path / "custody-demo"
    assert (work / "demo.env").stat().st_mode & 0o777 == 0o600
    keys_line = dict(line.split("=", 1) for line in (work / "demo.env").read_text().splitlines())
    import json

    keyring = Keyring(
        keys_line["CUSTODY_HMAC_ACTIVE_KEY_ID"],
        {k: v.encode() for k, v in json.loads(keys_line["CUSTODY_HMAC_KEYS"]).items()},
    )
    store = get_engine(f"sqlite:///{work / 'custody.db'}")
    result = verify_chain(store, keyring)
    assert result.ok
    with store.connect() as c:
        phi = c.execute(
            text("SELECT count(*) FROM audit_log WHERE action LIKE 'phi.access.%'")
        ).scalar_one()
        jobs = c.execute(text("SELECT count(*) FROM jobs")).scalar_one()
    assert phi == 1_600 and jobs == 2
    with get_engine(f"sqlite:///{work / 'demo_warehouse.db'}").connect() as c:
        assert c.execute(
            text("SELECT count(*), count(DISTINCT result_id) FROM lab_results")
        ).one() == (1_200, 1_200)
    keys = asyncio.run(artifact_keys())
    assert {"copy-lab-results-summary", "copy-lab-results-progress", "custody-demo-audit"} <= keys
