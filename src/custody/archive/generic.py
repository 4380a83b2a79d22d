"""Archive and restore on SQLite, with the guarantees of the PostgreSQL path.

The order of a batch is the same as in ``custody.archive.work``: the eligible rows of the key
range are read in key order into one zstd Parquet object, which is uploaded with its SHA-256;
the manifest row is written (status ``uploaded``); the object is read back, its checksum and
row count checked, and its rows fingerprinted; then, in one ``BEGIN IMMEDIATE`` transaction,
``DELETE ... RETURNING`` takes the source rows and they are fingerprinted the same way. Only when
both fingerprints agree is the manifest row marked ``verified`` in that same transaction;
otherwise it rolls back and the rows stay. A crash at any point leaves the rows in the table or
in a verified object, never neither, and a re-run finds its work under the same archive id.

The fingerprint is custody's canonical one (``custody.fingerprint``: a SHA-256 of each row's
canonical serialisation, summed), which the generic copy path uses too. On PostgreSQL the server
hashes the rows itself; here the rows pass through Python once on each side.

SQLite has no time type: timestamps are SQLAlchemy's ``DATETIME`` text or ISO 8601 text
(custody's own ``UTCDateTime`` writes ``...Z``). Eligibility compares ``julianday(column)`` with
the cutoff, so a zone suffix is honoured and naive values count as UTC. ``julianday`` keeps
milliseconds: a row less than half a millisecond before the cutoff may stay in the database
(never the other way round), and the same predicate plans, reads and deletes, so a batch's
rows are always exactly the rows it read.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    ColumnElement,
    Engine,
    Index,
    MetaData,
    Table,
    Text,
    and_,
    delete,
    func,
    inspect,
    literal,
    select,
    true,
    update,
)
from sqlalchemy import types as sqltypes
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError

from custody.archive.manifest import ManifestRow
from custody.archive.plan import EligibleRows
from custody.archive.work import ArchiveVerificationError, archive_id_for, read_object
from custody.chunks.models import Chunk, ChunkOutcome, KeyValue
from custody.chunks.planner import KeyRange
from custody.chunks.retry import is_transient
from custody.db import UTCDateTime, utc_now, write_transaction
from custody.errors import CustodyError
from custody.fingerprint import Fingerprint
from custody.identifiers import check_column, reflect_table
from custody.migration.catalog import TableInfo
from custody.storage import LockMode, ObjectStore

if TYPE_CHECKING:
    from custody.archive.work import ArchiveRangeWork

ENGINES = ("sqlite",)
MANIFEST = "custody_archive_manifest"
BATCH_ROWS = 5_000
_IN_LIST = 500  # keys per IN (...) when a restore checks its rows; far below SQLite's limit
_UNIX_EPOCH_JD = 2440587.5  # julianday('1970-01-01T00:00:00Z')

metadata = MetaData()

# The manifest lives in the database the rows come from (SQLite has no schemas, hence the
# prefix), so deleting a batch and marking its object verified are one transaction.
manifest_table = Table(
    MANIFEST,
    metadata,
    Column("archive_id", Text, primary_key=True),
    Column("job_id", Text, nullable=False),
    Column("policy", Text, nullable=False),
    Column("schema_name", Text, nullable=False),
    Column("table_name", Text, nullable=False),
    Column("key_column", Text, nullable=False),
    Column("key_lower", Text),
    Column("key_upper", Text),
    Column("time_column", Text, nullable=False),
    Column("time_min", UTCDateTime),
    Column("time_max", UTCDateTime),
    Column("row_count", BigInteger, nullable=False),
    Column("content_hash", Text),  # set when verified
    Column("columns", JSON, nullable=False),
    Column("object_key", Text, nullable=False),
    Column("version_id", Text),
    Column("sha256", Text, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("lock_mode", Text, nullable=False),
    Column("retain_until", UTCDateTime),
    Column("classification", Text, nullable=False),
    Column("regulation", Text),
    Column("status", Text, nullable=False),
    Column("source_deleted", Boolean, nullable=False, default=False),
    Column("created_at", UTCDateTime, nullable=False, default=utc_now),
    Column("verified_at", UTCDateTime),
    Column("restored_at", UTCDateTime),
    CheckConstraint(
        "status IN ('uploaded', 'verified', 'corrupt')", name="custody_archive_manifest_status"
    ),
)
Index("custody_archive_manifest_table_time", manifest_table.c.table_name,
      manifest_table.c.time_min, manifest_table.c.time_max)  # fmt: skip

_FIELDS = [f for f in ManifestRow.__dataclass_fields__ if f not in ("restored_at", "hash_method")]


class ArchiveRestoreError(CustodyError):
    """The database refused the archived rows (a constraint, a lock); nothing was restored."""


def db_failure(exc: DBAPIError) -> str:
    """A database error without its message or parameters, which may quote row values (PHI)."""
    orig = exc.orig
    code = getattr(orig, "sqlite_errorname", None) or getattr(orig, "sqlstate", None)
    return f"{type(orig).__name__} ({code})" if code else type(orig).__name__


class ArchiveEngineError(CustodyError):
    """The database is neither PostgreSQL nor an engine this path supports; nothing was touched."""


def check_engine(engine: Engine) -> None:
    """Refuse engines this path has not been proven on, naming the engine.

    Raises:
        ArchiveEngineError: not SQLite.
    """
    if engine.dialect.name not in ENGINES:
        raise ArchiveEngineError(
            f"archival supports PostgreSQL and SQLite, not {engine.dialect.name}"
        )


def default_schema(schema: str) -> None:
    """SQLite has one schema per file: accept the flows' default name for it, refuse others.

    Raises:
        ArchiveEngineError: a schema other than the default was named.
    """
    if schema not in ("public", "main"):
        raise ArchiveEngineError(
            f"schema {schema!r}: a SQLite database has only its default schema (main)"
        )


def ensure_manifest(engine: Engine) -> None:
    """Create the manifest table in the source database if it is not there yet."""
    check_engine(engine)
    metadata.create_all(engine, tables=[manifest_table], checkfirst=True)


def time_column_problem(engine: Engine, table: str, column: str) -> str | None:
    """Why a column cannot be a retention policy's time column, or None when it can.

    A date/time column passes; a text column passes when every value it holds is a time SQLite
    can read (ISO 8601), which takes one scan.
    """
    reflected = reflect_table(engine, table)
    check_column(reflected, column)
    kind = reflected.c[column].type
    if isinstance(kind, sqltypes.DateTime | sqltypes.Date):
        return None
    if not isinstance(kind, sqltypes.String):
        return f"column {column!r} of {table!r} must be a timestamp (got {kind})"
    col = reflected.c[column]
    with engine.connect() as conn:
        unreadable = conn.execute(
            select(func.count()).where(col.is_not(None), func.julianday(col).is_(None))
        ).scalar_one()
    if unreadable:
        return (
            f"column {column!r} of {table!r} holds {unreadable} value(s) that are not ISO 8601 "
            "timestamps"
        )
    return None


def _before(column: ColumnElement[Any], cutoff: datetime) -> ColumnElement[bool]:
    """``column < cutoff`` as instants (the same predicate everywhere, see the module text)."""
    text = f"{cutoff.astimezone(UTC):%Y-%m-%dT%H:%M:%S.%f}Z"
    return func.julianday(column) < func.julianday(literal(text, Text))


def _key_range(column: ColumnElement[Any], lower: KeyValue | None, upper: KeyValue | None) -> Any:
    clauses = []
    if lower is not None:
        clauses.append(column > lower)
    if upper is not None:
        clauses.append(column <= upper)
    return and_(true(), *clauses)


def count_eligible(
    engine: Engine, info: TableInfo, time_column: str, cutoff: datetime
) -> EligibleRows:
    """Exact count of the eligible rows, and their size as text (an estimate of the bytes)."""
    table = reflect_table(engine, info.name)
    size = sum((func.coalesce(func.length(c), 0) for c in table.columns), literal(0))
    with engine.connect() as conn:
        rows, width = conn.execute(
            select(func.count(), func.coalesce(func.sum(size), 0)).where(
                _before(table.c[time_column], cutoff)
            )
        ).one()
    return EligibleRows(int(rows), int(width))


def plan_eligible_ranges(
    engine: Engine, info: TableInfo, time_column: str, cutoff: datetime, batch_size: int
) -> list[KeyRange]:
    """Key ranges of about ``batch_size`` eligible rows each, found by seeking along the key."""
    if info.key_column is None:
        raise ArchiveEngineError(f"table {info.name!r} needs a single-column primary key")
    table = reflect_table(engine, info.name)
    key = table.c[info.key_column]
    eligible = _before(table.c[time_column], cutoff)
    uppers: list[Any] = []
    with engine.connect() as conn:
        while True:
            after = key > uppers[-1] if uppers else true()
            found = conn.execute(
                select(key).where(eligible, after).order_by(key).offset(batch_size - 1).limit(1)
            ).first()
            if found is None:
                break
            uppers.append(found[0])
        last = conn.execute(select(func.max(key)).where(eligible)).scalar()
    if last is None:
        return []
    if not uppers or uppers[-1] != last:
        uppers.append(last)
    lowers: list[Any] = [None, *uppers[:-1]]
    return list(zip(lowers, uppers, strict=True))


# --- one batch ---------------------------------------------------------------------------------


def archive_range(work: ArchiveRangeWork, engine: Engine, chunk: Chunk) -> ChunkOutcome:
    """Archive one chunk's eligible rows (or finish what an interrupted attempt started)."""
    check_engine(engine)
    from custody.storage import open_store

    archive_id = archive_id_for(chunk)
    store = open_store(work.target.store_url)
    table = reflect_table(engine, work.info.name)
    row = load_manifest(engine, archive_id)
    if row is not None and row.status == "verified" and row.content_hash is not None:
        return _outcome(row, row.content_hash)
    if row is None or row.status == "corrupt":
        row = _upload(work, engine, table, store, chunk, archive_id, reuse=row is None)
        if row is None:  # nothing eligible left in the range
            return ChunkOutcome(
                source_count=0, source_hash="0", target_count=0, target_hash="0",
                details={"archive_id": archive_id, "rows": 0},
            )  # fmt: skip
    return _verify_and_delete(work, engine, table, store, row, chunk)


