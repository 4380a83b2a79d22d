"""Anchors: copies of the signed chain head, kept where the database's owner cannot reach.

The hash chain and its HMAC catch anyone who edits audit rows without the key. Someone who holds
the key (or steals it) could still rewrite every row from some point on and re-sign them all: the
chain would verify. An anchor closes that gap. At regular times the head (sequence number and
row hash) is signed and written to the object store under Object Lock, where nobody can change
or delete it until its retention ends. A rewritten chain then contradicts every anchor taken
after the point of rewriting, and ``check_anchors`` names the first of them.

Anchor objects are small JSON documents (``custody.audit.anchor.v1``) holding no event content:
a sequence number, a hash, a time and a signature.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Engine, select

from custody.audit.chain import Keyring
from custody.db import is_postgres
from custody.errors import CustodyError
from custody.storage import LockMode, ObjectStore, Retention, join_key
from custody.store.tables import audit_chain_head, audit_log

ANCHOR_FORMAT = "custody.audit.anchor.v1"
DEFAULT_PREFIX = "audit-anchors"
_LOOKUP_BATCH = 1_000


class AnchorError(CustodyError):
    """An anchor cannot be written (an empty or broken chain must not be anchored)."""


@dataclass(frozen=True)
class Anchor:
    """One signed copy of the chain head."""

    seq: int
    row_hash: str
    anchored_at: dt.datetime
    key_id: str
    signature: str

    def payload(self) -> bytes:
        """The signed bytes: everything but the signature, in a pinned form."""
        return _canonical(self.seq, self.row_hash, self.anchored_at, self.key_id)

    def to_json(self) -> bytes:
        """The stored object."""
        return orjson.dumps(
            {
                "format": ANCHOR_FORMAT,
                "seq": self.seq,
                "row_hash": self.row_hash,
                "anchored_at": self.anchored_at,
                "key_id": self.key_id,
                "signature": self.signature,
            },
            option=orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z,
        )

    @classmethod
    def from_json(cls, data: bytes) -> Anchor:
        """Parse a stored anchor.

        Raises:
            ValueError: the object is not an anchor of this format.
        """
        doc: Any = orjson.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != ANCHOR_FORMAT:
            raise ValueError(f"not a {ANCHOR_FORMAT} document")
        return cls(
            seq=int(doc["seq"]),
            row_hash=str(doc["row_hash"]),
            anchored_at=dt.datetime.fromisoformat(str(doc["anchored_at"])),
            key_id=str(doc["key_id"]),
            signature=str(doc["signature"]),
        )

    def key(self, prefix: str) -> str:
        """Object key; zero-padded so that listing order is sequence order."""
        return join_key(prefix, f"{self.seq:015d}-{self.anchored_at:%Y%m%dT%H%M%S%fZ}.json")


def _canonical(seq: int, row_hash: str, anchored_at: dt.datetime, key_id: str) -> bytes:
    return orjson.dumps(
        [ANCHOR_FORMAT, seq, row_hash, anchored_at.astimezone(dt.UTC), key_id],
        option=orjson.OPT_UTC_Z,
    )


def sign_head(keyring: Keyring, seq: int, row_hash: str, at: dt.datetime) -> Anchor:
    """An anchor of ``(seq, row_hash)`` signed with the active key."""
    key_id = keyring.active_key_id
    signature = keyring.sign_anchor(_canonical(seq, row_hash, at, key_id), key_id)
    return Anchor(seq, row_hash, at, key_id, signature)


def write_anchor(
    engine: Engine,
    keyring: Keyring,
    store: ObjectStore,
    prefix: str = DEFAULT_PREFIX,
    lock: LockMode = LockMode.COMPLIANCE,
    keep_days: int = 2190,
) -> tuple[Anchor, str]:
    """Sign the current chain head and store it under retention.

    The caller verifies the chain (and the earlier anchors) first: anchoring a chain that was
    already rewritten would vouch for the rewrite.

    Returns:
        The anchor and its object key.

    Raises:
        AnchorError: the chain is empty.
    """
    with engine.connect() as connection:
        head = connection.execute(
            select(audit_chain_head.c.seq, audit_chain_head.c.row_hash).where(
                audit_chain_head.c.id == 1
            )
        ).one()
    if int(head.seq) == 0:
        raise AnchorError("the audit chain is empty: there is no head to anchor")
    now = dt.datetime.now(dt.UTC)
    anchor = sign_head(keyring, int(head.seq), str(head.row_hash), now)
    retention = None
    if lock is not LockMode.NONE:
        retention = Retention(lock, now.replace(microsecond=0) + dt.timedelta(days=keep_days))
    key = anchor.key(prefix)
    store.put(key, anchor.to_json(), retention=retention)
    return anchor, key


@dataclass(frozen=True)
class AnchorCheck:
    """Outcome of comparing the chain with its anchors; names the first contradicted one."""

    ok: bool
    anchors_checked: int
    first_bad_key: str | None = None
    first_bad_seq: int | None = None
    reason: str | None = None

    def describe(self) -> str:
        """One line for a terminal or a report."""
        if self.ok and self.anchors_checked == 0:
            return "no anchors found: nothing to compare the chain with"
        if self.ok:
            return f"audit chain agrees with all {self.anchors_checked} anchors"
        return (
            f"audit chain CONTRADICTS anchor {self.first_bad_key} (seq {self.first_bad_seq}): "
            f"{self.reason} ({self.anchors_checked} anchors agreed before it)"
        )


def check_anchors(
    engine: Engine, keyring: Keyring, store: ObjectStore, prefix: str = DEFAULT_PREFIX
) -> AnchorCheck:
    """Compare every anchor under ``prefix`` with the chain, in sequence order.

    An anchor that cannot be read, or whose signature does not verify, fails the check as loudly
    as a contradiction: a verifier must never pass because it could not look. No anchors at all
    is ``ok`` with ``anchors_checked == 0``; a caller that expects anchors must say so (the CLI
    does).
    """
    keys = sorted(info.key for info in store.list(prefix) if info.key.endswith(".json"))
    anchors: list[tuple[str, Anchor]] = []
    for n, key in enumerate(keys):
        try:
            anchor = Anchor.from_json(store.get(key))
        except (ValueError, KeyError, TypeError) as exc:
            return AnchorCheck(False, n, key, None, f"unreadable anchor: {exc}")
        if anchor.key_id not in keyring.key_ids:
            return AnchorCheck(
                False, n, key, anchor.seq, f"anchor signed with unknown key id {anchor.key_id!r}"
            )
        if keyring.sign_anchor(anchor.payload(), anchor.key_id) != anchor.signature:
            return AnchorCheck(False, n, key, anchor.seq, "anchor signature does not verify")
        anchors.append((key, anchor))
    anchors.sort(key=lambda item: (item[1].seq, item[0]))
    head_seq, stored = _row_hashes(engine, {a.seq for _, a in anchors})
    for n, (key, anchor) in enumerate(anchors):
        found = stored.get(anchor.seq)
        if found is None:
            return AnchorCheck(
                False, n, key, anchor.seq,
                f"the chain holds no event seq {anchor.seq} (head is seq {head_seq}): "
                "events anchored earlier were removed",
            )  # fmt: skip
        if found != anchor.row_hash:
            return AnchorCheck(
                False, n, key, anchor.seq,
                f"event seq {anchor.seq} has a different hash than when it was anchored on "
                f"{anchor.anchored_at:%Y-%m-%d %H:%M:%SZ}: the chain was rewritten at or "
                "before this event",
            )  # fmt: skip
    return AnchorCheck(True, len(anchors))


def _row_hashes(engine: Engine, seqs: set[int]) -> tuple[int, dict[int, str]]:
    """The head seq and the stored row hash of each wanted seq, read in one snapshot."""
    options = {"isolation_level": "REPEATABLE READ"} if is_postgres(engine) else {}
    wanted = sorted(seqs)
    found: dict[int, str] = {}
    with engine.connect().execution_options(**options) as connection, connection.begin():
        head_seq = int(
            connection.execute(
                select(audit_chain_head.c.seq).where(audit_chain_head.c.id == 1)
            ).scalar_one()
        )
        for i in range(0, len(wanted), _LOOKUP_BATCH):
            batch = wanted[i : i + _LOOKUP_BATCH]
            rows = connection.execute(
                select(audit_log.c.seq, audit_log.c.row_hash).where(
                    audit_log.c.seq.in_(batch), audit_log.c.seq <= head_seq
                )
            )
            found.update({int(seq): str(row_hash) for seq, row_hash in rows})
    return head_seq, found
