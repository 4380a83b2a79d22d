"""The embedded setup behind ``custody demo``: everything under one work directory.

Nothing has to be configured by hand: the store and both demo databases are SQLite files, the
object store is a directory, and an HMAC key is generated once and kept in ``demo.env`` (mode
0600) so that later runs verify the events of earlier ones. This module also holds the demo's
progress lines and its summary: counts, ids, keys and paths only, never a row.
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel, Field

from custody.settings import reset_settings_cache

DEMO_CONNECTIONS = ("demo_ehr", "demo_warehouse")

_clock = {"started": time.monotonic()}


def prepare_demo_environment(work_dir: Path) -> dict[str, str]:
    """Create the work directory and export the demo's settings into this process.

    Variables the user already set are left alone. Starts the clock of the progress lines.

    Returns:
        Where things live, for the closing summary (paths only, no secrets).
    """
    _clock["started"] = time.monotonic()
    work_dir = work_dir.resolve()
    (work_dir / "objects").mkdir(parents=True, exist_ok=True)
    env_file = work_dir / "demo.env"
    values = _read_env(env_file) if env_file.exists() else {}
    if "CUSTODY_HMAC_KEYS" not in values:
        key_id = "demo-k1"
        values = {
            "CUSTODY_HMAC_KEYS": f'{{"{key_id}": "{secrets.token_hex(32)}"}}',
            "CUSTODY_HMAC_ACTIVE_KEY_ID": key_id,
        }
    _write_env(env_file, values)  # rewritten each time: quoted, so a shell can source it
    for name, value in values.items():
        os.environ.setdefault(name, value)
    os.environ.setdefault("CUSTODY_WORK_DIR", str(work_dir))
    for name in DEMO_CONNECTIONS:
        os.environ.setdefault(
            f"CUSTODY_CONNECTIONS__{name.upper()}", f"sqlite:///{work_dir / (name + '.db')}"
        )
    reset_settings_cache()
    return {
        "work_dir": str(work_dir),
        "store": str(work_dir / "custody.db"),
        "objects": str(work_dir / "objects"),
        "inbox": str(work_dir / "inbox"),
        "source": str(work_dir / "demo_ehr.db"),
        "target": str(work_dir / "demo_warehouse.db"),
    }


def _read_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        name, _, value = line.partition("=")
        if name.strip() and not line.startswith("#"):
            values[name.strip()] = value.strip().removeprefix("'").removesuffix("'")
    return values


def _write_env(path: Path, values: dict[str, str]) -> None:
    """Mode 0600 from the start: the file holds the HMAC key that signs the audit trail."""
    text = "".join(f"{name}='{value}'\n" for name, value in values.items())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    path.chmod(0o600)


def elapsed() -> float:
    """Seconds since the demo started (since import when the flow runs on its own)."""
    return time.monotonic() - _clock["started"]


def say(text: str, out: TextIO | None = None) -> None:
    """One progress line with the elapsed time, flushed at once (counts only, never data)."""
    print(f"[{elapsed():5.1f}s] {text}", file=out or sys.stdout, flush=True)


class DemoProgress:
    """The demo's steps: a line each on stdout and a Prefect progress artifact."""

    def __init__(self, total: int) -> None:
        """Start at step 0 of ``total`` (creates the progress artifact)."""
        from custody.prefect_glue import ProgressReporter

        self.total = total
        self.done = 0
        self.steps: list[dict[str, Any]] = []
        self._reporter = ProgressReporter("custody-demo", total, unit="steps")
        self._last = elapsed()

    def step(self, name: str, summary: DemoSummary, ok: bool = True) -> None:
        """Record a finished step: its name, its outcome (from the summary), whether it worked."""
        outcome = describe_step(name, summary)
        self.done += 1
        now = elapsed()
        mark = "" if ok else "  << FAILED"
        say(f"{self.done}/{self.total} {name}: {outcome}{mark}")
        self.steps.append({"step": name, "outcome": outcome, "ok": ok,
                           "seconds": round(now - self._last, 1)})  # fmt: skip
        self._last = now
        self._reporter.advance(step=name)


class DemoSummary(BaseModel):
    """What one demo run did and where it left things (references and counts only)."""

    flow_run_id: str | None = None
    steps: list[dict[str, Any]] = Field(default_factory=list)
    hospital: dict[str, int] = Field(default_factory=dict)
    activity: dict[str, Any] = Field(default_factory=dict)
    migration: dict[str, Any] = Field(default_factory=dict)
    archive: dict[str, Any] = Field(default_factory=dict)
    restore: dict[str, Any] = Field(default_factory=dict)
    ingest: dict[str, Any] = Field(default_factory=dict)
    reports: list[dict[str, Any]] = Field(default_factory=list)
    audit_chain: dict[str, Any] = Field(default_factory=dict)

    @property
    def failed_steps(self) -> list[str]:
        """Names of the steps that did not succeed."""
        return [s["step"] for s in self.steps if not s["ok"]]


