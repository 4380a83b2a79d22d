"""Ingest lab results (HL7 v2, FHIR R4, CSV): bad records quarantined, critical values at once."""

from __future__ import annotations

import time
from typing import Any, Literal

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field, field_validator

from custody.audit import AuditStatus, DataClassification
from custody.labs.critical import load_rules
from custody.labs.sources import source_label
from custody.prefect_glue import current_flow_run_id, publish_markdown, publish_table
from custody.storage import check_prefix
from flows.params import check_timezone
from tasks.audit import publish_audit_artifacts, record_event
from tasks.labs import (
    STORE_PREFIX,
    check_lab_results,
    find_ungated_lab_files,
    ingest_lab_files,
    list_lab_files,
)
from tasks.runners import SettingsTaskRunner


class IngestParams(BaseModel):
    """Parameters of ``ingest-lab-results`` (they become the form in the Prefect UI)."""

    model_config = ConfigDict(title="Ingest lab results", extra="forbid")

    source: str = Field(
        title="Source", min_length=1, max_length=1000,
        description="An absolute local path (file or directory), or store:<prefix> in the "
        "configured object store.",
    )  # fmt: skip
    format: Literal["auto", "hl7v2", "fhir", "csv"] = Field(
        default="auto",
        title="Format",
        description="auto: recognised from each file's content.",
    )
    csv_layout: Literal["default", "synthea"] = Field(
        default="default", title="CSV columns",
        description="default: custody's documented columns; synthea: Synthea observations.csv.",
    )  # fmt: skip
    include: list[str] = Field(
        default=["*"], title="File name patterns", min_length=1,
        description="Shell patterns (e.g. *.hl7); a file is read when its name matches one.",
    )  # fmt: skip
    chunk_size: int = Field(
        default=50,
        ge=1,
        le=10_000,
        title="Files per task",
        description="Files ingested by one task run (each file is still its own transaction).",
    )
    critical_rules: str = Field(
        default="default", title="Critical-value rule set",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
        description="A rule set name: one shipped with custody or a site's <name>.json in the "
        "configured rules directory (CUSTODY_LAB_RULES_DIR). Never a path.",
    )  # fmt: skip
    timezone: str = Field(
        default="UTC", title="Time zone of times sent without one", description="IANA name."
    )

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if value.startswith(STORE_PREFIX):
            check_prefix(value[len(STORE_PREFIX) :])  # plain key segments: no '..', no '//'
            return value
        if not value.startswith("/"):
            raise ValueError("source must be an absolute path or store:<prefix>")
        if ".." in value.split("/") or "\x00" in value:
            raise ValueError("source must not contain '..' or NUL")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        return check_timezone(value)


class IngestSummary(BaseModel):
    """Counts of one run (no PHI): what a dashboard or a caller of the API reads back."""

    files: int = 0
    ingested: int = 0
    skipped: int = 0
    claimed: int = 0  # held by an overlapping run, which lands them (issue 15 item 10)
    rejected: int = 0
    results: int = 0
    quarantined: int = 0
    not_results: int = 0
    critical: int = 0
    gated_files: int = 0
    quality: Literal["pass", "fail", "not run"] = "not run"
    quality_failed: list[str] = Field(default_factory=list)
    seconds: float = 0.0

    @property
    def status(self) -> AuditStatus:
        """Partial failure when a file was rejected or the GX gate failed."""
        if self.rejected or self.quality == "fail":
            return AuditStatus.PARTIAL_FAILURE
        return AuditStatus.SUCCESS


@flow(
    name="ingest-lab-results",
    description="Ingest lab results with critical-value alerts.",
    task_runner=SettingsTaskRunner(),
)
def ingest_lab_results(params: IngestParams) -> IngestSummary:
    """List the files, ingest them in groups (each file atomic), report the counts.

    Args:
        params: Where the files are, their format and the critical-value rules.
    """
    started = time.monotonic()
    load_rules(params.critical_rules)  # a bad rule set fails before anything is read
    record_event(
        "lab.ingestion.started", AuditStatus.STARTED, "lab_source", source_label(params.source),
        details={"format": params.format},
    )  # fmt: skip
    refs = list_lab_files(params.source, params.include)
    starts = list(range(0, len(refs), params.chunk_size))
    groups = [refs[i : i + params.chunk_size] for i in starts]
    futures = ingest_lab_files.map(
        params.source, groups, params.format, params.csv_layout, params.critical_rules,
        params.timezone, [i + 1 for i in starts],
    )  # fmt: skip
    reports: list[dict[str, Any]] = [r for f in futures for r in f.result()]
    landed = [r["sha256"] for r in reports if r["status"] == "ingested" and r["results"]]
    skipped = [r["sha256"] for r in reports if r["status"] == "skipped"]
    if skipped:  # landed by a run that died before its gate: gate them now
        landed += find_ungated_lab_files(skipped)
    quality = check_lab_results(landed) if landed else None
    summary = _summarise(reports, time.monotonic() - started)
    summary.gated_files = len(landed)
    if quality is not None:
        summary.quality = "pass" if quality.success else "fail"
        summary.quality_failed = quality.failed
    record_event(
        "lab.ingestion.completed", summary.status,
        "lab_source", source_label(params.source), details=summary.model_dump(),
        classification=DataClassification.INTERNAL,
    )  # fmt: skip
    _publish(reports, summary)
    publish_audit_artifacts(f"ingest-{current_flow_run_id() or 'local'}")
    return summary


def _summarise(reports: list[dict[str, Any]], seconds: float) -> IngestSummary:
    def count(status: str) -> int:
        return sum(1 for r in reports if r["status"] == status)

    return IngestSummary(
        files=len(reports), ingested=count("ingested"), skipped=count("skipped"),
        claimed=count("claimed"),
        rejected=count("rejected"), results=sum(r["results"] for r in reports),
        quarantined=sum(r["quarantined"] for r in reports),
        not_results=sum(r.get("not_results", 0) for r in reports),
        critical=sum(r["critical"] for r in reports), seconds=round(seconds, 2),
    )  # fmt: skip


def _summary_rows(summary: IngestSummary) -> list[tuple[str, object]]:
    """The summary in words, for a person reading the artifact."""
    s = summary
    return [
        ("Files found", s.files),
        ("Files ingested", s.ingested),
        ("Files already ingested (skipped)", s.skipped),
        ("Files rejected", s.rejected),
        ("Results stored", s.results),
        ("Records quarantined (reasons in lab_quarantine)", s.quarantined),
        ("Critical results (audited and announced)", s.critical),
        ("Files checked by the quality gate", s.gated_files),
        ("Quality gate", s.quality),
        ("Failed quality checks", ", ".join(s.quality_failed) or "none"),
        ("Seconds", s.seconds),
    ]


def _publish(reports: list[dict[str, Any]], summary: IngestSummary) -> None:
    run = current_flow_run_id() or "local"
    columns = ("format", "status", "results", "quarantined", "not_results", "critical")
    publish_table(
        f"ingest-files-{run}",
        [{"file": r["seq"], "sha256": r["sha256"][:16], **{c: r[c] for c in columns}}
         for r in reports],
        "Per file (by sequence number and content digest, never by name: a name may carry "
        "PHI): counts only. Reasons for quarantined records are in lab_quarantine.",
    )  # fmt: skip
    lines = [f"| {label} | {value} |" for label, value in _summary_rows(summary)]
    publish_markdown(
        f"ingest-summary-{run}",
        f"# Lab ingestion: {summary.status.value}\n\n| | |\n|---|---|\n" + "\n".join(lines) + "\n",
    )
