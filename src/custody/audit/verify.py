"""Walking the chain: every link, every signature, and the signed head, in one snapshot."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, func, select

from custody.audit.chain import GENESIS_HASH, Keyring, content_digest, link_hash
from custody.db import is_postgres
from custody.store.tables import audit_chain_head, audit_log


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of a chain walk. ``first_bad_seq`` names the first event that fails."""

    ok: bool
    events_checked: int
    last_seq: int
    first_bad_seq: int | None = None
    reason: str | None = None
    head_hash: str | None = None
    head_at: dt.datetime | None = None
    store_id: str | None = None
    legacy_head: bool = False

    def describe(self) -> str:
        """One line for a terminal or a report."""
        if self.ok:
            legacy = " (head in the v1 form; the next append re-signs it)" * self.legacy_head
            return (
                f"audit chain intact: {self.events_checked} events, head seq {self.last_seq}"
                f"{legacy}"
            )
        return (
            f"audit chain BROKEN at seq {self.first_bad_seq}: {self.reason} "
            f"({self.events_checked} events checked before it)"
        )


def verify_chain(engine: Engine, keyring: Keyring, batch_size: int = 10_000) -> VerifyResult:
    """Check every row of audit_log up to the signed chain head, stopping at the first break.

    Detects altered content (hash mismatch), rows forged or re-signed without the right key (HMAC
    mismatch), unknown key ids, removed or inserted rows (gaps, broken links, rows past the head)
    and rows removed from the end (the head, signed with the key, no longer matches). Runs in one
    snapshot, so writers appending meanwhile never make an intact chain look broken.
    """
    options = {"isolation_level": "REPEATABLE READ"} if is_postgres(engine) else {}
    with engine.connect().execution_options(**options) as connection, connection.begin():
        return _walk(connection, keyring, batch_size)


def verify_since(
    engine: Engine, keyring: Keyring, seq: int, row_hash: str, batch_size: int = 10_000
) -> VerifyResult:
    """Check the chain from a known event (e.g. the latest anchor) to the signed head.

    Costs only the events appended since ``seq``: the check an anchor taken after every flow run
    can afford. Fails when event ``seq`` is gone or no longer has ``row_hash`` (the chain was cut
    back or rewritten below it), and otherwise like :func:`verify_chain` on the rest.
    """
    options = {"isolation_level": "REPEATABLE READ"} if is_postgres(engine) else {}
    with engine.connect().execution_options(**options) as connection, connection.begin():
        if seq > 0:
            found = connection.execute(
                select(audit_log.c.row_hash).where(audit_log.c.seq == seq)
            ).scalar()
            head_seq = int(
                connection.execute(
                    select(audit_chain_head.c.seq).where(audit_chain_head.c.id == 1)
                ).scalar_one()
            )
            if found is None or head_seq < seq:
                return VerifyResult(
                    False, 0, head_seq, seq,
                    f"rollback: event seq {seq} was witnessed outside the database but the "
                    f"chain head is now seq {head_seq}",
                )  # fmt: skip
            if found != row_hash:
                return VerifyResult(
                    False, 0, head_seq, seq,
                    f"event seq {seq} no longer has the hash it had when it was witnessed: "
                    "the chain was rewritten at or before it",
                )  # fmt: skip
        return _walk(connection, keyring, batch_size, first_seq=seq + 1, prev=row_hash)


def _walk(
    connection: Connection,
    keyring: Keyring,
    batch_size: int,
    first_seq: int = 1,
    prev: str = GENESIS_HASH,
) -> VerifyResult:
    head = connection.execute(select(audit_chain_head).where(audit_chain_head.c.id == 1)).one()
    head_seq = int(head.seq)
    expected_seq, checked = first_seq, 0
    query = (
        select(*audit_log.c)
        .where(audit_log.c.seq >= first_seq, audit_log.c.seq <= head_seq)
        .order_by(audit_log.c.seq)
    )
    # Closed on every return: a server-side cursor left open on a break would outlive the walk.
    with connection.execution_options(yield_per=batch_size).execute(query) as rows:
        for row in rows:
            seq = int(row.seq)
            if seq != expected_seq:
                if seq < expected_seq:
                    return VerifyResult(
                        False, checked, seq, seq, f"duplicate sequence number {seq}"
                    )
                return VerifyResult(
                    False,
                    checked,
                    seq,
                    expected_seq,
                    f"gap: seq {expected_seq} missing, next is {seq}",
                )
            if row.prev_hash != prev:
                return VerifyResult(
                    False,
                    checked,
                    seq,
                    seq,
                    "broken link: prev_hash is not the previous row's hash",
                )
            digest = content_digest(
                row.event_id,
                row.occurred_at,
                row.recorded_at,
                row.principal,
                row.action,
                row.status,
                row.severity,
                row.resource_type,
                row.resource_id,
                row.correlation_id,
                row.regulation,
                row.data_classification,
                row.retention_days,
                row.details,
            )
            if link_hash(prev, seq, digest) != row.row_hash:
                return VerifyResult(
                    False, checked, seq, seq, "hash mismatch: the row's content was altered"
                )
            if row.key_id not in keyring.key_ids:
                return VerifyResult(
                    False,
                    checked,
                    seq,
                    seq,
                    f"unknown HMAC key id {row.key_id!r}: cannot verify signature",
                )
            if not keyring.verify(row.key_id, row.row_hash, row.signature):
                return VerifyResult(
                    False,
                    checked,
                    seq,
                    seq,
                    f"HMAC mismatch with key {row.key_id!r}: signature is forged",
                )
            prev = row.row_hash
            expected_seq += 1
            checked += 1
    # The head last: a broken row above is the more precise finding.
    if head_seq > 0:
        if head.key_id not in keyring.key_ids:
            return VerifyResult(
                False,
                0,
                head_seq,
                head_seq,
                f"chain head signed with unknown key id {head.key_id!r}",
            )
        if head.store_id is not None and head.signature == keyring.sign_head_v2(
            head.store_id, head_seq, head.row_hash, head.updated_at, head.key_id
        ):
            legacy = False
        elif head.signature == keyring.sign_head(head_seq, head.row_hash, head.key_id):
            legacy = True
        else:
            return VerifyResult(
                False,
                0,
                head_seq,
                head_seq,
                "chain head signature mismatch: the head was rewritten",
            )
    else:
        legacy = False
    last = expected_seq - 1
    if last != head_seq or prev != head.row_hash:
        return VerifyResult(
            False,
            checked,
            last,
            last + 1,
            f"chain head says seq {head_seq} but the last stored event is seq "
            f"{last} (events removed from the end)",
        )
    beyond = connection.execute(
        select(func.min(audit_log.c.seq)).where(audit_log.c.seq > head_seq)
    ).scalar()
    if beyond is not None:
        return VerifyResult(
            False,
            checked,
            last,
            int(beyond),
            f"event seq {beyond} lies beyond the signed chain head {head_seq}",
        )
    return VerifyResult(
        True,
        checked,
        last,
        head_hash=str(head.row_hash),
        head_at=head.updated_at,
        store_id=head.store_id,
        legacy_head=legacy,
    )
