"""Key rotation end to end through `custody audit verify`, and keys that must not pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from sqlalchemy import Engine

from custody.audit import AuditLog, Keyring
from tests.support.audit import phi_events
from tests.support.env import TEST_KEYS, custody_env


def verify(store: Engine, keys: dict[str, str] | None, active: str = "k2") -> tuple[int, str]:
    env = custody_env(store.url.render_as_string(hide_password=False), active_key=active)
    env["CUSTODY_HMAC_KEYS"] = json.dumps(keys) if keys is not None else "{}"
    if keys is None:
        del env["CUSTODY_HMAC_ACTIVE_KEY_ID"]
    done = subprocess.run(
        [sys.executable, "-m", "custody.cli", "audit", "verify"],
        env={**env, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


def test_rotation_keeps_old_events_verifiable_and_bad_keys_fail_loudly(
    sqlite_store: Engine,
) -> None:
    raw = {k: v.encode() for k, v in TEST_KEYS.items()}
    AuditLog(sqlite_store, Keyring("k1", {"k1": raw["k1"]})).log_batch(list(phi_events(20)))
    # Rotation: k2 signs from now on; k1 stays in the keyring only to verify what it signed.
    AuditLog(sqlite_store, Keyring("k2", raw)).log_batch(list(phi_events(20, start=20)))

    code, out = verify(sqlite_store, TEST_KEYS)
    assert code == 0 and "intact: 40 events" in out

    code, out = verify(sqlite_store, {"k2": TEST_KEYS["k2"]})
    assert code == 1 and "BROKEN at seq 1" in out and "unknown HMAC key id 'k1'" in out

    code, out = verify(sqlite_store, {"k1": "w" * 40, "k2": TEST_KEYS["k2"]})
    assert code == 1 and "BROKEN at seq 1" in out and "HMAC mismatch with key 'k1'" in out

    code, out = verify(sqlite_store, {"k1": TEST_KEYS["k1"], "k2": "w" * 40})
    assert code == 1 and "BROKEN at seq 21" in out

    code, out = verify(sqlite_store, None)
    assert code == 2 and "no audit signing key" in out
