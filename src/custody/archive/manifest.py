"""The archive manifest: one row per archived object, kept in the database the rows came from.

It lives beside the rows it accounts for (schema ``custody`` of the source database) so that
deleting a batch of rows and marking its object verified are one transaction: after a crash
the rows are either still in their table or accounted for by a verified object, never neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

SCHEMA = "custody"

DDL = """
CREATE SCHEMA IF NOT EXISTS custody;
CREATE TABLE IF NOT EXISTS custody.archive_manifest (
    archive_id      text PRIMARY KEY,
    job_id          text NOT NULL,
    policy          text NOT NULL,
    schema_name     text NOT NULL,
    table_name      text NOT NULL,
    key_column      text NOT NULL,
    key_lower       text,
    key_upper       text,
    time_column     text NOT NULL,
    time_min        timestamptz,
    time_max        timestamptz,
    row_count       bigint NOT NULL,
    content_hash    text,  -- set when verified
    columns         jsonb NOT NULL,
    object_key      text NOT NULL,
    version_id      text,
    sha256          text NOT NULL,
    bytes           bigint NOT NULL,
    lock_mode       text NOT NULL,
    retain_until    timestamptz,
    classification  text NOT NULL,
    regulation      text,
    status          text NOT NULL CHECK (status IN ('uploaded', 'verified', 'corrupt')),
    source_deleted  boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    verified_at     timestamptz,
    restored_at     timestamptz
);
CREATE INDEX IF NOT EXISTS archive_manifest_table_time
    ON custody.archive_manifest (table_name, time_min, time_max);
ALTER TABLE custody.archive_manifest ADD COLUMN IF NOT EXISTS hash_method text;
"""


@dataclass(frozen=True)
class ManifestRow:
    """An archived object and the rows it holds: references, counts and hashes only."""

    archive_id: str
    job_id: str
    policy: str
    schema_name: str
    table_name: str
    key_column: str
    key_lower: str | None
    key_upper: str | None
    time_column: str
    time_min: datetime | None
    time_max: datetime | None
    row_count: int
    content_hash: str | None
    columns: list[dict[str, str]]
    object_key: str
    version_id: str | None
    sha256: str
    bytes: int
    lock_mode: str
    retain_until: datetime | None
    classification: str
    regulation: str | None
    status: str = "uploaded"
    source_deleted: bool = False
    restored_at: datetime | None = None
    hash_method: str | None = None  # custody.archive.columns.HASH_METHOD; None: before v2


def ensure_manifest(conn: psycopg.Connection[Any]) -> None:
    """Create the manifest table if missing (idempotent; needs CREATE on the database once)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('custody.archive_manifest'))")
        for statement in DDL.split(";"):
            if statement.strip():
                conn.execute(statement)


_FIELDS = [f for f in ManifestRow.__dataclass_fields__ if f not in ("restored_at",)]


def insert(conn: psycopg.Connection[Any], row: ManifestRow) -> None:
    """Insert or replace a manifest row that is not verified yet (a re-upload after a crash)."""
    values = {f: getattr(row, f) for f in _FIELDS}
    values["columns"] = Jsonb(row.columns)
    names = ", ".join(_FIELDS)
    params = ", ".join(f"%({f})s" for f in _FIELDS)
    updates = ", ".join(f"{f} = EXCLUDED.{f}" for f in _FIELDS if f != "archive_id")
    conn.execute(
        f"INSERT INTO custody.archive_manifest ({names}) VALUES ({params}) "
        f"ON CONFLICT (archive_id) DO UPDATE SET {updates} "
        "WHERE custody.archive_manifest.status <> 'verified'",
        values,
    )


def load(conn: psycopg.Connection[Any], archive_id: str) -> ManifestRow | None:
    """One manifest row by id."""
    return _one(conn, "WHERE archive_id = %s", (archive_id,))


def find(
    conn: psycopg.Connection[Any],
    *,
    archive_ids: list[str] | None = None,
    table: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[ManifestRow]:
    """Verified manifest rows by ids, or by table and overlapping time range."""
    clauses: list[str] = ["status = 'verified'"]
    params: list[object] = []
    if archive_ids:
        clauses.append("archive_id = ANY(%s)")
        params.append(archive_ids)
    if table:
        clauses.append("table_name = %s")
        params.append(table)
    if start:
        clauses.append("time_max >= %s")
        params.append(start)
    if end:
        clauses.append("time_min < %s")
        params.append(end)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT * FROM custody.archive_manifest WHERE "
            + " AND ".join(clauses)
            + " ORDER BY table_name, time_min, archive_id",
            params,
        )
        return [_row(r) for r in cur.fetchall()]


def _one(
    conn: psycopg.Connection[Any], where: str, params: tuple[object, ...]
) -> ManifestRow | None:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT * FROM custody.archive_manifest {where}", params)
        found = cur.fetchone()
    return _row(found) if found else None


def _row(values: dict[str, Any]) -> ManifestRow:
    return ManifestRow(**{k: v for k, v in values.items() if k in ManifestRow.__dataclass_fields__})
