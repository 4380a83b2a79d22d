"""One archive batch, crash-safe: upload, manifest, read back and compare, then delete.

The order is what makes a crash harmless. The object is uploaded and its manifest row written
(status ``uploaded``) before anything is deleted. The read-back check loads the object's rows
into a temporary table typed like the source, and compares count and content hash with the
source rows as one statement deletes them; if they differ, the transaction rolls back and the
rows stay. Otherwise, in that same transaction, the manifest row is marked ``verified``. A
crash before that commit leaves the rows where they were; a re-run finds the manifest row (or
the object) under the same archive id and carries on.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from psycopg import sql

from custody.archive import manifest
from custody.archive.arrow_io import column_types, read_arrow, write_arrow
from custody.chunks.models import Chunk, ChunkOutcome
from custody.db import get_engine
from custody.errors import CustodyError
from custody.migration.catalog import TableInfo
from custody.migration.pgcopy import (
    fingerprint,
    fingerprint_returning,
    key_range,
    select_columns,
)
from custody.pgclient import libpq_dsn
from custody.settings import get_settings
from custody.storage import (
    LockMode,
    ObjectStore,
    Retention,
    check_key_part,
    join_key,
    open_store,
    sha256_hex,
)

READBACK = "custody_readback"


class ArchiveVerificationError(CustodyError):
    """The stored object does not hold exactly the source rows; nothing was deleted.

    Transient: the manifest is marked ``corrupt`` so the next attempt uploads afresh.
    """

    transient = True


@dataclass(frozen=True)
class ArchiveTarget:
    """Where objects go and how long they must be kept."""

    store_url: str | None
    prefix: str
    lock: LockMode
    keep_days: int


@dataclass(frozen=True)
class ArchiveRangeWork:
    """Chunk work: archive the eligible rows of one key range of one table."""

    database: str
    policy: str
    info: TableInfo
    time_column: str
    cutoff: datetime
    classification: str
    regulation: str | None
    target: ArchiveTarget
    delete_source: bool = True

    def __call__(self, chunk: Chunk) -> ChunkOutcome:
        """Archive the chunk (or finish what an interrupted attempt started)."""
        archive_id = archive_id_for(chunk)
        url = get_engine(get_settings().connection_url(self.database)).url
        store = open_store(self.target.store_url)
        with psycopg.connect(libpq_dsn(url), autocommit=True) as conn:
            conn.execute("SET TimeZone = 'UTC'")
            row = manifest.load(conn, archive_id)
            if row is not None and row.status == "verified":
                return _outcome(row, (row.row_count, row.content_hash))
            if row is None or row.status == "corrupt":
                row = self._upload(conn, store, chunk, archive_id)
                if row is None:  # nothing eligible left in the range
                    return ChunkOutcome(
                        source_count=0,
                        source_hash="0",
                        target_count=0,
                        target_hash="0",
                        details={"archive_id": archive_id, "rows": 0},
                    )
            return self._verify_and_delete(conn, store, row, chunk)

    def _where(self, chunk: Chunk) -> sql.Composable:
        return sql.SQL("{range} AND {t} < {cutoff}").format(
            range=key_range(self.info.key_column, chunk.lower, chunk.upper),
            t=sql.Identifier(self.time_column),
            cutoff=sql.Literal(self.cutoff),
        )

    def _upload(
        self, conn: psycopg.Connection[Any], store: ObjectStore, chunk: Chunk, archive_id: str
    ) -> manifest.ManifestRow | None:
        where = self._where(chunk)
        method = self.info.hash_method
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            with conn.cursor() as cur:
                count, content = fingerprint(cur, select_columns(self.info, where), method=method)
            if count == 0:
                return None
            columns = column_types(conn, self.info.schema, self.info.name)
            table = read_arrow(
                conn, columns, sql.Identifier(self.info.schema, self.info.name), where
            )
        if table.num_rows != count:
            raise ArchiveVerificationError(
                f"read {table.num_rows} rows for archive {archive_id}, the source counted {count}"
            )
        time_min, time_max = _time_range(table, self.time_column)
        data = _parquet(table)
        digest = sha256_hex(data)
        key = join_key(
            self.target.prefix,
            check_key_part(self.info.name, "table name"),
            f"{time_min.year:04d}",
            f"{time_min.month:02d}",
            f"{archive_id}.parquet",
        )
        retention = self._retention(time_max)
        existing = store.head(key)
        if existing is not None and existing.sha256 == digest:
            stored = existing  # uploaded by an attempt that crashed before its manifest row
        else:
            stored = store.put(key, data, retention=retention)
        row = manifest.ManifestRow(
            archive_id=archive_id,
            job_id=chunk.job_id,
            policy=self.policy,
            schema_name=self.info.schema,
            table_name=self.info.name,
            key_column=self.info.key_column or "",
            key_lower=None if chunk.lower is None else str(chunk.lower),
            key_upper=None if chunk.upper is None else str(chunk.upper),
            time_column=self.time_column,
            time_min=time_min,
            time_max=time_max,
            row_count=count,
            content_hash=content,
            columns=[{"name": c.name, "type": c.pg_type} for c in columns],
            object_key=key,
            version_id=stored.version_id,
            sha256=digest,
            bytes=len(data),
            lock_mode=retention.mode.value if retention else LockMode.NONE.value,
            retain_until=retention.retain_until if retention else None,
            classification=self.classification,
            regulation=self.regulation,
        )
        manifest.insert(conn, row)
        return row

    def _retention(self, time_max: datetime) -> Retention | None:
        if self.target.lock is LockMode.NONE:
            return None
        required = time_max + timedelta(days=self.target.keep_days)
        # A store refuses a retain-until in the past: rows already past their period get a day.
        floor = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
        return Retention(self.target.lock, max(required, floor))

    def _verify_and_delete(
        self,
        conn: psycopg.Connection[Any],
        store: ObjectStore,
        row: manifest.ManifestRow,
        chunk: Chunk,
    ) -> ChunkOutcome:
        expected = (row.row_count, row.content_hash)
        try:
            table = read_object(store, row)
            with conn.transaction():
                back = load_into_temp(conn, self.info, table, READBACK)
                if back != expected:
                    raise ArchiveVerificationError(
                        f"object {row.object_key} reads back as {back[0]} rows/{back[1]}, "
                        f"manifest says {expected[0]}/{expected[1]}"
                    )
                columns = sql.SQL(", ").join(sql.Identifier(c) for c in self.info.columns)
                table_name = sql.Identifier(self.info.schema, self.info.name)
                if self.delete_source:  # delete and fingerprint in one pass; undone on mismatch
                    take = sql.SQL("DELETE FROM {t} WHERE {w} RETURNING {cols}")
                else:
                    take = sql.SQL("SELECT {cols} FROM {t} WHERE {w}")
                statement = take.format(t=table_name, w=self._where(chunk), cols=columns)
                with conn.cursor() as cur:
                    source = fingerprint_returning(cur, statement, method=self.info.hash_method)
                    if source != expected:
                        raise ArchiveVerificationError(
                            f"source rows of archive {row.archive_id} changed since upload "
                            f"({source[0]} rows now, {expected[0]} archived)"
                        )
                    cur.execute(
                        "UPDATE custody.archive_manifest SET status = 'verified', "
                        "verified_at = now(), source_deleted = %s WHERE archive_id = %s",
                        (self.delete_source, row.archive_id),
                    )
        except ArchiveVerificationError:
            conn.execute(
                "UPDATE custody.archive_manifest SET status = 'corrupt' WHERE archive_id = %s",
                (row.archive_id,),
            )
            raise
        return _outcome(row, back)


def archive_id_for(chunk: Chunk) -> str:
    """Stable per job and chunk, so a re-run finds what an interrupted attempt uploaded."""
    return "a" + hashlib.sha256(f"{chunk.job_id}#{chunk.chunk_no}".encode()).hexdigest()[:24]


def read_object(store: ObjectStore, row: manifest.ManifestRow) -> pa.Table:
    """Fetch an archived object and check its bytes and row count against the manifest.

    Raises:
        ArchiveVerificationError: checksum, format or row count do not match.
    """
    data = store.get(row.object_key, row.version_id)
    if sha256_hex(data) != row.sha256:
        raise ArchiveVerificationError(f"object {row.object_key}: SHA-256 does not match")
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise ArchiveVerificationError(f"object {row.object_key} is not readable Parquet") from exc
    if table.num_rows != row.row_count:
        raise ArchiveVerificationError(
            f"object {row.object_key} holds {table.num_rows} rows, manifest says {row.row_count}"
        )
    return table


def load_into_temp(
    conn: psycopg.Connection[Any], info: TableInfo, table: pa.Table, name: str
) -> tuple[int, str]:
    """Load rows into a temporary copy of the table's shape and fingerprint them there.

    Same column types as the source, so the same row hash: equal fingerprints mean the object
    holds exactly the source rows, types included. Call inside a transaction (dropped at commit).
    """
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {tmp} (LIKE {t}) ON COMMIT DROP").format(
            tmp=sql.Identifier(name), t=sql.Identifier(info.schema, info.name)
        )
    )
    write_arrow(conn, table, sql.Identifier(name))
    query = sql.SQL("SELECT {cols} FROM {tmp}").format(
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in info.columns),
        tmp=sql.Identifier(name),
    )
    with conn.cursor() as cur:
        return fingerprint(cur, query, method=info.hash_method)


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _time_range(table: pa.Table, column: str) -> tuple[datetime, datetime]:
    bounds = pc.min_max(table[column]).as_py()
    low, high = bounds["min"], bounds["max"]
    if not isinstance(low, datetime) or not isinstance(high, datetime):
        raise CustodyError(f"time column {column!r} must be a timestamp column")
    if low.tzinfo is None:
        low, high = low.replace(tzinfo=UTC), high.replace(tzinfo=UTC)
    return low, high


def _outcome(row: manifest.ManifestRow, back: tuple[int, str]) -> ChunkOutcome:
    return ChunkOutcome(
        source_count=row.row_count,
        source_hash=row.content_hash,
        target_count=back[0],
        target_hash=back[1],
        details={
            "archive_id": row.archive_id,
            "rows": row.row_count,
            "object_key": row.object_key,
            "sha256": row.sha256,
            "bytes": row.bytes,
        },
    )