def _where(work: ArchiveRangeWork, table: Table, chunk: Chunk) -> ColumnElement[bool]:
    key = table.c[work.info.key_column or ""]
    return and_(
        _key_range(key, chunk.lower, chunk.upper), _before(table.c[work.time_column], work.cutoff)
    )


def _upload(
    work: ArchiveRangeWork,
    engine: Engine,
    table: Table,
    store: ObjectStore,
    chunk: Chunk,
    archive_id: str,
    *,
    reuse: bool,
) -> ManifestRow | None:
    """Read, write and upload the batch's object, then its manifest row (status ``uploaded``).

    ``reuse``: an object already stored under the key with the same SHA-256 was uploaded by an
    attempt that crashed before its manifest row, and is the batch's object. Never after a
    failed verification: the store's recorded checksum says nothing about bytes that rotted.
    """
    where = _where(work, table, chunk)
    key = table.c[work.info.key_column or ""]
    time = func.julianday(table.c[work.time_column])
    with engine.connect() as conn, conn.begin():  # one read snapshot for the rows and bounds
        rows = conn.execute(select(*table.columns).where(where).order_by(key)).all()
        low, high = conn.execute(select(func.min(time), func.max(time)).where(where)).one()
    if not rows:
        return None
    arrow = to_arrow(table, rows)
    time_min, time_max = _from_julian(low), _from_julian(high)
    data = _parquet(arrow)
    stored, retention = work.put_object(store, archive_id, data, time_min, time_max, reuse)
    row = ManifestRow(
        archive_id=archive_id, job_id=chunk.job_id, policy=work.policy, schema_name="main",
        table_name=work.info.name, key_column=work.info.key_column or "",
        key_lower=None if chunk.lower is None else str(chunk.lower),
        key_upper=None if chunk.upper is None else str(chunk.upper),
        time_column=work.time_column, time_min=time_min, time_max=time_max,
        row_count=arrow.num_rows, content_hash=None,
        columns=[{"name": c.name, "type": str(c.type)} for c in table.columns],
        object_key=stored.key, version_id=stored.version_id, sha256=stored.sha256 or "",
        bytes=len(data),
        lock_mode=retention.mode.value if retention else LockMode.NONE.value,
        retain_until=retention.retain_until if retention else None,
        classification=work.classification, regulation=work.regulation,
    )  # fmt: skip
    insert_manifest(engine, row)
    return row


