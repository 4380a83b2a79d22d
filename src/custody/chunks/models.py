"""Value objects of the chunk engine. They hold references and counts only, never rows."""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator

KeyValue = int | str
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def check_job_id(job_id: str) -> str:
    """Job ids become ledger keys and appear in Prefect: plain characters only."""
    if not _JOB_ID.fullmatch(job_id):
        raise ValueError(
            f"job id {job_id!r} must be 1-128 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit"
        )
    return job_id


class ChunkStatus(StrEnum):
    """Ledger status of one chunk."""

    PENDING = "pending"
    RUNNING = "running"
    VERIFIED = "verified"
    FAILED = "failed"


class JobSpec(BaseModel):
    """What a chunked job is: re-using its ``job_id`` resumes the same plan."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    kind: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="e.g. migration, archival")
    subject: str = Field(description="What the chunks range over, e.g. 'source.lab_results'")
    key_column: str
    chunk_size: int = Field(ge=1, le=10_000_000)
    audit_prefix: str = Field(
        default="job",
        pattern=r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$",
        description="Audit actions are <prefix>.chunk_processed / <prefix>.chunk_failed",
    )
    audit_verbs: tuple[str, str] = Field(
        default=("chunk_processed", "chunk_failed"),
        description="The verbs after the prefix for a verified and a failed chunk",
    )

    @field_validator("job_id")
    @classmethod
    def _check_job_id(cls, value: str) -> str:
        return check_job_id(value)


class Chunk(BaseModel):
    """One unit of work: keys in ``(lower, upper]``; ``None`` means unbounded on that side."""

    model_config = ConfigDict(frozen=True)

    job_id: str
    chunk_no: int = Field(ge=0)
    lower: KeyValue | None
    upper: KeyValue | None
    audit_prefix: str = "job"
    audit_verbs: tuple[str, str] = ("chunk_processed", "chunk_failed")
    attempt: int = Field(default=0, description="Set by the runner: 1 on a chunk's first try")

    @property
    def ref(self) -> str:
        """Stable reference used in the ledger, dead letters and Prefect task names."""
        return f"{self.job_id}#{self.chunk_no}"


class ChunkOutcome(BaseModel):
    """Counts and order-independent content hashes of a chunk on both sides."""

    model_config = ConfigDict(frozen=True)

    source_count: int
    source_hash: str
    target_count: int
    target_hash: str
    details: dict[str, str | int] = Field(
        default_factory=dict,
        description="References for the audit event (object key, checksum, ...), never data",
    )

    @property
    def verified(self) -> bool:
        """Both sides agree on count and content."""
        return (self.source_count, self.source_hash) == (self.target_count, self.target_hash)


class JobPlan(BaseModel):
    """The stored plan of a job and which of its chunks are already verified."""

    model_config = ConfigDict(frozen=True)

    spec: JobSpec
    chunks: tuple[Chunk, ...]
    verified: frozenset[int] = frozenset()
    resumed: bool = False

    @property
    def pending(self) -> tuple[Chunk, ...]:
        """Chunks still to do (everything not verified, failed ones included)."""
        return tuple(c for c in self.chunks if c.chunk_no not in self.verified)


class ChunkFailure(BaseModel):
    """A chunk that did not verify, with a PHI-free reason (the full error is in the ledger)."""

    ref: str
    error: str


class BatchResult(BaseModel):
    """What a chunked run did: the standard result of every chunked flow."""

    total: int
    successful: int
    failed: int
    skipped: int = Field(default=0, description="Chunks already verified by an earlier run")
    rows: int = 0
    failures: list[ChunkFailure] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def status(self) -> str:
        """success, partial_failure or failed, as recorded in audit events."""
        if self.failed == 0:
            return "success"
        return "partial_failure" if self.successful + self.skipped > 0 else "failed"