def describe_step(name: str, summary: DemoSummary) -> str:
    """One line of counts for a finished step (the summary holds no PHI, so neither does this)."""
    h, act, mig, arc = summary.hospital, summary.activity, summary.migration, summary.archive
    res, ing, chain = summary.restore, summary.ingest, summary.audit_chain
    done = [r for r in summary.reports if r.get("status") == "completed"]
    texts = {
        "synthetic hospital": f"{h.get('patients')} patients, {h.get('lab_results')} lab results, "
        f"{h.get('access_log')} access-log rows (rebuilt each run)",
        "application activity": f"{act.get('phi_access_events')} PHI access events and "
        f"{act.get('disclosures')} disclosures audited",
        "migrate-tables": f"{len(mig.get('tables', []))} tables, "
        f"{sum(t['rows'] for t in mig.get('tables', []))} rows verified, {mig.get('status')}",
        "archive-to-s3": f"{arc.get('rows')} access-log rows in {arc.get('objects')} objects, "
        f"{arc.get('status')}",
        "restore-from-archive": f"this run's first batch back: {res.get('objects')} object "
        f"verified, {res.get('rows_inserted')} rows inserted",
        "ingest-lab-results": f"{ing.get('results')} results, {ing.get('quarantined')} "
        f"quarantined, {ing.get('rejected')} file rejected, {ing.get('critical')} critical",
        "compliance-report": f"{len(done)} of {len(summary.reports)} reports written (CSV + HTML)",
        "audit chain": f"{chain.get('events_checked')} events verified, "
        f"{'intact' if chain.get('ok') else 'BROKEN'}",
    }
    return texts.get(name, "done")


def outcome_of(state: Any) -> tuple[Any, bool]:
    """A subflow's return value (or its failure) and whether it succeeded.

    The job flows return ``Failed(data=result)`` on a partial failure: the result is still
    there to report, and the demo goes on to its other steps.
    """
    value = state.result(raise_on_failure=False)
    return value, bool(state.is_completed())


def migration_facts(result: Any) -> dict[str, Any]:
    """Job id, status and per-table rows, chunks and quality of a ``MigrationResult``."""
    if not hasattr(result, "tables"):
        return {"status": "failed", "error": type(result).__name__}
    return {
        "job_id": result.job_id,
        "status": result.status,
        "tables": [
            {"table": t.table, "rows": t.verified_rows, "chunks": t.chunks,
             "failed_chunks": t.failed_chunks,
             "quality": None if t.quality is None else ("pass" if t.quality.success else "fail")}
            for t in result.tables
        ],
    }  # fmt: skip


def archive_facts(result: Any) -> dict[str, Any]:
    """Job id, status, rows archived and objects written of an ``ArchiveResult``."""
    if not hasattr(result, "policies"):
        return {"status": "failed", "error": type(result).__name__}
    return {
        "job_id": result.job_id,
        "status": result.status,
        "policies": [
            {"policy": p.policy, "table": p.table, "job_id": p.job_id,
             "cutoff": p.cutoff.isoformat(), "rows": p.rows_archived, "objects": p.verified_now,
             "failed": p.failed, "orphans": p.orphans}
            for p in result.policies
        ],
        "rows": sum(p.rows_archived for p in result.policies),
        "objects": sum(p.verified_now for p in result.policies),
    }  # fmt: skip


def ingest_facts(summary: Any, directory: str, acknowledged: int) -> dict[str, Any]:
    """Counts of an ``IngestSummary``, where the files were, and how many criticals were acked."""
    facts = {"directory": directory, "acknowledged": acknowledged}
    if not hasattr(summary, "model_dump"):
        return {**facts, "status": "failed", "error": type(summary).__name__}
    return {**facts, **summary.model_dump(), "status": summary.status.value}


def first_archive_ids(archive: dict[str, Any]) -> list[str]:
    """The id of each policy's first batch in this run: the one object the demo restores.

    Archive ids are derived from the job id and the batch number (``archive_id_for``), so the
    flow can name this run's object without reading the manifest.
    """
    from custody.archive.work import archive_id_for
    from custody.chunks.models import Chunk

    return [
        archive_id_for(Chunk(job_id=p["job_id"], chunk_no=0, lower=None, upper=None))
        for p in archive.get("policies", [])
        if p["objects"]
    ]