def _verify_and_delete(
    work: ArchiveRangeWork,
    engine: Engine,
    table: Table,
    store: ObjectStore,
    row: ManifestRow,
    chunk: Chunk,
) -> ChunkOutcome:
    try:
        back = fingerprint_arrow(read_object(store, row), [c.name for c in table.columns])
        with write_transaction(engine) as conn:
            where = _where(work, table, chunk)
            if work.delete_source:  # delete and fingerprint in one pass; undone on mismatch
                taken = conn.execute(delete(table).where(where).returning(*table.columns))
            else:
                taken = conn.execute(select(*table.columns).where(where))
            source = Fingerprint()
            for part in taken.partitions(BATCH_ROWS):
                source.add_all(part)
            if (source.count, source.hexdigest) != (back.count, back.hexdigest):
                raise ArchiveVerificationError(
                    f"source rows of archive {row.archive_id} differ from the object "
                    f"({source.count} rows in the source, {back.count} in the object)"
                )
            conn.execute(
                update(manifest_table)
                .where(manifest_table.c.archive_id == row.archive_id)
                .values(status="verified", verified_at=utc_now(),
                        source_deleted=work.delete_source, content_hash=back.hexdigest)
            )  # fmt: skip
    except ArchiveVerificationError:
        with engine.begin() as conn:
            conn.execute(
                update(manifest_table)
                .where(manifest_table.c.archive_id == row.archive_id)
                .values(status="corrupt")
            )
        raise
    return _outcome(row, back.hexdigest)


