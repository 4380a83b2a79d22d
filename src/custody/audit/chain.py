"""The hash chain's pinned canonical form. Changing anything here breaks every stored chain.

Canonical form ``custody.audit.v1``: a JSON array, serialised by orjson 3 with sorted object keys,
no whitespace, UTF-8 (non-ASCII not escaped), timestamps in RFC 3339 UTC with a ``Z`` suffix and
microseconds when non-zero::

    ["custody.audit.v1", event_id, occurred_at, recorded_at, principal, action, status,
     severity, resource_type, resource_id, correlation_id, regulation, data_classification,
     retention_days, details]

``content = SHA-256(canonical)``; ``row_hash = SHA-256(prev_hash || seq as 8 bytes big-endian ||
content)`` with hashes as raw bytes (stored as hex); the first event's ``prev_hash`` is 32 zero
bytes; ``signature = HMAC-SHA256(key[key_id], row_hash)``. The chain head is signed too, binding
the store's identity, the counter and the time of the last append::

    HMAC-SHA256(key, "custody.audit.head.v2:" || store_id as 16 bytes || seq as 8 bytes ||
                row_hash || updated_at as 8 bytes of microseconds since the epoch)

(Heads written before store identities existed carry ``"custody.audit.head.v1:" || seq ||
row_hash``; :func:`custody.audit.verify.verify_chain` accepts them and says so.)

The content digest does not depend on the chain position: a verifier can check content and links
separately, and name which of the two was tampered with.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Callable
from typing import Any
from uuid import UUID

import orjson

from custody.errors import ConfigError

CANONICAL_VERSION = "custody.audit.v1"
GENESIS_HASH = "0" * 64
HEAD_DOMAIN = b"custody.audit.head.v1:"
HEAD_V2_DOMAIN = b"custody.audit.head.v2:"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
ANCHOR_DOMAIN = b"custody.audit.anchor.v1:"
_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z


def content_digest(
    event_id: UUID | str,
    occurred_at: dt.datetime,
    recorded_at: dt.datetime,
    principal: str,
    action: str,
    status: str,
    severity: str,
    resource_type: str,
    resource_id: str | None,
    correlation_id: str | None,
    regulation: str | None,
    data_classification: str,
    retention_days: int | None,
    details: dict[str, Any],
) -> bytes:
    """SHA-256 of the canonical form of one event (see the module docstring)."""
    canonical = orjson.dumps(
        [
            CANONICAL_VERSION,
            event_id,  # orjson writes a UUID exactly as str() does, without the detour
            occurred_at,
            recorded_at,
            principal,
            action,
            status,
            severity,
            resource_type,
            resource_id,
            correlation_id,
            regulation,
            data_classification,
            retention_days,
            details,
        ],
        option=_OPTIONS,
    )
    return hashlib.sha256(canonical).digest()


def link_hash(prev_hash: str, seq: int, content: bytes) -> str:
    """Chain one event to its predecessor; returns the event's row hash as hex."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + seq.to_bytes(8, "big") + content).hexdigest()


class Keyring:
    """HMAC keys by key id: one signs new events, all of them verify old ones (rotation)."""

    def __init__(self, active_key_id: str, keys: dict[str, bytes]) -> None:
        """Hold the keys; ``active_key_id`` must be one of them."""
        if active_key_id not in keys:
            raise ConfigError(f"active HMAC key id {active_key_id!r} is not among the keys")
        self.active_key_id = active_key_id
        self._keys = dict(keys)
        self._macs = {kid: hmac.new(key, digestmod=hashlib.sha256) for kid, key in keys.items()}
        self._pads: dict[str, tuple[Any, Any]] = {}  # key id -> HMAC inner and outer states

    def row_signer(self, key_id: str | None = None) -> Callable[[bytes], str]:
        """A fast ``sign`` for the append path: takes the raw 32-byte row hash, returns hex.

        Same result as :meth:`sign`: HMAC-SHA256 (RFC 2104) from prepared inner and outer
        SHA-256 states, which costs about a third less per row than copying an ``hmac`` object.
        """
        kid = key_id or self.active_key_id
        pads = self._pads.get(kid)
        if pads is None:  # once per key: the pads cost more than a small batch's signing
            key = self._keys[kid]
            if len(key) > 64:
                key = hashlib.sha256(key).digest()
            key = key.ljust(64, b"\0")
            pads = self._pads[kid] = (
                hashlib.sha256(bytes(b ^ 0x36 for b in key)),
                hashlib.sha256(bytes(b ^ 0x5C for b in key)),
            )
        inner, outer = pads

        def sign(row_hash: bytes) -> str:
            i = inner.copy()
            i.update(row_hash)
            o = outer.copy()
            o.update(i.digest())
            return o.hexdigest()

        return sign

    @property
    def key_ids(self) -> frozenset[str]:
        """Key ids this keyring can verify."""
        return frozenset(self._macs)

    def sign(self, row_hash: str, key_id: str | None = None) -> str:
        """HMAC-SHA256 of a row hash with the active (or named) key, as hex."""
        mac = self._macs[key_id or self.active_key_id].copy()
        mac.update(bytes.fromhex(row_hash))
        return mac.hexdigest()

    def sign_head(self, seq: int, row_hash: str, key_id: str | None = None) -> str:
        """HMAC of the chain head (domain-separated from row signatures).

        Cutting events off the end of the log and moving the head back then needs the key.
        """
        mac = self._macs[key_id or self.active_key_id].copy()
        mac.update(HEAD_DOMAIN + seq.to_bytes(8, "big") + bytes.fromhex(row_hash))
        return mac.hexdigest()

    def sign_head_v2(
        self,
        store_id: UUID | str,
        seq: int,
        row_hash: str,
        at: dt.datetime,
        key_id: str | None = None,
    ) -> str:
        """HMAC of the chain head with the store's identity and the time of the last append.

        The store id keeps a head (and the chain under it) from another store signed with the
        same key from standing in for this one; the counter and time let a verifier tell an
        earlier head put back from the current one, given a copy of a later one kept outside the
        database (an anchor).
        """
        micros = (at - _EPOCH) // dt.timedelta(microseconds=1)
        mac = self._macs[key_id or self.active_key_id].copy()
        mac.update(
            HEAD_V2_DOMAIN
            + UUID(str(store_id)).bytes
            + seq.to_bytes(8, "big")
            + bytes.fromhex(row_hash)
            + micros.to_bytes(8, "big", signed=True)
        )
        return mac.hexdigest()

    def sign_anchor(self, payload: bytes, key_id: str | None = None) -> str:
        """HMAC of an anchor's canonical payload (domain-separated from rows and the head).

        An anchor copies the head out of the database; signing it means a forged anchor, written
        by someone without the key to raise a false alarm, is told apart from a real one.
        """
        mac = self._macs[key_id or self.active_key_id].copy()
        mac.update(ANCHOR_DOMAIN + payload)
        return mac.hexdigest()

    def verify(self, key_id: str, row_hash: str, signature: str) -> bool:
        """Constant-time check of a stored signature; KeyError for an unknown key id."""
        return hmac.compare_digest(self.sign(row_hash, key_id), signature)
