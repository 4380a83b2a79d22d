"""Appending chained, signed rows to audit_log: COPY on PostgreSQL, executemany elsewhere."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from uuid import UUID

import orjson
from psycopg import postgres
from sqlalchemy import Connection, select, update

from custody.audit.chain import Keyring, content_digest
from custody.audit.events import AuditEvent
from custody.db import is_postgres, utc_now
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
# jsonb goes in as bytea: its binary wire form (version 1, then the JSON text) is prepared here
# with orjson, where psycopg's jsonb dumper would call back into Python per row. COPY BINARY
# carries no type per field: the column's own type reads the bytes.
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
    "bytea",  # jsonb
    "text",
    "text",
    "text",
    "text",
)
# As OIDs: looked up once here, where psycopg would resolve 19 names per transaction.
_PG_TYPE_OIDS = [postgres.types[name].oid for name in _PG_TYPES]
_COPY_SQL = f"COPY audit_log ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_JSONB_V1 = b"\x01"
# The head on PostgreSQL, in plain SQL on the driver's cursor: prepared by psycopg after a few
# runs, where SQLAlchemy Core would compile and cache-key both per transaction (~0.6 ms of the
# ~1.4 ms of CPU a small batch cost).
_PG_LOCK_HEAD = "SELECT seq, row_hash, store_id FROM audit_chain_head WHERE id = 1 FOR UPDATE"
_PG_MOVE_HEAD = (
    "UPDATE audit_chain_head SET seq = %s, row_hash = %s, key_id = %s, signature = %s,"
    " updated_at = %s WHERE id = 1"
)


def append_chained(
    connection: Connection,
    events: Sequence[AuditEvent],
    recorded_at: dt.datetime,
    keyring: Keyring,
) -> tuple[int, int, str]:
    """Chain and write a batch of events inside the caller's transaction (see `_append`).

    Returns:
        (first seq, last seq, last row hash).

    Raises:
        ValueError: ``events`` is empty.
    """
    if not events:
        raise ValueError("append_chained needs at least one event")
    return _append(
        connection,
        len(events),
        lambda first, prev: _chain(events, recorded_at, keyring, first, prev),
        recorded_at,
        keyring,
    )


def append_uniform(
    connection: Connection,
    template: AuditEvent,
    items: Sequence[tuple[str, dict[str, str]]],
    recorded_at: dt.datetime,
    keyring: Keyring,
) -> tuple[int, int, str]:
    """Chain and write one event per ``(resource_id, details)`` item, the rest from ``template``.

    Per-result events (one per landed lab result) differ only in their resource id and a few
    text details; building and validating an :class:`AuditEvent` per result cost more than
    chaining and writing it. Each item is checked here the way the model would check it (text
    only, no NUL, resource id within its length), and every row gets its own event id and
    ``occurred_at``; the canonical form, hashes and signatures are the model path's exactly.

    Raises:
        ValueError: ``items`` is empty, or an item would not pass :class:`AuditEvent`.
    """
    if not items:
        raise ValueError("append_uniform needs at least one item")
    for resource_id, details in items:
        _check_item(resource_id, details)
    return _append(
        connection, len(items),
        lambda first, prev: _chain_uniform(template, items, recorded_at, keyring, first, prev),
        recorded_at, keyring,
    )  # fmt: skip


def _check_item(resource_id: str, details: dict[str, str]) -> None:
    """The checks :class:`AuditEvent` applies to a resource id and plain-text details."""
    if not isinstance(resource_id, str) or len(resource_id) > 512 or "\x00" in resource_id:
        raise ValueError("resource_id: must be text of at most 512 characters without NUL")
    for key, value in details.items():
        if not isinstance(key, str) or not isinstance(value, str) or "\x00" in value:
            raise ValueError(f"details.{key}: the uniform path takes text values without NUL")


def _append(
    connection: Connection,
    count: int,
    make_rows: Callable[[int, str], Iterator[tuple[Any, ...]]],
    recorded_at: dt.datetime,
    keyring: Keyring,
) -> tuple[int, int, str]:
    """Chain and write a batch inside the caller's transaction.

    The chain head row is locked first (``FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN
    IMMEDIATE`` already serialises writers), so concurrent writers queue and never fork the chain.
    On PostgreSQL rows are hashed, chained and signed as they stream into COPY: the server is the
    bottleneck (index maintenance), so all of custody's own work overlaps it instead of
    preceding it.

    ``make_rows(first_seq, prev_hash)`` yields the chained rows, in ``COLUMNS`` order.
    """
    if is_postgres(connection.dialect):
        return _append_postgres(connection, make_rows, recorded_at, keyring)
    head = connection.execute(
        select(audit_chain_head.c.seq, audit_chain_head.c.row_hash, audit_chain_head.c.store_id)
        .where(audit_chain_head.c.id == 1)
        .with_for_update()
    ).one()
    first = int(head.seq) + 1
    store_id = _store_id(head.store_id)
    rows = list(make_rows(first, str(head.row_hash)))
    connection.execute(
        audit_log.insert(),
        [dict(zip(COLUMNS, row, strict=True)) | {"event_id": str(row[3])} for row in rows],
    )
    last, last_hash = first + count - 1, str(rows[-1][16])
    connection.execute(
        update(audit_chain_head)
        .where(audit_chain_head.c.id == 1)
        .values(
            seq=last,
            row_hash=last_hash,
            key_id=keyring.active_key_id,
            signature=keyring.sign_head_v2(store_id, last, last_hash, recorded_at),
            updated_at=recorded_at,
        )
    )
    return first, last, last_hash


def _store_id(value: str | None) -> str:
    if value is None:
        raise ConfigError("custody's store has no identity yet: run `custody db upgrade`")
    return value


def _append_postgres(
    connection: Connection,
    make_rows: Callable[[int, str], Iterator[tuple[Any, ...]]],
    recorded_at: dt.datetime,
    keyring: Keyring,
) -> tuple[int, int, str]:
    """The PostgreSQL path: head and COPY on the driver's cursor, in the caller's transaction."""
    driver = connection.connection.driver_connection
    assert driver is not None
    key_id = keyring.active_key_id
    with driver.cursor() as cursor:
        cursor.execute(_PG_LOCK_HEAD)
        head = cursor.fetchone()
        assert head is not None, "audit_chain_head has no row: run `custody db upgrade`"
        first, head_hash, store_id = int(head[0]) + 1, str(head[1]), _store_id(head[2])
        seq, row_hash = first - 1, head_hash
        with cursor.copy(_COPY_SQL) as copy:
            copy.set_types(_PG_TYPE_OIDS)
            write, dumps = copy.write_row, orjson.dumps
            # Rows stream as they are chained: the server indexes them while we hash the next.
            for row in make_rows(first, head_hash):
                write((*row[:14], _JSONB_V1 + dumps(row[14]), *row[15:]))
                seq, row_hash = row[0], row[16]
        signature = keyring.sign_head_v2(store_id, seq, row_hash, recorded_at)
        cursor.execute(_PG_MOVE_HEAD, (seq, row_hash, key_id, signature, recorded_at))
    return first, seq, row_hash


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


def _chain_uniform(
    template: AuditEvent,
    items: Sequence[tuple[str, dict[str, str]]],
    recorded_at: dt.datetime,
    keyring: Keyring,
    first_seq: int,
    prev: str,
) -> Iterator[tuple[Any, ...]]:
    """Rows for :func:`append_uniform`: :func:`_chain`'s, with the constant fields hoisted."""
    key_id = keyring.active_key_id
    sign = keyring.row_signer()
    sha256 = hashlib.sha256
    prev_raw = bytes.fromhex(prev)
    t = template
    # Event ids are random (version 4) like uuid4's, drawn from the OS 64 KiB at a time.
    ids = _uuid4s()
    for seq, (resource_id, details) in enumerate(items, start=first_seq):
        event_id = next(ids)
        occurred_at = utc_now()
        digest = content_digest(
            event_id, occurred_at, recorded_at, t.principal, t.action, t.status, t.severity,
            t.resource_type, resource_id, t.correlation_id, t.regulation,
            t.data_classification, t.retention_days, details,
        )  # fmt: skip
        raw = sha256(prev_raw + seq.to_bytes(8, "big") + digest).digest()
        row_hash = raw.hex()
        yield (
            seq, occurred_at, recorded_at, event_id, t.principal, t.action, t.status,
            t.severity, t.resource_type, resource_id, t.correlation_id, t.regulation,
            t.data_classification, t.retention_days, details, prev, row_hash, key_id, sign(raw),
        )  # fmt: skip
        prev, prev_raw = row_hash, raw


def _uuid4s() -> Iterator[UUID]:
    """Random version-4 UUIDs, the bytes read from ``os.urandom`` in blocks."""
    while True:
        block = os.urandom(16 * 4096)
        for start in range(0, len(block), 16):
            yield UUID(bytes=block[start : start + 16], version=4)
