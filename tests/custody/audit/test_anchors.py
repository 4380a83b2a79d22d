"""Anchors catch a chain rewritten with the real key, which the chain alone cannot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine

from custody.audit import AuditLog, Keyring, verify_chain
from custody.audit.anchors import Anchor, check_anchors, write_anchor
from custody.storage import LockMode, ObjectLockedError
from custody.storage.local import LocalStore
from custody.storage.s3 import S3Store, ensure_bucket
from tests.support.audit import phi_events, rewrite_chain_from, tamper
from tests.support.env import custody_env
from tests.support.seaweed import S3Server


def anchored_chain(store: Engine, keyring: Keyring, objects: LocalStore) -> list[str]:
    """30 events with anchors at seq 10, 20 and 30."""
    log = AuditLog(store, keyring)
    keys = []
    for start in (0, 10, 20):
        log.log_batch(list(phi_events(10, start=start)))
        keys.append(write_anchor(store, keyring, objects, lock=LockMode.COMPLIANCE)[1])
    return keys


def test_a_rewrite_with_the_real_key_passes_the_chain_but_not_the_anchors(
    store: Engine, keyring: Keyring, tmp_path: Path
) -> None:
    objects = LocalStore(tmp_path / "objects")
    keys = anchored_chain(store, keyring, objects)
    intact = check_anchors(store, keyring, objects)
    assert (intact.ok, intact.anchors_checked) == (True, 3)

    rewrite_chain_from(store, keyring, 15)

    assert verify_chain(store, keyring).ok  # the rewrite is perfect as far as the chain goes
    found = check_anchors(store, keyring, objects)
    assert (found.ok, found.first_bad_seq, found.first_bad_key) == (False, 20, keys[1])
    assert found.anchors_checked == 1 and "rewritten" in (found.reason or "")


def test_cutting_events_off_below_an_anchor_is_caught(
    store: Engine, keyring: Keyring, tmp_path: Path
) -> None:
    objects = LocalStore(tmp_path / "objects")
    keys = anchored_chain(store, keyring, objects)
    tamper(store, "DELETE FROM audit_log WHERE seq > 25")
    # Move the head back and re-sign it with the real key: the chain alone verifies again.
    with store.begin() as connection:
        row_hash = connection.exec_driver_sql(
            "SELECT row_hash FROM audit_log WHERE seq = 25"
        ).scalar_one()
        mark = "?" if store.dialect.name == "sqlite" else "%s"
        connection.exec_driver_sql(
            f"UPDATE audit_chain_head SET seq = 25, row_hash = {mark}, signature = {mark} "
            "WHERE id = 1",
            (row_hash, keyring.sign_head(25, row_hash)),
        )
    assert verify_chain(store, keyring).ok
    found = check_anchors(store, keyring, objects)
    assert (found.ok, found.first_bad_key) == (False, keys[2])
    assert "no event seq 30 (head is seq 25)" in (found.reason or "")


def test_forged_or_unverifiable_anchors_fail_loudly(
    sqlite_store: Engine, keyring: Keyring, tmp_path: Path
) -> None:
    objects = LocalStore(tmp_path / "objects")
    anchored_chain(sqlite_store, keyring, objects)
    thief = Keyring("k9", {"k9": b"t" * 32})
    forged, forged_key = write_anchor(sqlite_store, thief, objects, lock=LockMode.NONE)
    found = check_anchors(sqlite_store, keyring, objects)
    assert (found.ok, found.first_bad_key) == (False, forged_key)
    assert "unknown key id 'k9'" in (found.reason or "")

    objects.delete(forged_key)
    fake = Anchor(forged.seq, forged.row_hash, forged.anchored_at, "k1", "00" * 32)
    objects.put(fake.key("audit-anchors"), fake.to_json())
    found = check_anchors(sqlite_store, keyring, objects)
    assert (found.ok, found.reason) == (False, "anchor signature does not verify")


def test_anchors_in_s3_are_locked_and_rotation_keeps_old_ones_valid(
    pg_store: Engine, s3_server: S3Server, tmp_path: Path
) -> None:
    keys = {"k1": b"k" * 32, "k2": b"q" * 32}
    client = s3_server.client()
    bucket = f"anchors-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    ensure_bucket(client, bucket, object_lock=True)
    objects = S3Store(client, bucket, "custody")
    old = Keyring("k1", keys)
    AuditLog(pg_store, old).log_batch(list(phi_events(5)))
    anchor, key = write_anchor(pg_store, old, objects, lock=LockMode.COMPLIANCE, keep_days=1)
    with pytest.raises(ObjectLockedError):
        objects.delete(key, objects.head(key).version_id)  # type: ignore[union-attr]

    rotated = Keyring("k2", keys)
    AuditLog(pg_store, rotated).log_batch(list(phi_events(5, start=5)))
    write_anchor(pg_store, rotated, objects, lock=LockMode.COMPLIANCE, keep_days=1)
    assert check_anchors(pg_store, rotated, objects).anchors_checked == 2
    without_old = check_anchors(pg_store, Keyring("k2", {"k2": keys["k2"]}), objects)
    assert (without_old.ok, without_old.first_bad_seq) == (False, anchor.seq)


def cli(store: Engine, *args: str, extra: dict[str, str] | None = None) -> tuple[int, str]:
    env = custody_env(store.url.render_as_string(hide_password=False))
    done = subprocess.run(
        [sys.executable, "-m", "custody.cli", "audit", *args],
        env={**env, **(extra or {}), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


def test_cli_anchor_then_verify_names_the_contradicted_anchor(
    sqlite_store: Engine, keyring: Keyring, tmp_path: Path
) -> None:
    url = (tmp_path / "objects").as_uri()
    none_yet = cli(sqlite_store, "verify", "--anchors", "--store", url)
    assert none_yet[0] == 1 and "no anchors found" in none_yet[1]
    AuditLog(sqlite_store, keyring).log_batch(list(phi_events(12)))
    code, out = cli(sqlite_store, "anchor", "--store", url, "--lock", "governance")
    assert code == 0 and "anchored seq 12" in out
    code, out = cli(sqlite_store, "verify", "--anchors", "--store", url, "--json")
    assert code == 0 and json.loads(out)["anchors"]["anchors_checked"] == 1

    rewrite_chain_from(sqlite_store, keyring, 3)
    code, out = cli(sqlite_store, "verify", "--anchors", "--store", url)
    assert code == 1
    assert "audit chain intact" in out
    assert "CONTRADICTS anchor audit-anchors/000000000000012-" in out
    refused = cli(sqlite_store, "anchor", "--store", url)
    assert refused[0] == 1 and "not anchored" in refused[1]
