"""The append path's prepared HMAC is the HMAC the verifier checks."""

from __future__ import annotations

import hashlib
import hmac
from uuid import uuid4

from custody.audit import Keyring


def test_the_row_signer_is_hmac_sha256_for_every_key_and_call() -> None:
    keys = {"k1": b"a" * 32, "long": b"l" * 100}
    keyring = Keyring("k1", keys)
    for _ in range(2):  # the prepared pads are reused, never consumed
        for kid, key in keys.items():
            row_hash = hashlib.sha256(uuid4().bytes).digest()
            expected = hmac.new(key, row_hash, hashlib.sha256).hexdigest()
            assert keyring.row_signer(kid)(row_hash) == expected
            assert keyring.sign(row_hash.hex(), kid) == expected