def _outcome(row: ManifestRow, content_hash: str) -> ChunkOutcome:
    """A verified batch: the object and the deleted source rows had this count and hash."""
    return ChunkOutcome(
        source_count=row.row_count, source_hash=content_hash,
        target_count=row.row_count, target_hash=content_hash,
        details={"archive_id": row.archive_id, "rows": row.row_count,
                 "object_key": row.object_key, "sha256": row.sha256, "bytes": row.bytes},
    )  # fmt: skip


# --- rows, Arrow and fingerprints ----------------------------------------------------------------


def arrow_type(column: Column[Any]) -> pa.DataType | None:
    """The Arrow type a column's values keep in Parquet; None: let Arrow infer from the values.

    Inference is safe because nothing is trusted to round-trip: every batch is read back and
    compared, value by value through the fingerprint, before a row is deleted.
    """
    kind = column.type
    if isinstance(kind, sqltypes.Boolean):
        return pa.bool_()
    if isinstance(kind, sqltypes.Integer):
        return pa.int64()
    if isinstance(kind, sqltypes.Float):
        return pa.float64()
    if isinstance(kind, sqltypes.Numeric):
        if kind.precision and kind.scale is not None and kind.precision <= 38:
            return pa.decimal128(kind.precision, kind.scale)
        return None
    if isinstance(kind, sqltypes.DateTime):
        return None  # naive or aware, as the driver hands them back
    if isinstance(kind, sqltypes.Date):
        return pa.date32()
    if isinstance(kind, sqltypes.String):
        return pa.string()
    if isinstance(kind, sqltypes.LargeBinary):
        return pa.binary()
    return None


def to_arrow(table: Table, rows: Sequence[Sequence[Any]]) -> pa.Table:
    """Rows (in the table's column order) as an Arrow table, typed per column.

    Raises:
        CustodyError: a column's values have no Arrow form (names the column, never a value).
    """
    arrays = {}
    for index, column in enumerate(table.columns):
        values = [r[index] for r in rows]
        try:
            arrays[column.name] = pa.array(values, type=arrow_type(column))
            continue
        except (pa.ArrowException, TypeError, ValueError) as exc:  # may quote a value
            unfit = CustodyError(
                f"column {column.name!r} of {table.name!r} ({column.type}) cannot be archived: "
                f"{type(exc).__name__}"
            )
        raise unfit  # outside the except block: no __context__ carrying the value
    return pa.table(arrays)


def fingerprint_arrow(table: pa.Table, columns: Iterable[str]) -> Fingerprint:
    """Count and content hash of an Arrow table's rows, with values as Python sees them."""
    names = list(columns)
    fingerprint = Fingerprint()
    for batch in table.select(names).to_batches(max_chunksize=BATCH_ROWS):
        fingerprint.add_all(
            zip(*(batch.column(i).to_pylist() for i in range(len(names))), strict=True)
        )
    return fingerprint


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _from_julian(day: float) -> datetime:
    """A julian day number as a UTC instant, to the millisecond (julianday's precision)."""
    millis = round((day - _UNIX_EPOCH_JD) * 86_400_000)
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=millis)


# --- the manifest ----------------------------------------------------------------------------


def insert_manifest(engine: Engine, row: ManifestRow) -> None:
    """Insert or replace a manifest row that is not verified yet (a re-upload after a crash)."""
    values = {f: getattr(row, f) for f in _FIELDS}
    statement = sqlite.insert(manifest_table).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=["archive_id"],
        set_={f: statement.excluded[f] for f in _FIELDS if f != "archive_id"},
        where=manifest_table.c.status != "verified",
    )
    with engine.begin() as conn:
        conn.execute(statement)


