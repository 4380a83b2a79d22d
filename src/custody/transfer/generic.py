"""The engine-neutral copy path: any SQLAlchemy source to any SQLAlchemy target.

Each range is copied idempotently (the target's rows in the range are replaced in one
transaction), then both sides are fingerprinted the same way, so a re-run of a half-done range
can never leave duplicates and a silent difference can never pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Column, ColumnElement, Engine, MetaData, Table, and_, delete, insert, select, true

from custody.chunks.models import Chunk, ChunkOutcome, KeyValue
from custody.db import get_engine
from custody.fingerprint import Fingerprint
from custody.identifiers import check_column, reflect_table
from custody.settings import get_settings

BATCH_ROWS = 5_000


def range_filter(
    table: Table, key_column: str, lower: KeyValue | None, upper: KeyValue | None
) -> ColumnElement[bool]:
    """``lower < key <= upper``, either side optional."""
    key = table.c[check_column(table, key_column)]
    clauses: list[ColumnElement[bool]] = []
    if lower is not None:
        clauses.append(key > lower)
    if upper is not None:
        clauses.append(key <= upper)
    return and_(true(), *clauses)


def fingerprint_range(
    engine: Engine, table: Table, key_column: str, lower: KeyValue | None, upper: KeyValue | None
) -> Fingerprint:
    """Count and content hash of the rows in a key range, streamed."""
    fingerprint = Fingerprint()
    query = select(table).where(range_filter(table, key_column, lower, upper))
    with engine.connect() as connection:
        result = connection.execution_options(yield_per=BATCH_ROWS).execute(query)
        for partition in result.partitions():
            fingerprint.add_all(partition)
    return fingerprint


def ensure_target_table(source: Table, target: Engine) -> Table:
    """Create the target table from the reflected source when it is missing.

    Columns keep their types, nullability and the primary key. Foreign keys and server defaults
    are left out: a single copied table cannot reference tables that are not copied, and
    defaults are often engine-specific expressions.
    """
    columns = [
        Column(c.name, c.type, nullable=c.nullable, primary_key=c.primary_key,
               autoincrement=False)  # fmt: skip
        for c in source.columns
    ]
    Table(source.name, MetaData(), *columns).create(target, checkfirst=True)
    return reflect_table(target, source.name)


def copy_range(
    source: Engine,
    target: Engine,
    table_name: str,
    key_column: str,
    lower: KeyValue | None,
    upper: KeyValue | None,
) -> ChunkOutcome:
    """Copy one key range of a table and verify it by count and content hash on both sides."""
    src = reflect_table(source, table_name)
    dst = reflect_table(target, table_name)
    columns = [c.name for c in src.columns]
    source_fp = Fingerprint()
    with target.begin() as out:
        out.execute(delete(dst).where(range_filter(dst, key_column, lower, upper)))
        with source.connect() as inp:
            result = inp.execution_options(yield_per=BATCH_ROWS).execute(
                select(*[src.c[c] for c in columns]).where(
                    range_filter(src, key_column, lower, upper)
                )
            )
            for partition in result.partitions():
                rows: list[dict[str, Any]] = []
                for row in partition:
                    source_fp.add(row)
                    rows.append(dict(zip(columns, row, strict=True)))
                out.execute(insert(dst), rows)
    target_fp = fingerprint_range(target, dst, key_column, lower, upper)
    return ChunkOutcome(
        source_count=source_fp.count,
        source_hash=source_fp.hexdigest,
        target_count=target_fp.count,
        target_hash=target_fp.hexdigest,
    )


@dataclass(frozen=True)
class CopyRangeWork:
    """Chunk work that copies a table's key range between two named connections.

    Holds connection *names*, not URLs, so it can travel through Prefect (and to Dask workers)
    without carrying a secret; each worker resolves the names from its own settings.
    """

    source: str
    target: str
    table: str
    key_column: str

    def __call__(self, chunk: Chunk) -> ChunkOutcome:
        """Copy and verify the chunk's key range."""
        settings = get_settings()
        return copy_range(
            get_engine(settings.connection_url(self.source)),
            get_engine(settings.connection_url(self.target)),
            self.table,
            self.key_column,
            chunk.lower,
            chunk.upper,
        )
