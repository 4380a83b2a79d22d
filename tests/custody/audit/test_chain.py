"""The append path's spliced canonical form hashes exactly what the verifier hashes."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from typing import Any
from uuid import uuid4

import pytest

from custody.audit import AuditEvent, Keyring
from custody.audit.chain import content_digest, content_digest_and_details

DETAILS: list[dict[str, Any]] = [
    {},
    {"b": 1, "a": [1, 2.5, None, True, {"z": "é", "y": []}], "c": {"k": "ü\u2028\U0001f600"}},
    {"text": 'quote " and \\ and \n newline', "big": 2**62, "neg": -0.5},
    {"nested": {"deep": {"deeper": [{"x": 1}, {"w": "v"}]}}},
]


@pytest.mark.parametrize("details", DETAILS)
def test_spliced_digest_is_the_canonical_digest(details: dict[str, Any]) -> None:
    event = AuditEvent(
        principal="p", action="phi.access.read", resource_type="patient", details=details
    )
    recorded = dt.datetime(2026, 12, 7, 14, 0, 0, 123, tzinfo=dt.UTC)
    fields = (
        event.event_id, event.occurred_at, recorded, event.principal, event.action,
        event.status, event.severity, event.resource_type, event.resource_id,
        event.correlation_id, event.regulation, event.data_classification,
        event.retention_days, event.details,
    )  # fmt: skip
    digest, details_json = content_digest_and_details(*fields)
    assert digest == content_digest(*fields)
    other = content_digest_and_details(*(*fields[:-1], {**event.details, "extra": 1}))[0]
    assert other != digest  # the details are in the hash, not only beside it
    assert details_json.startswith(b"{") and details_json.endswith(b"}")


def test_the_row_signer_is_hmac_sha256_for_every_key_and_call() -> None:
    keys = {"k1": b"a" * 32, "long": b"l" * 100}
    keyring = Keyring("k1", keys)
    for _ in range(2):  # the prepared pads are reused, never consumed
        for kid, key in keys.items():
            row_hash = hashlib.sha256(uuid4().bytes).digest()
            expected = hmac.new(key, row_hash, hashlib.sha256).hexdigest()
            assert keyring.row_signer(kid)(row_hash) == expected
            assert keyring.sign(row_hash.hex(), kid) == expected
