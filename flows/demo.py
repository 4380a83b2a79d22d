"""The demo: a synthetic hospital run through all four job flows, then the audit chain verified.

It composes the job flows as subflows with their own params models, on the embedded defaults
(SQLite store and databases, a local object-store directory). A failing step is reported and
the others still run, as an operator would want to see.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field

from custody.demo_setup import (
    DemoProgress,
    DemoSummary,
    archive_facts,
    first_archive_ids,
    ingest_facts,
    migration_facts,
    outcome_of,
    report_facts,
    restore_facts,
)
from custody.prefect_glue import current_flow_run_id, publish_markdown, publish_table
from custody.reports.model import ReportType
from custody.synth import ANCHOR
from flows.archive import (
    ArchiveParams,
    RestoreParams,
    RetentionPolicy,
    archive_to_s3,
    restore_from_archive,
)
from flows.compliance_report import ReportParams, compliance_report
from flows.ingest_lab_results import IngestParams, ingest_lab_results
from flows.migrate import MigrateParams, migrate_tables
from flows.params import CONNECTION
from tasks.audit import publish_audit_artifacts, verify_audit_chain
from tasks.synth import (
    acknowledge_criticals,
    deliver_lab_files,
    generate_ehr,
    reset_tables,
    simulate_disclosures,
    simulate_phi_access,
)

ARCHIVE_CUTOFF = (ANCHOR - timedelta(days=365)).date()  # the older half of the access log
MIGRATED = ["patients", "encounters", "lab_results"]
HIPAA = [ReportType.PHI_ACCESS, ReportType.DISCLOSURES, ReportType.PIPELINE_ACTIVITY,
         ReportType.AUDIT_INTEGRITY]  # fmt: skip


class DemoParams(BaseModel):
    """Sizes and names of the demo (it runs on the embedded SQLite defaults)."""

    model_config = ConfigDict(title="Custody demo", extra="forbid")

    patients: int = Field(default=300, ge=1, le=100_000, title="Synthetic patients")
    access_events: int = Field(default=5_000, ge=0, le=1_000_000, title="PHI access events")
    chunk_size: int = Field(default=1_000, ge=1, le=1_000_000, title="Rows per migration chunk")
    archive_batch: int = Field(default=400, ge=1, le=1_000_000, title="Rows per archive object")
    source: str = Field(default="demo_ehr", title="Hospital database", pattern=CONNECTION)
    target: str = Field(default="demo_warehouse", title="Warehouse database", pattern=CONNECTION)
    inbox: str | None = Field(
        default=None, title="Lab inbox (absolute path)",
        description="Where the lab's files are delivered; empty: <work_dir>/inbox.",
    )  # fmt: skip


@flow(name="custody-demo", description="A synthetic hospital through all four custody flows.")
def custody_demo(params: DemoParams | None = None) -> DemoSummary:
    """Generate, migrate, archive and restore, ingest, report, verify; say what happened."""
    params = params or DemoParams()
    steps = DemoProgress(total=8)
    summary = DemoSummary(flow_run_id=current_flow_run_id())

    summary.hospital = asdict(generate_ehr(params.source, params.patients))
    reset_tables(params.target, MIGRATED)  # the warehouse: this run's verified copy, nothing else
    steps.step("synthetic hospital", summary)
    summary.activity = {
        "phi_access_events": simulate_phi_access(params.access_events, params.patients),
        **simulate_disclosures(params.patients),
    }
    steps.step("application activity", summary)

    migrated, ok = outcome_of(migrate_tables(MigrateParams(
        source=params.source, target=params.target, tables=MIGRATED,
        chunk_size=params.chunk_size,
    ), return_state=True))  # fmt: skip
    summary.migration = migration_facts(migrated)
    steps.step("migrate-tables", summary, ok)

    archived, ok = outcome_of(archive_to_s3(ArchiveParams(
        database=params.source, batch_size=params.archive_batch,
        policies=[RetentionPolicy(name="access_log", table="access_log",
                                  timestamp_column="accessed_at", cutoff=ARCHIVE_CUTOFF)],
    ), return_state=True))  # fmt: skip
    summary.archive = archive_facts(archived)
    steps.step("archive-to-s3", summary, ok)
    restored, ok = None, False  # nothing archived, nothing to restore
    if archive_ids := first_archive_ids(summary.archive):
        restored, ok = outcome_of(restore_from_archive(
            RestoreParams(database=params.source, archive_ids=archive_ids), return_state=True
        ))  # fmt: skip
    summary.restore = restore_facts(restored, ok)
    steps.step("restore-from-archive", summary, ok)

    delivery = deliver_lab_files(params.inbox, params.patients)
    ingested, ok = outcome_of(
        ingest_lab_results(IngestParams(source=delivery.directory), return_state=True)
    )
    summary.ingest = ingest_facts(ingested, delivery.directory, acknowledge_criticals())
    steps.step("ingest-lab-results", summary, ok)

    today = datetime.now(UTC).date()
    start, end = today - timedelta(days=30), today + timedelta(days=1)
    hipaa, ok_hipaa = outcome_of(compliance_report(ReportParams(
        regulation="HIPAA", report_types=HIPAA, request_id=summary.activity["request_id"],
        period="custom", period_start=start, period_end=end,
    ), return_state=True))  # fmt: skip
    clia, ok_clia = outcome_of(compliance_report(ReportParams(
        regulation="CLIA", report_types=[ReportType.CRITICAL_TIMELINESS],
        period="custom", period_start=start, period_end=end,
    ), return_state=True))  # fmt: skip
    summary.reports = report_facts(hipaa, "HIPAA") + report_facts(clia, "CLIA")
    steps.step("compliance-report", summary, ok_hipaa and ok_clia)

    summary.audit_chain = verify_audit_chain()
    steps.step("audit chain", summary, summary.audit_chain["ok"])
    summary.steps = steps.steps
    _publish(summary)
    return summary


def _publish(summary: DemoSummary) -> None:
    publish_table("custody-demo-summary", summary.steps, "The demo's steps: outcomes and timings")
    lines = ["# custody demo", "", "| step | outcome | ok |", "|---|---|---|",
             *[f"| {s['step']} | {s['outcome']} | {s['ok']} |" for s in summary.steps],
             "", "Reports (object keys):", "",
             *[f"- {r['report_type']}: `{r.get('html_key')}`, `{r.get('csv_key')}`"
               for r in summary.reports]]  # fmt: skip
    publish_markdown("custody-demo-report", "\n".join(lines))
    publish_audit_artifacts("custody-demo")
