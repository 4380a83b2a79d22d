"""`custody demo` as a new user runs it: a fresh directory, nothing configured, twice.

What is checked is what a user would look at afterwards: every flow left its artifacts, the
reports on disk have the SHA-256 their rows record, the warehouse equals the hospital by
content hash, archived rows are in their objects and no longer in the hospital's table, the
critical potassium was recorded and acknowledged, and the audit chain verifies.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import pyarrow.parquet as pq
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from sqlalchemy import Engine, select, text

from custody.archive.generic import manifest_table
from custody.audit import Keyring, verify_chain
from custody.db import get_engine
from custody.fingerprint import Fingerprint
from custody.identifiers import reflect_table
from tests.support.artifacts import read_artifacts

ROOT = Path(__file__).resolve().parents[2]
PATIENTS, ACCESS_EVENTS = 100, 800  # 100 patients: about 500 archived rows, 2 objects

# Artifact key prefixes each flow leaves (keys end in job or run ids).
EXPECTED = {
    "custody-demo": ["custody-demo-summary", "custody-demo-report", "custody-demo-progress",
                     "custody-demo-audit"],
    "migrate-tables": ["migration-summary-", "migration-report-", "migrate-patients-progress"],
    "archive-to-s3": ["archive-summary-", "archive-report-", "archive-location-",
                      "archive-access-log-progress"],
    "restore-from-archive": ["restore-"],
    "ingest-lab-results": ["ingest-files-", "ingest-summary-"],
    "compliance-report": ["compliance-reports-", "report-r"],
}  # fmt: skip


def run_demo(tmp_path: Path, prefect_api: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CUSTODY_")}
    env["PREFECT_API_URL"] = prefect_api
    command = [sys.executable, "-m", "custody.cli", "demo", "--patients", str(PATIENTS),
               "--access-events", str(ACCESS_EVENTS)]  # fmt: skip
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def fingerprint(engine: Engine, table: str, keys: list[int] | None = None) -> tuple[int, str]:
    reflected = reflect_table(engine, table)
    query = select(reflected)
    if keys is not None:
        query = query.where(reflected.c.access_id.in_(keys))
    found = Fingerprint()
    with engine.connect() as conn:
        found.add_all(conn.execute(query))
    return found.count, found.hexdigest


async def artifact_keys_by_flow(demo_run: str) -> dict[str, set[str]]:
    async with get_client() as client:
        children = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[UUID(demo_run)])
            )
        )
        names = {r.id: (await client.read_flow(r.flow_id)).name for r in children}
    keys: dict[str, set[str]] = {"custody-demo": set()}
    for run_id, name in [(UUID(demo_run), "custody-demo"), *names.items()]:
        found = {a.key for a in await read_artifacts(flow_run_id=str(run_id)) if a.key}
        keys.setdefault(name, set()).update(found)
    return keys


@pytest.mark.slow
def test_demo_runs_twice_from_nothing(prefect_api: str, tmp_path: Path) -> None:
    outputs = [run_demo(tmp_path, prefect_api) for _ in (1, 2)]

    for out in outputs:
        assert "8/8 audit chain:" in out and "intact" in out, out
        assert "done: all steps succeeded" in out
        assert "MRN" not in out  # counts, ids, keys and paths only
    work = tmp_path / "custody-demo"
    assert (work / "demo.env").stat().st_mode & 0o777 == 0o600
    lines = (work / "demo.env").read_text().splitlines()
    env = {k: v.strip("'") for k, v in (line.split("=", 1) for line in lines)}
    keyring = Keyring(
        env["CUSTODY_HMAC_ACTIVE_KEY_ID"],
        {k: v.encode() for k, v in json.loads(env["CUSTODY_HMAC_KEYS"]).items()},
    )
    store = get_engine(f"sqlite:///{work / 'custody.db'}")
    hospital = get_engine(f"sqlite:///{work / 'demo_ehr.db'}")
    warehouse = get_engine(f"sqlite:///{work / 'demo_warehouse.db'}")
    objects = work / "objects"

    # Every flow of the second run left its artifacts.
    demo_run = re.search(r"/runs/flow-run/([0-9a-f-]{36})", outputs[1])
    assert demo_run, outputs[1]
    keys = asyncio.run(artifact_keys_by_flow(demo_run.group(1)))
    for flow_name, prefixes in EXPECTED.items():
        for prefix in prefixes:
            assert any(k.startswith(prefix) for k in keys.get(flow_name, ())), (flow_name, keys)

    # The warehouse holds exactly the hospital's rows.
    for table in ("patients", "encounters", "lab_results"):
        assert fingerprint(warehouse, table) == fingerprint(hospital, table)
    assert fingerprint(warehouse, "lab_results")[0] == PATIENTS * 20

    # Archived rows: in their verified objects, gone from the table unless restored.
    with hospital.connect() as conn:
        manifest = conn.execute(select(manifest_table)).mappings().all()
    jobs = sorted({m["job_id"] for m in manifest})
    assert len(jobs) == 2 and {m["status"] for m in manifest} == {"verified"}
    newest_job = max(manifest, key=lambda m: m["created_at"])["job_id"]
    latest = [m for m in manifest if m["job_id"] == newest_job]
    assert len(latest) == 2 and sum(m["restored_at"] is not None for m in latest) == 1
    for entry in latest:
        data = (objects / entry["object_key"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        rows = pq.ParquetFile(io.BytesIO(data)).read().to_pylist()
        in_object = Fingerprint()
        in_object.add_all(tuple(r.values()) for r in rows)
        assert (in_object.count, in_object.hexdigest) == (entry["row_count"], entry["content_hash"])
        in_table = fingerprint(hospital, "access_log", [r["access_id"] for r in rows])
        if entry["restored_at"] is None:
            assert in_table[0] == 0, entry["object_key"]
        else:
            assert in_table == (entry["row_count"], entry["content_hash"])

    with store.connect() as conn:
        # Reports: the bytes on disk are the ones their rows vouch for, 5 types per run.
        reports = conn.execute(text(
            "SELECT report_type, status, csv_key, csv_sha256, html_key, html_sha256 "
            "FROM compliance_reports")).all()  # fmt: skip
        assert len(reports) == 10 and {r.status for r in reports} == {"completed"}
        assert {r.report_type for r in reports} == {
            "phi_access", "disclosures", "pipeline_activity", "audit_integrity",
            "critical_timeliness"}  # fmt: skip
        for r in reports:
            assert hashlib.sha256((objects / r.csv_key).read_bytes()).hexdigest() == r.csv_sha256
            html = (objects / r.html_key).read_bytes()
            assert hashlib.sha256(html).hexdigest() == r.html_sha256
            assert b"<svg" in html or r.report_type == "disclosures"  # charts, inline
        # One critical potassium per run: detected, audited at once, acknowledged.
        critical = conn.execute(
            text("SELECT loinc_code, audit_seq, acknowledged_at FROM critical_results")
        ).all()
        assert [c.loinc_code for c in critical] == ["2823-3", "2823-3"]
        assert all(c.audit_seq and c.acknowledged_at for c in critical)
        detected = conn.execute(text(
            "SELECT count(*) FROM audit_log WHERE action = 'lab.critical_result.detected'"
        )).scalar_one()  # fmt: skip
        quarantined = conn.execute(text("SELECT stage FROM lab_quarantine")).scalars().all()
        phi = conn.execute(
            text("SELECT count(*) FROM audit_log WHERE action LIKE 'phi.access.%'")
        ).scalar_one()
    assert detected == 2 and sorted(quarantined) == ["file", "file", "validate", "validate"]
    assert phi == 2 * ACCESS_EVENTS
    assert verify_chain(store, keyring).ok