def load_manifest(engine: Engine, archive_id: str) -> ManifestRow | None:
    """One manifest row by id (None when the table or the row is not there)."""
    if not inspect(engine).has_table(MANIFEST):
        return None
    with engine.connect() as conn:
        found = conn.execute(
            select(manifest_table).where(manifest_table.c.archive_id == archive_id)
        ).first()
    return _row(found._mapping) if found else None


def find_manifest(
    engine: Engine,
    *,
    archive_ids: list[str] | None = None,
    table: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> list[ManifestRow]:
    """Verified manifest rows by ids, or by table and overlapping time range."""
    if not inspect(engine).has_table(MANIFEST):
        return []
    m = manifest_table.c
    clauses: list[ColumnElement[bool]] = [m.status == "verified"]
    if archive_ids:
        clauses.append(m.archive_id.in_(archive_ids))
    if table:
        clauses.append(m.table_name == table)
    if start:
        clauses.append(m.time_max >= start)
    if end:
        clauses.append(m.time_min < end)
    with engine.connect() as conn:
        found = conn.execute(
            select(manifest_table).where(*clauses).order_by(m.table_name, m.time_min, m.archive_id)
        ).all()
    return [_row(r._mapping) for r in found]


def known_object_keys(engine: Engine, table: str) -> set[str]:
    """Object keys the manifest accounts for (any status), for the orphan check."""
    if not inspect(engine).has_table(MANIFEST):
        return set()
    with engine.connect() as conn:
        return set(
            conn.execute(
                select(manifest_table.c.object_key).where(manifest_table.c.table_name == table)
            ).scalars()
        )


def _row(values: Any) -> ManifestRow:
    return ManifestRow(**{k: values[k] for k in ManifestRow.__dataclass_fields__ if k in values})


# --- restore -------------------------------------------------------------------------------------


def restore_object(engine: Engine, store: ObjectStore, info: TableInfo, row: ManifestRow) -> int:
    """Restore one archived object into its table; returns the rows inserted (0 when present).

    Idempotent: rows whose key is already there are left alone, and the check that follows
    proves that the table holds exactly the archived rows under those keys either way.

    Raises:
        ArchiveVerificationError: the object, or the rows in the table, differ from the manifest.
        ArchiveRestoreError: the database refused the rows (named by error code, not content).
    """
    check_engine(engine)
    expected = (row.row_count, row.content_hash)
    data = read_object(store, row)
    names = data.column_names
    loaded = fingerprint_arrow(data, names)
    if (loaded.count, loaded.hexdigest) != expected:
        raise ArchiveVerificationError(
            f"object {row.object_key} reads back as {loaded.count} rows, not the archived rows"
        )
    table = reflect_table(engine, info.name)
    for name in [*names, row.key_column]:
        check_column(table, name)
    try:
        return _restore_rows(engine, table, info, row, data, expected)
    except DBAPIError as exc:  # its message quotes the rows: name the failure, not the data
        refused = ArchiveRestoreError(
            f"archive {row.archive_id} could not be restored into {info.name}: {db_failure(exc)}",
            transient=is_transient(exc),
        )
    raise refused  # outside the except block: no __context__ carrying the rows


def _restore_rows(
    engine: Engine,
    table: Table,
    info: TableInfo,
    row: ManifestRow,
    data: pa.Table,
    expected: tuple[int, str | None],
) -> int:
    names = data.column_names
    key = table.c[row.key_column]
    inserted = 0
    with write_transaction(engine) as conn:
        for batch in data.to_batches(max_chunksize=BATCH_ROWS):
            statement = sqlite.insert(table).on_conflict_do_nothing()
            inserted += conn.execute(statement, batch.to_pylist()).rowcount
        present = Fingerprint()
        keys = data.column(row.key_column).to_pylist()
        columns = [table.c[n] for n in names]
        for start in range(0, len(keys), _IN_LIST):
            found = conn.execute(select(*columns).where(key.in_(keys[start : start + _IN_LIST])))
            present.add_all(found)
        if (present.count, present.hexdigest) != expected:
            raise ArchiveVerificationError(
                f"table {info.name} holds other rows under the keys of archive {row.archive_id}"
            )
        conn.execute(
            update(manifest_table)
            .where(manifest_table.c.archive_id == row.archive_id)
            .values(restored_at=utc_now())
        )
    return inserted
