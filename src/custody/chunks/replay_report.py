"""What a dead-letter replay plans and does, and its PHI-free artifacts.

The artifacts name jobs, chunk numbers, job kinds, exception types and counts. The error text
of a dead letter may quote row values, so it never leaves the ``dead_letters`` table.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, computed_field

from custody.chunks.dead_letters import DeadLetter
from custody.prefect_glue import publish_markdown, publish_table

_MAX_ROWS = 500


class ReplayedJob(BaseModel):
    """One job's letters and what became of them."""

    job_id: str
    kind: str | None
    letters: int
    replayed: int = 0
    still_open: int = 0
    not_replayable: str | None = Field(default=None, description="Why the job was skipped")


class ReplayResult(BaseModel):
    """The whole replay: ``status`` is nothing_to_do, planned, success, partial_failure, failed."""

    run_key: str
    jobs: list[ReplayedJob] = Field(default_factory=list)
    approved_by: str | None = None
    ran: bool = False

    @property
    def letters(self) -> int:
        """Dead letters the run selected."""
        return sum(j.letters for j in self.jobs)

    @property
    def replayed(self) -> int:
        """Letters whose chunk verified in this run."""
        return sum(j.replayed for j in self.jobs)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def status(self) -> str:
        """Outcome for the completion audit event."""
        if not self.jobs:
            return "nothing_to_do"
        if not self.ran:
            return "planned"
        if self.replayed == self.letters:
            return "success"
        return "partial_failure" if self.replayed else "failed"

    def audit_details(self) -> dict[str, int | str]:
        """Counts for the completion audit event."""
        return {
            "status": self.status,
            "jobs": len(self.jobs),
            "letters": self.letters,
            "replayed": self.replayed,
            "still_open": sum(j.still_open for j in self.jobs),
            "not_replayable": sum(j.letters for j in self.jobs if j.not_replayable),
        }


def plan_jobs(letters: list[DeadLetter]) -> list[ReplayedJob]:
    """Group the selected letters by job (the order of the listing is kept)."""
    jobs: dict[str, ReplayedJob] = {}
    for letter in letters:
        job = jobs.setdefault(
            letter.job_id,
            ReplayedJob(job_id=letter.job_id, kind=letter.kind, letters=0,
                        not_replayable=letter.why_not),
        )  # fmt: skip
        job.letters += 1
    return list(jobs.values())


def publish_replay_plan(run_key: str, letters: list[DeadLetter]) -> None:
    """The letters the run would replay, and which it cannot, as markdown."""
    lines = [
        f"# Dead-letter replay plan `{run_key}`",
        "",
        f"{len(letters)} open dead letter(s) selected; "
        f"{sum(letter.replayable for letter in letters)} can be replayed. Nothing has run yet.",
        "",
        "| job | kind | chunk | error type | attempts | failed at (UTC) | replayable |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| `{d.job_id}` | {d.kind or '?'} | {d.chunk_no} | {d.error_type} | {d.attempts} | "
            f"{d.failed_at.isoformat(timespec='seconds')} | "
            f"{'yes' if d.replayable else 'no: ' + (d.why_not or '')} |"
            for d in letters[:_MAX_ROWS]
        ],
    ]
    if len(letters) > _MAX_ROWS:
        lines.append(f"| ... {len(letters) - _MAX_ROWS} more | | | | | | |")
    lines += ["", "Full errors are in the `dead_letters` table of custody's store."]
    publish_markdown(f"replay-plan-{run_key}", "\n".join(lines))


def publish_replay_result(result: ReplayResult) -> None:
    """Summary table and markdown report of a replay."""
    publish_table(
        f"replay-summary-{result.run_key}",
        [j.model_dump() for j in result.jobs],
        f"Dead-letter replay {result.run_key}: {result.status}",
    )
    lines = [
        f"# Dead-letter replay `{result.run_key}`: {result.status}",
        "",
        f"- approved by: {result.approved_by or '(not approved)'}",
        f"- {result.replayed} of {result.letters} dead letter(s) replayed and verified",
        "",
        "| job | kind | letters | replayed | still open | skipped because |",
        "|---|---|---|---|---|---|",
        *[
            f"| `{j.job_id}` | {j.kind or '?'} | {j.letters} | {j.replayed} | {j.still_open} | "
            f"{j.not_replayable or ''} |"
            for j in result.jobs
        ],
    ]
    if any(j.kind == "migration" and j.replayed for j in result.jobs):
        lines += [
            "",
            "Migration jobs: run `migrate-tables` again with the same job id to add keys, "
            "indexes and constraints and to run the quality gate (it copies nothing again).",
        ]
    publish_markdown(f"replay-report-{result.run_key}", "\n".join(lines))
