"""What a migration did, per table, and its PHI-free artifacts (counts, names, statuses)."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, Field, computed_field

from custody.chunks import BatchResult
from custody.migration.catalog import TableInfo
from custody.prefect_glue import publish_markdown, publish_table
from custody.quality import QualityResult


class TableResult(BaseModel):
    """One table's outcome."""

    table: str
    job_id: str
    chunks: int
    verified_now: int
    already_verified: int
    failed_chunks: int
    rows_copied: int
    verified_rows: int
    seconds: float
    failures: list[str] = Field(default_factory=list)
    quality: QualityResult | None = None
    notes: list[str] = Field(
        default_factory=list,
        description="Columns compared in a weaker sense than byte for byte (names, not data)",
    )

    @classmethod
    def from_batch(
        cls,
        table: str,
        job_id: str,
        batch: BatchResult,
        seconds: float,
        verified_rows: int,
        notes: tuple[str, ...] = (),
    ) -> TableResult:
        """Summarise a table's BatchResult (verified_rows counts all runs of the job)."""
        return cls(
            table=table, job_id=job_id, chunks=batch.total, verified_now=batch.successful,
            already_verified=batch.skipped, failed_chunks=batch.failed, rows_copied=batch.rows,
            verified_rows=verified_rows, seconds=round(seconds, 3),
            failures=[f"{f.ref}: {f.error}" for f in batch.failures], notes=list(notes),
        )  # fmt: skip


class MigrationResult(BaseModel):
    """The whole run: ``status`` is success, partial_failure, failed or planned."""

    job_id: str
    tables: list[TableResult] = Field(default_factory=list)
    schema_steps: dict[str, int] = Field(default_factory=dict)
    # What was deliberately not migrated, and why (foreign keys to tables not asked for, views
    # reading them, roles the target lacks): names only, never values.
    notes: list[str] = Field(default_factory=list)
    planned: bool = False

    @property
    def all_verified(self) -> bool:
        """Every chunk of every table is verified (now or earlier)."""
        return all(t.failed_chunks == 0 for t in self.tables)

    @property
    def nothing_to_do(self) -> bool:
        """A re-run of a finished job: no chunk needed work."""
        return bool(self.tables) and all(t.verified_now == 0 and t.failed_chunks == 0
                                         for t in self.tables)  # fmt: skip

    @computed_field  # type: ignore[prop-decorator]
    @property
    def status(self) -> str:
        """Outcome: success, partial_failure, failed (or planned for a dry run)."""
        if self.planned:
            return "planned"
        quality_failed = any(t.quality is not None and not t.quality.success for t in self.tables)
        if self.all_verified and not quality_failed:
            return "success"
        verified = sum(t.verified_now + t.already_verified for t in self.tables)
        return "partial_failure" if verified and not quality_failed else "failed"

    def audit_details(self) -> dict[str, Any]:
        """Counts for the completion audit event."""
        return {
            "status": self.status,
            "tables": len(self.tables),
            "rows_verified": sum(t.verified_rows for t in self.tables),
            "chunks_failed": sum(t.failed_chunks for t in self.tables),
            "nothing_to_do": self.nothing_to_do,
        }


def publish_plan(job_id: str, tables: list[TableInfo], chunk_size: int) -> None:
    """Dry run: the plan as a markdown artifact (tables, row estimates, chunks, copy path)."""
    lines = [
        f"# Migration plan `{job_id}` (dry run: nothing was changed)",
        "",
        "| table | estimated rows | chunks | chunk key | COPY format |",
        "|---|---|---|---|---|",
    ]
    for t in tables:
        chunks = max(1, math.ceil(t.estimated_rows / chunk_size)) if t.key_column else 1
        lines.append(
            f"| {t.name} | {t.estimated_rows} | {chunks} | {t.key_column or '(none)'} | "
            f"{'binary' if t.binary_safe else 'text'} |"
        )
    publish_markdown(f"migration-plan-{job_id}", "\n".join(lines))


def publish_result(result: MigrationResult) -> None:
    """Summary table and markdown report of a migration."""
    publish_table(
        f"migration-summary-{result.job_id}",
        [
            {"table": t.table, "rows": t.verified_rows, "chunks": t.chunks,
             "failed_chunks": t.failed_chunks, "seconds": t.seconds,
             "rows_per_s": round(t.rows_copied / t.seconds) if t.seconds > 0 else None,
             "quality": None if t.quality is None else ("pass" if t.quality.success else "FAIL")}
            for t in result.tables
        ],
        f"Migration {result.job_id}: {result.status}",
    )  # fmt: skip
    lines = [f"# Migration `{result.job_id}`: {result.status}", ""]
    if result.nothing_to_do:
        lines += ["Nothing to do: every chunk of every table was already verified.", ""]
    lines += [f"- {len(result.tables)} tables, {sum(t.verified_rows for t in result.tables)} rows "
              f"verified by count and content hash"]  # fmt: skip
    failures = [f for t in result.tables for f in t.failures]
    quality = [f"{t.table}: {', '.join(t.quality.failed)}" for t in result.tables
               if t.quality is not None and not t.quality.success]  # fmt: skip
    if failures:
        lines += ["", "## Failed chunks", "", *[f"- `{f}`" for f in failures[:200]],
                  "", "Full errors: `job_chunks` ledger and `dead_letters`."]  # fmt: skip
    if quality:
        lines += ["", "## Failed quality checks", "", *[f"- {q}" for q in quality]]
    notes = [f"{t.table}.{n}" for t in result.tables for n in t.notes]
    if notes:
        lines += ["", "## Not compared byte for byte", "", *[f"- {n}" for n in notes[:200]]]
    gx_notes = [f"{t.table}.{n}" for t in result.tables if t.quality for n in t.quality.notes]
    if gx_notes:
        lines += ["", "## Quality checks on a column's text form", "",
                  *[f"- {n}" for n in gx_notes[:200]]]  # fmt: skip
    if result.notes:
        lines += ["", "## Not migrated", "", *[f"- {n}" for n in result.notes]]
    publish_markdown(f"migration-report-{result.job_id}", "\n".join(lines))
