"""Appending chained, signed rows to audit_log: COPY on PostgreSQL, executemany elsewhere."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import orjson
from psycopg.types.json import set_json_dumps
from sqlalchemy import Connection, select, update

from custody.audit.chain import Keyring, content_digest
from custody.audit.events import AuditEvent
from custody.db import is_postgres
from custody.errors import ConfigError
from custody.store.tables import audit_chain_head, audit_log

COLUMNS = (
    "seq",
    "occurred_at",
    "recorded_at",
    "event_id",
    "principal",
    "action",
    "status",
    "severity",
    "resource_type",
    "resource_id",
    "correlation_id",
    "regulation",
    "data_classification",
    "retention_days",
    "details",
    "prev_hash",
    "row_hash",
    "key_id",
    "signature",
)
_PG_TYPES = (
    "int8",
    "timestamptz",
    "timestamptz",
    "uuid",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "text",
    "int4",
    "jsonb",
    "text",
    "text",
    "text",
    "text",
)
_COPY_SQL = f"COPY audit_log ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def append_chained(
    connection: Connection,
    events: Sequence[AuditEvent],
    recorded_at: dt.datetime,
    keyring: Keyring,
) -> tuple[int, int, str]:
    """Chain and write a batch inside the caller's transaction.

    The chain head row is locked first (``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN
    IMMEDIATE`` already serialises writers), so concurrent writers queue and never fork the chain.
    Rows are hashed, chained and signed as they stream into COPY: the server is the bottleneck
    (index maintenance), so all of custody's own work overlaps it instead of preceding it.

    Returns:
        (first seq, last seq, last row hash).

    Raises:
        ValueError: ``events`` is empty.
    """
    if not events:
        raise ValueError("append_chained needs at least one event")
    head = connection.execute(
        select(audit_chain_head.c.seq, audit_chain_head.c.row_hash, audit_chain_head.c.store_id)
        .where(audit_chain_head.c.id == 1)
        .with_for_update()
    ).one()
    if head.store_id is None:
        raise ConfigError("custody's store has no identity yet: run `custody db upgrade`")
    first = int(head.seq) + 1
    chained = _chain(events, recorded_at, keyring, first, str(head.row_hash))
    if is_postgres(connection.dialect):
        # Rows are chained as they stream: the server indexes batch rows while we hash the next.
        last_hash = _copy_rows(connection, chained)
    else:
        rows = list(chained)
        connection.execute(
            audit_log.insert(),
            [dict(zip(COLUMNS, row, strict=True)) | {"event_id": str(row[3])} for row in rows],
        )
        last_hash = rows[-1][16]
    last = first + len(events) - 1
    connection.execute(
        update(audit_chain_head)
        .where(audit_chain_head.c.id == 1)
        .values(
            seq=last,
            row_hash=last_hash,
            key_id=keyring.active_key_id,
            signature=keyring.sign_head_v2(head.store_id, last, last_hash, recorded_at),
            updated_at=recorded_at,
        )
    )
    return first, last, last_hash


def _chain(
    events: Sequence[AuditEvent],
    recorded_at: dt.datetime,
    keyring: Keyring,
    first_seq: int,
    prev: str,
) -> Iterator[tuple[Any, ...]]:
    """Rows ready for COPY, chained and signed.

    Same hashes as :func:`link_hash` and :meth:`Keyring.sign`, with the previous hash kept as
    bytes (no hex round trip per event) and a one-shot HMAC.
    """
    key_id = keyring.active_key_id
    sign = keyring.row_signer()
    sha256 = hashlib.sha256
    prev_raw = bytes.fromhex(prev)
    for seq, e in enumerate(events, start=first_seq):
        digest = content_digest(
            e.event_id,
            e.occurred_at,
            recorded_at,
            e.principal,
            e.action,
            e.status,
            e.severity,
            e.resource_type,
            e.resource_id,
            e.correlation_id,
            e.regulation,
            e.data_classification,
            e.retention_days,
            e.details,
        )
        raw = sha256(prev_raw + seq.to_bytes(8, "big") + digest).digest()
        row_hash = raw.hex()
        # Enum members are str subclasses: COPY writes their value as is.
        yield (
            seq,
            e.occurred_at,
            recorded_at,
            e.event_id,
            e.principal,
            e.action,
            e.status,
            e.severity,
            e.resource_type,
            e.resource_id,
            e.correlation_id,
            e.regulation,
            e.data_classification,
            e.retention_days,
            e.details,
            prev,
            row_hash,
            key_id,
            sign(raw),
        )
        prev, prev_raw = row_hash, raw


def _copy_rows(connection: Connection, rows: Iterable[tuple[Any, ...]]) -> str:
    driver = connection.connection.driver_connection
    assert driver is not None
    last_hash = ""
    with driver.cursor() as cursor:
        set_json_dumps(_dumps, context=cursor)
        with cursor.copy(_COPY_SQL) as copy:
            copy.set_types(list(_PG_TYPES))
            write = copy.write_row
            for row in rows:
                write(row)
                last_hash = row[16]
    return last_hash
