"""The engine-neutral copy path: any SQLAlchemy source to any SQLAlchemy target.

Each range is copied idempotently (the target's rows in the range are replaced in one
transaction), then both sides are fingerprinted the same way, so a re-run of a half-done range
can never leave duplicates and a silent difference can never pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import (
    JSON,
    Column,
    ColumnElement,
    Connection,
    Engine,
    MetaData,
    Table,
    and_,
    delete,
    insert,
    select,
    true,
)

from custody.chunks.models import Chunk, ChunkOutcome, KeyValue
from custody.db import get_engine, is_postgres
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

    Columns keep their types (exactly within one engine, as the nearest generic type across
    engines), nullability and the primary key. Foreign keys and server defaults
    are left out: a single copied table cannot reference tables that are not copied, and
    defaults are often engine-specific expressions.
    """
    same_dialect = _dialect_of(source) == target.dialect.name
    columns = [
        Column(
            c.name,
            c.type if same_dialect else c.type.as_generic(allow_nulltype=True),
            nullable=c.nullable,
            primary_key=c.primary_key,
            autoincrement=False,
        )
        for c in source.columns
    ]
    Table(source.name, MetaData(), *columns).create(target, checkfirst=True)
    return reflect_table(target, source.name)


def _copy_writer(
    connection: Connection, table: Table, columns: list[str]
) -> Callable[[Sequence[Sequence[Any]]], None]:
    """Write rows into a PostgreSQL table with COPY inside the caller's transaction.

    COPY is several times faster than batched INSERTs; JSON columns are wrapped so psycopg
    sends them as JSON rather than guessing from the Python type.
    """
    preparer = connection.dialect.identifier_preparer
    sql = (
        f"COPY {preparer.format_table(table)} ({', '.join(preparer.quote(c) for c in columns)})"
        " FROM STDIN"
    )
    json_positions = [i for i, c in enumerate(columns) if isinstance(table.c[c].type, JSON)]
    driver = connection.connection.driver_connection
    assert driver is not None

    def write(rows: Sequence[Sequence[Any]]) -> None:
        with driver.cursor() as cursor, cursor.copy(sql) as copy:
            for row in rows:
                if json_positions:
                    row = list(row)
                    for i in json_positions:
                        row[i] = None if row[i] is None else Jsonb(row[i])
                copy.write_row(row)

    return write


def _dialect_of(table: Table) -> str | None:
    """The dialect a reflected table came from (recorded by ``reflect_table``)."""
    name = table.info.get("dialect")
    return name if isinstance(name, str) else None


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
            write = _copy_writer(out, dst, columns) if is_postgres(target) else None
            for partition in result.partitions():
                source_fp.add_all(partition)
                if write is not None:
                    write(partition)
                else:
                    out.execute(
                        insert(dst), [dict(zip(columns, r, strict=True)) for r in partition]
                    )
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
