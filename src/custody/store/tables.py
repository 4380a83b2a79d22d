"""Custody's own tables, as SQLAlchemy Core objects for queries.

The DDL that creates them lives in the Alembic migrations next to this module; keep both in step.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects.postgresql import JSONB

from custody.db import UTCDateTime

metadata = MetaData()

audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("occurred_at", UTCDateTime, nullable=False),
    Column("recorded_at", UTCDateTime, nullable=False),
    Column("event_id", String(36), nullable=False),
    Column("principal", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("severity", Text, nullable=False),
    Column("resource_type", Text, nullable=False),
    Column("resource_id", Text),
    Column("correlation_id", Text),
    Column("regulation", Text),
    Column("data_classification", Text, nullable=False),
    Column("retention_days", Integer),
    Column("details", JSON().with_variant(JSONB(), "postgresql"), nullable=False),
    Column("prev_hash", Text, nullable=False),
    Column("row_hash", Text, nullable=False),
    Column("key_id", Text, nullable=False),
    Column("signature", Text, nullable=False),
)

audit_chain_head = Table(
    "audit_chain_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("row_hash", Text, nullable=False),
    Column("key_id", Text),
    Column("signature", Text),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("store_id", Text),  # random, set once by migration 0005; signed into the head
)

jobs = Table(
    "jobs",
    metadata,
    Column("job_id", Text, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("key_column", Text, nullable=False),
    Column("chunk_size", Integer, nullable=False),
    Column("total_chunks", Integer, nullable=False),
    Column("planned_at", UTCDateTime, nullable=False),
    Column("work", JSON().with_variant(JSONB(), "postgresql")),
)

job_chunks = Table(
    "job_chunks",
    metadata,
    Column("job_id", Text, primary_key=True),
    Column("chunk_no", Integer, primary_key=True, autoincrement=False),
    Column("lower_key", Text),
    Column("upper_key", Text),
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("source_count", BigInteger),
    Column("source_hash", Text),
    Column("target_count", BigInteger),
    Column("target_hash", Text),
    Column("error", Text),
    Column("started_at", UTCDateTime),
    Column("finished_at", UTCDateTime),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("job_id", Text, nullable=False),
    Column("item_ref", Text, nullable=False),
    Column("error_type", Text, nullable=False),
    Column("error", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("failed_at", UTCDateTime, nullable=False),
    Column("replayed_at", UTCDateTime),
    Column("resolution", Text),
    Column("replayed_by", Text),
    Column("replay_run_id", Text),
)
