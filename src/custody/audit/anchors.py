"""Anchors: copies of the signed chain head, kept where the database's owner cannot reach.

The hash chain and its HMAC catch anyone who edits audit rows without the key. Someone who holds
the key (or steals it) could still rewrite every row from some point on and re-sign them all: the
chain would verify. An anchor closes that gap. At regular times the head (sequence number and
row hash) is signed and written to the object store under Object Lock, where nobody can change
or delete it until its retention ends. A rewritten chain then contradicts every anchor taken
after the point of rewriting, and ``check_anchors`` names the first of them.

Anchor objects are small JSON documents (``custody.audit.anchor.v2``) holding no event content:
the head's sequence number, hash, time and store id, the anchoring time and a signature
(``v1`` anchors, without store id and head time, are still read).

The chain head itself lives in the database, so its owner can put an earlier, validly signed head
back after cutting events off the end. Only a copy kept outside sees that: flows anchor the head
at the end of every run (:func:`anchor_after_run`, cheap: it checks only the events since the
previous anchor), and :func:`witness` compares the head with the latest anchor, flagging a head
older than it as a rollback and counting what no anchor has witnessed yet.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Engine, Row, select

from custody.audit.chain import Keyring
from custody.audit.verify import VerifyResult, verify_chain, verify_since
from custody.db import is_postgres
from custody.errors import CustodyError
from custody.storage import LockMode, ObjectStore, Retention, join_key
from custody.store.tables import audit_chain_head, audit_log

ANCHOR_FORMAT = "custody.audit.anchor.v2"
_V1_FORMAT = "custody.audit.anchor.v1"
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
    store_id: str | None = None
    head_at: dt.datetime | None = None

    def payload(self) -> bytes:
        """The signed bytes: everything but the signature, in a pinned form."""
        if self.store_id is None or self.head_at is None:
            return _canonical(self.seq, self.row_hash, self.anchored_at, self.key_id)
        return _canonical_v2(
            self.seq, self.row_hash, self.anchored_at, self.key_id, self.store_id, self.head_at
        )

    def to_json(self) -> bytes:
        """The stored object."""
        doc: dict[str, Any] = {
            "format": _V1_FORMAT if self.store_id is None else ANCHOR_FORMAT,
            "seq": self.seq,
            "row_hash": self.row_hash,
            "anchored_at": self.anchored_at,
            "key_id": self.key_id,
            "signature": self.signature,
        }
        if self.store_id is not None:
            doc |= {"store_id": self.store_id, "head_at": self.head_at}
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z)

    @classmethod
    def from_json(cls, data: bytes) -> Anchor:
        """Parse a stored anchor.

        Raises:
            ValueError: the object is not an anchor of this format.
        """
        doc: Any = orjson.loads(data)
        if not isinstance(doc, dict) or doc.get("format") not in (ANCHOR_FORMAT, _V1_FORMAT):
            raise ValueError(f"not a {ANCHOR_FORMAT} document")
        v2 = doc["format"] == ANCHOR_FORMAT
        return cls(
            seq=int(doc["seq"]),
            row_hash=str(doc["row_hash"]),
            anchored_at=dt.datetime.fromisoformat(str(doc["anchored_at"])),
            key_id=str(doc["key_id"]),
            signature=str(doc["signature"]),
            store_id=str(doc["store_id"]) if v2 else None,
            head_at=dt.datetime.fromisoformat(str(doc["head_at"])) if v2 else None,
        )

    def key(self, prefix: str) -> str:
        """Object key; zero-padded so that listing order is sequence order."""
        return join_key(prefix, f"{self.seq:015d}-{self.anchored_at:%Y%m%dT%H%M%S%fZ}.json")


def _canonical(seq: int, row_hash: str, anchored_at: dt.datetime, key_id: str) -> bytes:
    return orjson.dumps(
        [ANCHOR_FORMAT, seq, row_hash, anchored_at.astimezone(dt.UTC), key_id],
        option=orjson.OPT_UTC_Z,
    )


def _canonical_v2(
    seq: int,
    row_hash: str,
    anchored_at: dt.datetime,
    key_id: str,
    store_id: str,
    head_at: dt.datetime,
) -> bytes:
    return orjson.dumps(
        [
            ANCHOR_FORMAT, seq, row_hash, anchored_at.astimezone(dt.UTC), key_id, store_id,
            head_at.astimezone(dt.UTC),
        ],
        option=orjson.OPT_UTC_Z,
    )  # fmt: skip


def sign_head(
    keyring: Keyring,
    seq: int,
    row_hash: str,
    at: dt.datetime,
    store_id: str | None = None,
    head_at: dt.datetime | None = None,
) -> Anchor:
    """An anchor of the head ``(seq, row_hash, head_at)`` of store ``store_id``, signed now."""
    key_id = keyring.active_key_id
    anchor = Anchor(seq, row_hash, at, key_id, "", store_id, head_at)
    signature = keyring.sign_anchor(anchor.payload(), key_id)
    return Anchor(seq, row_hash, at, key_id, signature, store_id, head_at)


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
            select(
                audit_chain_head.c.seq,
                audit_chain_head.c.row_hash,
                audit_chain_head.c.store_id,
                audit_chain_head.c.updated_at,
            ).where(audit_chain_head.c.id == 1)
        ).one()
    return _put_anchor(
        keyring, store, prefix, lock, keep_days,
        int(head.seq), str(head.row_hash), head.store_id, head.updated_at,
    )  # fmt: skip


def _put_anchor(
    keyring: Keyring,
    store: ObjectStore,
    prefix: str,
    lock: LockMode,
    keep_days: int,
    seq: int,
    row_hash: str,
    store_id: str | None,
    head_at: dt.datetime | None,
) -> tuple[Anchor, str]:
    if seq == 0:
        raise AnchorError("the audit chain is empty: there is no head to anchor")
    now = dt.datetime.now(dt.UTC)
    anchor = sign_head(keyring, seq, row_hash, now, store_id, head_at)
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
    head, stored = _row_hashes(engine, {a.seq for _, a in anchors})
    head_seq = int(head.seq)
    for n, (key, anchor) in enumerate(anchors):
        if anchor.store_id is not None and anchor.store_id != head.store_id:
            return AnchorCheck(
                False, n, key, anchor.seq,
                f"the anchor was taken from store {anchor.store_id} but the chain head names "
                f"store {head.store_id}: this chain is not the one that was anchored",
            )  # fmt: skip
        found = stored.get(anchor.seq)
        if found is None:
            return AnchorCheck(
                False, n, key, anchor.seq,
                f"rollback: the chain holds no event seq {anchor.seq} (head is seq {head_seq}): "
                "events anchored earlier were removed",
            )  # fmt: skip
        if anchor.head_at is not None and head.updated_at < anchor.head_at:
            return AnchorCheck(
                False, n, key, anchor.seq,
                f"rollback: the chain head ({head.updated_at:%Y-%m-%d %H:%M:%S.%fZ}) is older "
                f"than the head anchored at seq {anchor.seq}",
            )  # fmt: skip
        if found != anchor.row_hash:
            return AnchorCheck(
                False, n, key, anchor.seq,
                f"event seq {anchor.seq} has a different hash than when it was anchored on "
                f"{anchor.anchored_at:%Y-%m-%d %H:%M:%SZ}: the chain was rewritten at or "
                "before this event",
            )  # fmt: skip
    return AnchorCheck(True, len(anchors))


def _row_hashes(engine: Engine, seqs: set[int]) -> tuple[Row[Any], dict[int, str]]:
    """The head row and the stored row hash of each wanted seq, read in one snapshot."""
    options = {"isolation_level": "REPEATABLE READ"} if is_postgres(engine) else {}
    wanted = sorted(seqs)
    found: dict[int, str] = {}
    with engine.connect().execution_options(**options) as connection, connection.begin():
        head = connection.execute(select(audit_chain_head).where(audit_chain_head.c.id == 1)).one()
        head_seq = int(head.seq)
        for i in range(0, len(wanted), _LOOKUP_BATCH):
            batch = wanted[i : i + _LOOKUP_BATCH]
            rows = connection.execute(
                select(audit_log.c.seq, audit_log.c.row_hash).where(
                    audit_log.c.seq.in_(batch), audit_log.c.seq <= head_seq
                )
            )
            found.update({int(seq): str(row_hash) for seq, row_hash in rows})
    return head, found


def latest_anchor(
    keyring: Keyring, store: ObjectStore, prefix: str = DEFAULT_PREFIX
) -> tuple[str, Anchor] | None:
    """The anchor of the highest sequence number under ``prefix``, its signature checked.

    Keys are zero-padded sequence numbers, so this reads one object whatever the count.

    Raises:
        AnchorError: the latest anchor is unreadable or its signature does not verify.
    """
    keys = [info.key for info in store.list(prefix) if info.key.endswith(".json")]
    if not keys:
        return None
    key = max(keys)
    try:
        anchor = Anchor.from_json(store.get(key))
    except (ValueError, KeyError, TypeError) as exc:
        raise AnchorError(f"latest anchor {key} is unreadable: {exc}") from exc
    if anchor.key_id not in keyring.key_ids or (
        keyring.sign_anchor(anchor.payload(), anchor.key_id) != anchor.signature
    ):
        raise AnchorError(f"latest anchor {key} does not verify with the configured keys")
    return key, anchor


@dataclass(frozen=True)
class Witness:
    """How much of the chain a copy outside the database vouches for, from the latest anchor."""

    ok: bool
    head_seq: int
    anchored_seq: int | None
    anchored_at: dt.datetime | None
    unwitnessed_events: int
    seconds_since_anchor: float | None
    anchor_key: str | None = None
    reason: str | None = None

    def describe(self) -> str:
        """One line for a terminal or a report."""
        if not self.ok:
            return f"audit chain head ROLLED BACK or replaced: {self.reason}"
        if self.anchored_seq is None:
            return (
                f"no anchor yet: all {self.unwitnessed_events} events are witnessed only by "
                "the database"
            )
        return (
            f"latest anchor seq {self.anchored_seq}, {self.seconds_since_anchor:.0f} s ago: "
            f"{self.unwitnessed_events} events not yet witnessed outside the database"
        )


def witness(
    head: VerifyResult,
    keyring: Keyring,
    store: ObjectStore,
    prefix: str = DEFAULT_PREFIX,
    now: dt.datetime | None = None,
) -> Witness:
    """Compare a verified chain head with the latest anchor.

    A head older than the latest anchor (lower sequence number, another hash at the anchored
    seq, an earlier time) is a rollback: someone put back an earlier signed head. A different
    store id means the chain came from another store.
    """
    now = now or dt.datetime.now(dt.UTC)
    try:
        found = latest_anchor(keyring, store, prefix)
    except AnchorError as exc:
        return Witness(False, head.last_seq, None, None, head.last_seq, None, None, str(exc))
    if found is None:
        return Witness(True, head.last_seq, None, None, head.last_seq, None)
    key, anchor = found
    since = (now - anchor.anchored_at).total_seconds()
    reason = None
    if anchor.store_id is not None and anchor.store_id != head.store_id:
        reason = (
            f"anchor {key} was taken from store {anchor.store_id}, the chain head names store "
            f"{head.store_id}"
        )
    elif head.last_seq < anchor.seq:
        reason = (
            f"the chain head is seq {head.last_seq} but seq {anchor.seq} was anchored at "
            f"{anchor.anchored_at:%Y-%m-%d %H:%M:%SZ} ({anchor.seq - head.last_seq} anchored "
            "events are gone): an earlier head was put back"
        )
    elif head.last_seq == anchor.seq and head.head_hash != anchor.row_hash:
        reason = f"the chain head at seq {head.last_seq} differs from the one anchored in {key}"
    elif anchor.head_at is not None and head.head_at is not None and head.head_at < anchor.head_at:
        reason = f"the chain head is older than the one anchored in {key}"
    return Witness(
        reason is None, head.last_seq, anchor.seq, anchor.anchored_at,
        max(head.last_seq - anchor.seq, 0), since, key, reason,
    )  # fmt: skip


def anchor_after_run(
    engine: Engine,
    keyring: Keyring,
    store: ObjectStore,
    prefix: str = DEFAULT_PREFIX,
    lock: LockMode = LockMode.COMPLIANCE,
    keep_days: int = 2190,
) -> dict[str, Any]:
    """Anchor the head if it moved since the latest anchor, checking only the events since.

    Called at the end of every flow run. It never vouches for a chain that contradicts the
    latest anchor: a rolled-back or rewritten chain is refused (and the result says why).

    Returns:
        ``{"anchored": bool, "seq": ..., "key": ..., "checked": n, "reason": ...}`` (no content).
    """
    found = latest_anchor(keyring, store, prefix)
    if found is None:
        result = verify_chain(engine, keyring)
    else:
        result = verify_since(engine, keyring, found[1].seq, found[1].row_hash)
    if result.ok and found is not None and found[1].store_id not in (None, result.store_id):
        return {"anchored": False, "seq": result.last_seq, "checked": result.events_checked,
                "reason": f"the latest anchor {found[0]} belongs to another store"}  # fmt: skip
    if not result.ok:
        return {"anchored": False, "seq": result.last_seq, "checked": result.events_checked,
                "reason": result.reason}  # fmt: skip
    if result.last_seq == 0 or (found is not None and found[1].seq == result.last_seq):
        return {"anchored": False, "seq": result.last_seq, "checked": result.events_checked,
                "reason": "nothing new to anchor"}  # fmt: skip
    assert result.head_hash is not None
    anchor, key = _put_anchor(
        keyring, store, prefix, lock, keep_days,
        result.last_seq, result.head_hash, result.store_id, result.head_at,
    )  # fmt: skip
    return {"anchored": True, "seq": anchor.seq, "key": key, "checked": result.events_checked,
            "reason": None}  # fmt: skip
