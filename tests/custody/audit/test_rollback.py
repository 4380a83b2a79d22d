"""Issue 15 item 3: an earlier signed chain head put back by the store's owner is caught.

The attacker is the non-superuser role that owns the tables (as ``infra/sql/10-roles.sql`` makes
it): it may disable the append-only trigger, delete the newest events and restore a copy of an
earlier ``audit_chain_head`` row, validly signed in its day. The chain alone then verifies; the
anchor taken after the run that wrote the deleted events does not agree.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, make_url, select, text

from custody.audit import AuditLog, Keyring, verify_chain
from custody.audit.anchors import anchor_after_run, check_anchors
from custody.audit.append import COLUMNS
from custody.db import dispose_engines, get_engine
from custody.storage import LockMode
from custody.storage.local import LocalStore
from custody.store import upgrade
from custody.store.tables import audit_chain_head
from tests.support.audit import phi_events
from tests.support.env import custody_env


@pytest.fixture
def owner_store(pg_admin_url: str) -> Iterator[Engine]:
    """A store migrated by, and owned by, a plain (non-superuser) login role."""
    tag = uuid.uuid4().hex[:8]
    role, database, password = f"ct{tag}_owner", f"custody_test_owner_{tag}", uuid.uuid4().hex
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(
            f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '
            f"'{password}'"
        )
        conn.execute(f'CREATE DATABASE "{database}" OWNER "{role}"')
    url = make_url(pg_admin_url).set(username=role, password=password, database=database)
    engine = get_engine(url.render_as_string(hide_password=False))
    try:
        upgrade(engine)
        with engine.connect() as c:
            superuser = text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            assert c.execute(superuser).scalar_one() is False
        yield engine
    finally:
        dispose_engines()
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')


def _cli(store: Engine, objects: Path, *args: str) -> tuple[int, str]:
    env = custody_env(store.url.render_as_string(hide_password=False))
    env["CUSTODY_OBJECT_STORE_URL"] = objects.as_uri()
    done = subprocess.run(
        [sys.executable, "-m", "custody.cli", "audit", "verify", *args],
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


def test_issue_15_item_3_an_earlier_head_put_back_by_the_owner_is_a_rollback(
    owner_store: Engine, keyring: Keyring, tmp_path: Path
) -> None:
    objects_dir = tmp_path / "objects"
    objects = LocalStore(objects_dir)
    log = AuditLog(owner_store, keyring)
    log.log_batch(list(phi_events(10)))
    assert anchor_after_run(owner_store, keyring, objects)["seq"] == 10  # end of run 1
    with owner_store.connect() as c:
        saved = c.execute(select(audit_chain_head)).one()._asdict()
    log.log_batch(list(phi_events(10, start=10)))
    second = anchor_after_run(owner_store, keyring, objects)  # end of run 2: checks 10 events
    assert (second["anchored"], second["seq"], second["checked"]) == (True, 20, 10)
    log.log_batch(list(phi_events(3, start=20)))  # written, not anchored yet

    code, out = _cli(owner_store, objects_dir, "--json")
    seen = json.loads(out)["witness"]
    assert code == 0 and (seen["ok"], seen["anchored_seq"], seen["unwitnessed_events"]) == (
        True, 20, 3,
    )  # fmt: skip
    assert 0 <= seen["seconds_since_anchor"] < 120

    # The attack, as the owner: no superuser, no key.
    with owner_store.begin() as c:
        c.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_delete"))
        c.execute(text("DELETE FROM audit_log WHERE seq > 10"))
        c.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update_delete"))
        c.execute(audit_chain_head.update().values(**saved))

    assert verify_chain(owner_store, keyring).ok  # the chain alone cannot tell
    code, out = _cli(owner_store, objects_dir)
    assert code == 1, out
    assert "ROLLED BACK" in out and "head is seq 10 but seq 20 was anchored" in out
    code, out = _cli(owner_store, objects_dir, "--anchors")
    assert code == 1 and "rollback: the chain holds no event seq 20 (head is seq 10)" in out
    found = check_anchors(owner_store, keyring, objects)
    assert (found.ok, found.first_bad_seq) == (False, 20)
    # The next run's anchor refuses to vouch for the rolled-back chain.
    refused = anchor_after_run(owner_store, keyring, objects, lock=LockMode.NONE)
    assert refused["anchored"] is False and "rollback" in refused["reason"]


def test_issue_15_item_3_a_chain_from_another_store_with_the_same_key_does_not_stand_in(
    pg_store: Engine, pg_url: str, keyring: Keyring, tmp_path: Path
) -> None:
    objects = LocalStore(tmp_path / "objects")
    AuditLog(pg_store, keyring).log_batch(list(phi_events(5)))
    anchor_after_run(pg_store, keyring, objects)
    with pg_store.connect() as c:
        mine = c.execute(text("SELECT store_id FROM audit_chain_head")).scalar_one()
    other = get_engine(pg_url)
    upgrade(other)
    AuditLog(other, keyring).log_batch(list(phi_events(5)))
    # Copy the other store's whole chain and head over this one's (same key, same length).
    with other.connect() as c:
        rows = c.execute(text("SELECT * FROM audit_log ORDER BY seq")).mappings().all()
        head = c.execute(select(audit_chain_head)).one()._asdict()
    with pg_store.begin() as c:
        c.execute(text("SET LOCAL session_replication_role = replica"))
        c.execute(text("DELETE FROM audit_log"))
        values = ", ".join(
            f"CAST(:{n} AS uuid)" if n == "event_id" else f"CAST(:{n} AS jsonb)"
            if n == "details" else f":{n}" for n in COLUMNS
        )  # fmt: skip
        c.execute(
            text(f"INSERT INTO audit_log ({', '.join(COLUMNS)}) VALUES ({values})"),
            [{**row, "event_id": str(row["event_id"]), "details": json.dumps(row["details"])}
             for row in rows],
        )  # fmt: skip
        c.execute(audit_chain_head.update().values(**head))
    assert verify_chain(pg_store, keyring).ok
    found = check_anchors(pg_store, keyring, objects)
    assert not found.ok and "taken from store" in (found.reason or "")
    # Keeping this store's id instead breaks the head's signature, which binds the id.
    assert mine != head["store_id"]
    with pg_store.begin() as c:
        c.execute(text("UPDATE audit_chain_head SET store_id = :s"), {"s": mine})
    broken = verify_chain(pg_store, keyring)
    assert not broken.ok and "head signature mismatch" in (broken.reason or "")


def test_a_head_signed_before_store_identities_still_verifies_and_says_so(
    store: Engine, keyring: Keyring
) -> None:
    AuditLog(store, keyring).log_batch(list(phi_events(3)))
    with store.begin() as c:  # as migration 0005 leaves a store written by the earlier code
        head = c.execute(select(audit_chain_head)).one()
        c.execute(
            audit_chain_head.update().values(signature=keyring.sign_head(head.seq, head.row_hash))
        )
    legacy = verify_chain(store, keyring)
    assert legacy.ok and legacy.legacy_head and "v1 form" in legacy.describe()
    with store.begin() as c:  # a v1 signature over another seq is still a forgery
        c.execute(audit_chain_head.update().values(signature=keyring.sign_head(2, head.row_hash)))
    assert "head signature mismatch" in (verify_chain(store, keyring).reason or "")
    with store.begin() as c:
        c.execute(audit_chain_head.update().values(signature=head.signature))
    AuditLog(store, keyring).log(next(phi_events(1, start=3)))  # the next append re-signs (v2)
    assert not verify_chain(store, keyring).legacy_head
