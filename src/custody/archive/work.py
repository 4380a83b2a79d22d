"""One archive batch, crash-safe: upload, manifest, read back and compare, then delete.

The order is what makes a crash harmless. The object is uploaded and its manifest row written
(status ``uploaded``) before anything is deleted. The read-back check loads the object's rows
into a temporary table typed like the source, and compares their count and content hash with
those of the source rows as one statement deletes them; if they differ, the transaction rolls
back and the rows stay. Otherwise, in that same transaction, the manifest row is marked
``verified`` and given that content hash. A
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
from sqlalchemy.engine import URL

from custody.archive import manifest
from custody.archive.arrow_io import column_types, read_arrow, write_arrow
from custody.chunks.models import Chunk, ChunkOutcome
from custody.db import get_engine, is_postgres
from custody.errors import CustodyError
from custody.migration.catalog import TableInfo
from custody.migration.pgcopy import (
    fingerprint,
    fingerprint_returning,
    key_range,
)
from custody.pgclient import libpq_dsn
from custody.settings import get_settings
from custody.storage import (
    LockMode,
    ObjectInfo,
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
        engine = get_engine(get_settings().connection_url(self.database))
        if not is_postgres(engine):
            from custody.archive.generic import archive_range

            return archive_range(self, engine, chunk)
        archive_id = archive_id_for(chunk)
        url = engine.url
        store = open_store(self.target.store_url)
        with psycopg.connect(libpq_dsn(url), autocommit=True) as conn:
            conn.execute("SET TimeZone = 'UTC'")
            row = manifest.load(conn, archive_id)
            if row is not None and row.status == "verified" and row.content_hash is not None:
                return _outcome(row, row.content_hash)
            if row is None or row.status == "corrupt":
                # After a failed read-back the stored bytes are suspect even when the store
                # still reports the checksum it recorded at upload: always upload afresh then.
                row = self._upload(conn, url, store, chunk, archive_id, reuse=row is None)
                if row is None:  # nothing eligible left in the range
                    return ChunkOutcome(
                        source_count=0,
                        source_hash="0",
                        target_count=0,
                        target_hash="0",
                        details={"archive_id": archive_id, "rows": 0},
                    )
            try:
                return self._verify_and_delete(conn, store, row, chunk)
            finally:
                pa.default_memory_pool().release_unused()

    def _where(self, chunk: Chunk) -> sql.Composable:
        return sql.SQL("{range} AND {t} < {cutoff}").format(
            range=key_range(self.info.key_column, chunk.lower, chunk.upper),
            t=sql.Identifier(self.time_column),
            cutoff=sql.Literal(self.cutoff),
        )

    def _upload(
        self,
        conn: psycopg.Connection[Any],
        url: URL,
        store: ObjectStore,
        chunk: Chunk,
        archive_id: str,
        *,
        reuse: bool,
    ) -> manifest.ManifestRow | None:
        columns = column_types(conn, self.info.schema, self.info.name)
        table = read_arrow(
            conn, url, columns, sql.Identifier(self.info.schema, self.info.name), self._where(chunk)
        )
        if table.num_rows == 0:
            return None
        time_min, time_max = _time_range(table, self.time_column)
        data = _parquet(table)
        stored, retention = self.put_object(store, archive_id, data, time_min, time_max, reuse)
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
            row_count=table.num_rows,
            content_hash=None,  # known once the object is proven to hold the source rows
            columns=[{"name": c.name, "type": c.pg_type} for c in columns],
            object_key=stored.key,
            version_id=stored.version_id,
            sha256=stored.sha256 or "",  # always set: put_object checked or computed it
            bytes=len(data),
            lock_mode=retention.mode.value if retention else LockMode.NONE.value,
            retain_until=retention.retain_until if retention else None,
            classification=self.classification,
            regulation=self.regulation,
        )
        manifest.insert(conn, row)
        return row

    def put_object(
        self,
        store: ObjectStore,
        archive_id: str,
        data: bytes,
        time_min: datetime,
        time_max: datetime,
        reuse: bool,
    ) -> tuple[ObjectInfo, Retention | None]:
        """Store one batch's Parquet under ``{prefix}/{table}/{yyyy}/{mm}/{archive_id}.parquet``.

        With ``reuse``, an object already there with the same SHA-256 is kept: an attempt that
        crashed after its upload and before its manifest row. Both the PostgreSQL and the
        generic path store their objects here, so keys and retention are the same for both.
        """
        digest = sha256_hex(data)
        key = join_key(
            self.target.prefix,
            check_key_part(self.info.name, "table name"),
            f"{time_min.year:04d}",
            f"{time_min.month:02d}",
            f"{archive_id}.parquet",
        )
        retention = self.retention_for(time_max)
        existing = store.head(key) if reuse else None
        if existing is not None and existing.sha256 == digest:
            return existing, retention
        return store.put(key, data, retention=retention), retention

    def retention_for(self, time_max: datetime) -> Retention | None:
        """Object Lock retention for a batch whose newest row is ``time_max`` (None: no lock)."""
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
        try:
            table = read_object(store, row)
            with conn.transaction():
                back = load_into_temp(conn, self.info, table, READBACK)
                columns = sql.SQL(", ").join(sql.Identifier(c) for c in self.info.columns)
                table_name = sql.Identifier(self.info.schema, self.info.name)
                if self.delete_source:  # delete and fingerprint in one pass; undone on mismatch
                    take = sql.SQL("DELETE FROM {t} WHERE {w} RETURNING {cols}")
                else:
                    take = sql.SQL("SELECT {cols} FROM {t} WHERE {w}")
                statement = take.format(t=table_name, w=self._where(chunk), cols=columns)
                with conn.cursor() as cur:
                    source = fingerprint_returning(cur, statement, method=self.info.hash_method)
                    if source != back:
                        raise ArchiveVerificationError(
                            f"source rows of archive {row.archive_id} differ from the object "
                            f"({source[0]} rows in the source, {back[0]} in the object)"
                        )
                    cur.execute(
                        "UPDATE custody.archive_manifest SET status = 'verified', "
                        "verified_at = now(), source_deleted = %s, content_hash = %s "
                        "WHERE archive_id = %s",
                        (self.delete_source, back[1], row.archive_id),
                    )
        except ArchiveVerificationError:
            conn.execute(
                "UPDATE custody.archive_manifest SET status = 'corrupt' WHERE archive_id = %s",
                (row.archive_id,),
            )
            raise
        return _outcome(row, back[1])


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
        table = pq.ParquetFile(io.BytesIO(data)).read()  # read_table imports pyarrow.dataset
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
    """Oldest and newest value of the time column, as UTC instants.

    Taken from the microsecond counts: converting Arrow's zoned timestamps to Python objects
    imports pandas (1.3 s of CPU) the first time.
    """
    field = table.schema.field(column)
    if not pa.types.is_timestamp(field.type):
        raise CustodyError(f"time column {column!r} must be a timestamp column")
    micros = table[column].cast(pa.timestamp("us")).cast(pa.int64())
    bounds = pc.min_max(micros).as_py()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    return (
        epoch + timedelta(microseconds=bounds["min"]),
        epoch + timedelta(microseconds=bounds["max"]),
    )


def _outcome(row: manifest.ManifestRow, content_hash: str) -> ChunkOutcome:
    """A verified batch: the object and the deleted source rows had this count and hash."""
    return ChunkOutcome(
        source_count=row.row_count,
        source_hash=content_hash,
        target_count=row.row_count,
        target_hash=content_hash,
        details={
            "archive_id": row.archive_id,
            "rows": row.row_count,
            "object_key": row.object_key,
            "sha256": row.sha256,
            "bytes": row.bytes,
        },
    )
