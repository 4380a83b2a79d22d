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
from custody.archive.arrow_io import read_arrow, write_arrow
from custody.archive.checks import (
    ArchiveTable,
    check_references,
    inspect_table,
    triggers_off,
)
from custody.archive.columns import (
    HASH_METHOD,
    SESSION_SETTINGS,
    ArchiveColumn,
    checked_type,
    fingerprint,
    fingerprint_of_hashes,
    row_hash_sql,
)
from custody.archive.pgbinary import binary_copy_types, write_binary
from custody.chunks.models import Chunk, ChunkOutcome
from custody.db import get_engine, is_postgres
from custody.errors import CustodyError, safe_error
from custody.migration.catalog import TableInfo
from custody.migration.pgcopy import key_range
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
    archived_together: tuple[str, ...] = ()

    def __call__(self, chunk: Chunk) -> ChunkOutcome:
        """Archive the chunk (or finish what an interrupted attempt started)."""
        engine = get_engine(get_settings().connection_url(self.database))
        if not is_postgres(engine):
            from custody.archive.generic import archive_range

            return archive_range(self, engine, chunk)
        archive_id = archive_id_for(chunk)
        url = engine.url
        store = open_store(self.target.store_url)
        with connect(url) as conn:
            row = manifest.load(conn, archive_id)
            if row is not None and row.status == "verified" and row.content_hash is not None:
                return _outcome(row, row.content_hash)
            checked = self._checked(conn)  # once per attempt: upload and verification share it
            if row is None or row.status == "corrupt":
                # After a failed read-back the stored bytes are suspect even when the store
                # still reports the checksum it recorded at upload: always upload afresh then.
                row = self._upload(
                    conn, url, store, chunk, archive_id, reuse=row is None, checked=checked
                )
                if row is None:  # nothing eligible left in the range
                    return ChunkOutcome(
                        source_count=0,
                        source_hash="0",
                        target_count=0,
                        target_hash="0",
                        details={"archive_id": archive_id, "rows": 0},
                    )
            try:
                return self._verify_and_delete(conn, store, row, chunk, checked)
            finally:
                pa.default_memory_pool().release_unused()

    def _checked(self, conn: psycopg.Connection[Any]) -> ArchiveTable:
        """The table's checks, made again by every batch: it may have changed since the plan."""
        return inspect_table(
            conn, self.info.schema, self.info.name, self.time_column, self.archived_together
        )

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
        checked: ArchiveTable | None = None,
    ) -> manifest.ManifestRow | None:
        source = checked or self._checked(conn)
        columns = list(source.columns)
        with conn.transaction():  # one snapshot for the rows and their time range
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            table = read_arrow(conn, url, columns, source.source, self._where(chunk))
            if table.num_rows == 0:
                return None
            time_min, time_max = _time_range(
                conn, table, source, self.time_column, self._where(chunk)
            )
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
            columns=[c.as_json() for c in columns],
            object_key=stored.key,
            version_id=stored.version_id,
            sha256=stored.sha256 or "",  # always set: put_object checked or computed it
            bytes=len(data),
            lock_mode=retention.mode.value if retention else LockMode.NONE.value,
            retain_until=retention.retain_until if retention else None,
            classification=self.classification,
            regulation=self.regulation,
            hash_method=HASH_METHOD,
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
        checked: ArchiveTable,
    ) -> ChunkOutcome:
        try:
            table = read_object(store, row)
            columns = manifest_columns(row)
            source = checked
            if list(source.columns) != columns:
                raise ArchiveVerificationError(
                    f"table {self.info.name} changed shape since archive {row.archive_id} was "
                    "written; it is written afresh"
                )
            where = self._where(chunk)
            with conn.transaction():
                conn.execute(SESSION_SETTINGS)
                back = _load_back(conn, columns, table, row)
                # Each row's hash is computed as it is deleted: the CTE keeps 8 bytes a row,
                # not the rows themselves (which spill to disk past work_mem).
                hashed = sql.SQL("{h} AS h").format(h=row_hash_sql(columns))
                if self.delete_source:  # delete and fingerprint in one pass; undone on mismatch
                    check_references(conn, source, where)
                    take = sql.SQL("DELETE FROM {t} WHERE {w} RETURNING {h}")
                else:
                    take = sql.SQL("SELECT {h} FROM {t} WHERE {w}")
                statement = take.format(t=source.source, w=where, h=hashed)
                with triggers_off(conn, source.triggers if self.delete_source else ()):
                    found = conn.execute(
                        sql.SQL("WITH t AS ({q}) {f}").format(
                            q=statement, f=fingerprint_of_hashes()
                        )
                    ).fetchone()
                assert found is not None
                taken = (int(found[0]), str(found[1]))
                if taken != back:
                    raise ArchiveVerificationError(
                        f"source rows of archive {row.archive_id} differ from the object "
                        f"({taken[0]} rows in the source, {back[0]} in the object)"
                    )
                conn.execute(
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


def connect(url: URL) -> psycopg.Connection[Any]:
    """An autocommit connection whose text is UTF8 and whose clock is UTC, whatever the server."""
    conn = psycopg.connect(libpq_dsn(url), autocommit=True, client_encoding="UTF8")
    conn.execute("SET TimeZone = 'UTC'")
    return conn


def manifest_columns(row: manifest.ManifestRow) -> list[ArchiveColumn]:
    """The archived columns as the manifest recorded them (never the live table's).

    Raises:
        ArchiveVerificationError: the manifest row predates canonical hashing.
    """
    try:
        return [ArchiveColumn.from_json(c) for c in row.columns]
    except KeyError:
        raise ArchiveVerificationError(
            f"archive {row.archive_id}: the manifest has no canonical column record"
        ) from None


def load_into_temp(
    conn: psycopg.Connection[Any], columns: list[ArchiveColumn], table: pa.Table, name: str
) -> tuple[int, str]:
    """Load an object's rows into a temporary table of the archived types; fingerprint them.

    The types come from the manifest, so PostgreSQL parses every value as the source held it,
    and the canonical hash of the result is comparable with the source rows'. Call inside a
    transaction (the table is dropped at commit).

    Raises:
        ArchiveVerificationError: the object's columns are not the archived ones.
    """
    if table.column_names != [c.name for c in columns]:
        raise ArchiveVerificationError("the object's columns are not the archived columns")
    conn.execute(
        sql.SQL("CREATE TEMP TABLE {tmp} ({cols}) ON COMMIT DROP").format(
            tmp=sql.Identifier(name),
            cols=sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(checked_type(c.pg_type)))
                for c in columns
            ),
        )
    )
    if binary_copy_types(columns, table.schema):  # PostgreSQL's binary receive: no text parse
        write_binary(conn, table, columns, sql.Identifier(name))
    else:
        write_arrow(conn, table, sql.Identifier(name))
    return fingerprint(conn, columns, sql.SQL("{tmp} t").format(tmp=sql.Identifier(name)))