def restore_facts(counts: Any, ok: bool) -> dict[str, Any]:
    """Objects and rows a restore brought back, or why it did not run or failed."""
    if ok and isinstance(counts, dict):
        return counts
    return {"error": "nothing archived" if counts is None else type(counts).__name__}


def report_facts(run: Any, regulation: str) -> list[dict[str, Any]]:
    """One entry per report of a ``ReportRun``: id, type, counts, keys and checksums."""
    if not hasattr(run, "reports"):
        return [{"regulation": regulation, "status": "failed", "error": type(run).__name__}]
    return [{"regulation": regulation, **r} for r in run.reports]


def render_summary(summary: DemoSummary, where: dict[str, str], ui: str) -> str:
    """The closing text of ``custody demo``: what each flow did and where everything is."""
    objects = Path(where["objects"])
    h, act, mig, arc = summary.hospital, summary.activity, summary.migration, summary.archive
    ing, chain = summary.ingest, summary.audit_chain
    lines = [
        "",
        "What happened",
        f"  synthetic hospital      {h.get('patients')} patients, {h.get('encounters')} "
        f"encounters, {h.get('lab_results')} lab results, {h.get('access_log')} access-log rows",
        f"  application activity    {act.get('phi_access_events')} PHI access events, "
        f"{act.get('disclosures')} disclosures, request {act.get('request_id')}",
    ]
    lines += [
        f"  migrate-tables          {t['table']}: {t['rows']} rows in {t['chunks']} chunk(s), each "
        f"verified by\n{'':26}count and content hash; quality gate {t['quality']}"
        for t in mig.get("tables", [])
    ] or [f"  migrate-tables          {mig.get('status')}"]
    for p in arc.get("policies", []):
        lines.append(
            f"  archive-to-s3           {p['table']} rows before {p['cutoff'][:10]}: {p['rows']} "
            f"rows in {p['objects']} Parquet\n{'':26}objects, each read back and compared "
            "before the rows were deleted"
        )
    if not arc.get("policies"):
        lines.append(f"  archive-to-s3           {arc.get('status')}")
    lines.append(
        f"  restore-from-archive    {summary.restore.get('objects')} object(s) verified, "
        f"{summary.restore.get('rows_inserted')} rows back in the table"
    )
    lines.append(
        f"  ingest-lab-results      {ing.get('files')} files: {ing.get('results')} results, "
        f"{ing.get('quarantined')} record quarantined, {ing.get('rejected')} file\n{'':26}"
        f"rejected, {ing.get('critical')} critical value alerted and {ing.get('acknowledged')} "
        f"acknowledged; quality gate {ing.get('quality')}"
    )
    done = [r for r in summary.reports if r.get("status") == "completed"]
    lines.append(
        f"  compliance-report       {len(done)} of {len(summary.reports)} reports (CSV + HTML, "
        "SHA-256 recorded in compliance_reports)"
    )
    lines.append(
        f"  audit chain             {'intact' if chain.get('ok') else 'BROKEN'}, "
        f"{chain.get('events_checked')} events verified (hash chain and HMAC)"
    )
    lines += ["", "Where things are"]
    lines += [
        f"  {r['report_type']:<22}  {objects / r['html_key']}\n{'':26}(and .csv; "
        f"{r['records']} records, HTML SHA-256 {r['html_sha256'][:16]}…)"
        for r in done
    ]
    policies = arc.get("policies") or [{"table": "access_log"}]
    lines += [
        f"  archived objects        {objects / 'archive' / policies[0]['table']}/\n{'':26}"
        "(manifest: custody_archive_manifest in the hospital database)",
        f"  lab inbox               {ing.get('directory')}",
        f"  custody's store         {where['store']}\n{'':26}(audit_log, job ledger, lab "
        "and report tables)",
        f"  hospital database       {where['source']}",
        f"  warehouse database      {where['target']}",
        f"  object store            {objects}",
        "",
        "In the Prefect UI",
        f"  {ui}",
        "  artifacts: custody-demo-summary, migration-summary-*, archive-summary-*,\n"
        "  ingest-summary-*, compliance-reports-*, report-* (where each report is, and the\n"
        "  custody store get command that copies it out, checked)",
        "",
        "Verify the audit chain yourself (demo.env holds the demo's HMAC key)",
        f"  (set -a; . {Path(where['work_dir']) / 'demo.env'}; "
        f"CUSTODY_WORK_DIR={where['work_dir']} {Path(sys.prefix) / 'bin' / 'custody'} "
        "audit verify)",
    ]
    return "\n".join(lines)
