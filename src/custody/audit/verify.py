"""Walking the chain: every link, every signature, and the head, streamed in seq order."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, select

from custody.audit.chain import GENESIS_HASH, Keyring, content_digest, link_hash
from custody.store.tables import audit_chain_head, audit_log


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of a chain walk. ``first_bad_seq`` names the first event that fails."""

    ok: bool
    events_checked: int
    last_seq: int
    first_bad_seq: int | None = None
    reason: str | None = None

    def describe(self) -> str:
        """One line for a terminal or a report."""
        if self.ok:
            return f"audit chain intact: {self.events_checked} events, head seq {self.last_seq}"
        return (
            f"audit chain BROKEN at seq {self.first_bad_seq}: {self.reason} "
            f"({self.events_checked} events checked before it)"
        )


def verify_chain(engine: Engine, keyring: Keyring, batch_size: int = 10_000) -> VerifyResult:
    """Check every row of audit_log in order and stop at the first broken event.

    Detects: altered content (hash mismatch), a forged or re-signed row without the right key
    (HMAC mismatch), unknown key ids, removed or inserted rows (gaps and broken links), and rows
    removed from the end (the chain head disagrees with the last row).
    """
    expected_seq = 1
    prev = GENESIS_HASH
    checked = 0
    columns = [c for c in audit_log.c]
    with engine.connect() as connection:
        rows = connection.execution_options(yield_per=batch_size).execute(
            select(*columns).order_by(audit_log.c.seq)
        )
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
        head = connection.execute(
            select(audit_chain_head.c.seq, audit_chain_head.c.row_hash).where(
                audit_chain_head.c.id == 1
            )
        ).one()
    last = expected_seq - 1
    if int(head.seq) != last or head.row_hash != prev:
        return VerifyResult(
            False,
            checked,
            last,
            last + 1 if int(head.seq) > last else int(head.seq),
            f"chain head says seq {head.seq} but the last stored event is seq {last}"
            " (events removed from the end?)",
        )
    return VerifyResult(True, checked, last)