def _load_back(
    conn: psycopg.Connection[Any], columns: list[ArchiveColumn], table: pa.Table, row: Any
) -> tuple[int, str]:
    """Load the object into the read-back table; values PostgreSQL refuses make it corrupt."""
    try:
        return load_into_temp(conn, columns, table, READBACK)
    except psycopg.DataError as exc:  # its message quotes the value: not chained
        failed = ArchiveVerificationError(
            f"object {row.object_key} of archive {row.archive_id} holds values its columns' "
            f"types refuse ({safe_error(exc)})"
        )
    raise failed


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _time_range(
    conn: psycopg.Connection[Any],
    rows: pa.Table,
    table: ArchiveTable,
    column: str,
    where: sql.Composable,
) -> tuple[datetime, datetime]:
    """Oldest and newest value of the batch's time column, as UTC instants within 1..9999 AD.

    For the object key and its retention only: -infinity and BC times count as year 1. From
    the Arrow column when it holds timestamps (no second scan), else from the server, in the
    same snapshot.
    """
    field = rows.schema.field(column)
    if pa.types.is_timestamp(field.type) and rows.column(column).null_count == 0:
        micros = pc.min_max(rows.column(column).cast(pa.timestamp("us")).cast(pa.int64())).as_py()
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        return (
            epoch + timedelta(microseconds=micros["min"]),
            epoch + timedelta(microseconds=micros["max"]),
        )
    clamp = "GREATEST(LEAST({f}({c})::timestamptz, '9999-12-31 00:00+00'), '0001-01-01 00:00+00')"
    found = conn.execute(
        sql.SQL("SELECT " + clamp.replace("{f}", "min") + ", " + clamp.replace("{f}", "max")
                + " FROM {t} WHERE {w}").format(
            c=sql.Identifier(column), t=table.source, w=where
        )
    ).fetchone()  # fmt: skip
    assert found is not None
    return found[0], found[1]


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
