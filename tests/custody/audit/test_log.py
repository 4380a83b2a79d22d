"""Appending to and verifying the chain, on PostgreSQL and on SQLite."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from custody.audit import AuditEvent, AuditLog, Keyring, Severity, verify_chain
from tests.support.audit import json_set, phi_events, tamper
from tests.support.env import custody_env


def cli_verify(store: Engine) -> subprocess.CompletedProcess[str]:
    env = custody_env(store.url.render_as_string(hide_password=False))
    return subprocess.run(
        [sys.executable, "-m", "custody.cli", "audit", "verify"],
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_100k_events_verify_and_tampering_names_the_row(store: Engine, keyring: Keyring) -> None:
    log = AuditLog(store, keyring)
    events = list(phi_events(100_000))
    for i in range(0, len(events), 10_000):
        log.log_batch(events[i : i + 10_000])
    with store.connect() as c:
        assert c.execute(text("SELECT count(*), min(seq), max(seq) FROM audit_log")).one() == (
            100_000,
            1,
            100_000,
        )

    intact = cli_verify(store)
    assert intact.returncode == 0, intact.stderr
    assert "intact: 100000 events" in intact.stdout

    tamper(
        store,
        f"UPDATE audit_log SET details = {json_set(store, 'reason', 'nosy')} WHERE seq = 42424",
    )
    broken = cli_verify(store)
    assert broken.returncode == 1
    assert "BROKEN at seq 42424" in broken.stdout and "hash mismatch" in broken.stdout


@pytest.mark.parametrize(
    "statement", ["UPDATE audit_log SET principal = 'x'", "DELETE FROM audit_log"]
)
def test_update_and_delete_are_refused(store: Engine, keyring: Keyring, statement: str) -> None:
    AuditLog(store, keyring).log_batch(list(phi_events(10)))
    with pytest.raises(DBAPIError, match="append-only"), store.begin() as c:
        c.execute(text(statement))
    assert verify_chain(store, keyring).ok


def test_truncate_is_refused_on_postgres(pg_store: Engine, keyring: Keyring) -> None:
    AuditLog(pg_store, keyring).log_batch(list(phi_events(10)))
    for table in ("audit_log", "audit_log_default"):
        with pytest.raises(DBAPIError, match="append-only"), pg_store.begin() as c:
            c.execute(text(f"TRUNCATE {table}"))
    with pg_store.connect() as c:
        partition = c.execute(
            text("SELECT tableoid::regclass::text FROM audit_log LIMIT 1")
        ).scalar_one()
    with pytest.raises(DBAPIError, match="append-only"), pg_store.begin() as c:
        c.execute(text(f"TRUNCATE {partition}"))


@pytest.mark.parametrize(
    "sql, seq, reason",
    [
        ("DELETE FROM audit_log WHERE seq = 50", 50, "gap: seq 50 missing"),
        ("DELETE FROM audit_log WHERE seq > 90", 91, "chain head says seq 100"),
        ("UPDATE audit_log SET principal = 'mallory' WHERE seq = 7", 7, "hash mismatch"),
        ("UPDATE audit_log SET signature = row_hash WHERE seq = 8", 8, "HMAC mismatch"),
        ("UPDATE audit_log SET prev_hash = row_hash WHERE seq = 9", 9, "broken link"),
        ("UPDATE audit_log SET key_id = 'k9' WHERE seq = 10", 10, "unknown HMAC key id"),
    ],
)
def test_each_kind_of_tampering_is_named(
    store: Engine, keyring: Keyring, sql: str, seq: int, reason: str
) -> None:
    AuditLog(store, keyring).log_batch(list(phi_events(100)))
    tamper(store, sql)
    result = verify_chain(store, keyring)
    assert not result.ok
    assert result.first_bad_seq == seq
    assert reason in (result.reason or "")


def test_rewriting_a_row_without_the_key_is_caught_even_with_a_valid_chain(
    store: Engine, keyring: Keyring
) -> None:
    """An attacker recomputes hashes (public algorithm) but signs with a guessed key."""
    log = AuditLog(store, keyring)
    log.log_batch(list(phi_events(20)))
    forger = AuditLog(store, Keyring("k1", {"k1": b"not-the-real-key-but-32-bytes-long!"}))
    forger.log(next(phi_events(1, start=99)))
    result = verify_chain(store, keyring)
    assert (result.ok, result.first_bad_seq) == (False, 21)
    assert "HMAC mismatch" in (result.reason or "")


def test_key_rotation_keeps_old_events_verifiable(store: Engine) -> None:
    keys = {"k1": b"k" * 32, "k2": b"q" * 32}
    AuditLog(store, Keyring("k1", keys)).log_batch(list(phi_events(50)))
    AuditLog(store, Keyring("k2", keys)).log_batch(list(phi_events(50, start=50)))
    with store.connect() as c:
        assert c.execute(
            text("SELECT key_id, count(*) FROM audit_log GROUP BY key_id ORDER BY key_id")
        ).all() == [("k1", 50), ("k2", 50)]
    assert verify_chain(store, Keyring("k2", keys)).ok
    without_old = verify_chain(store, Keyring("k2", {"k2": keys["k2"]}))
    assert (without_old.ok, without_old.first_bad_seq) == (False, 1)
    wrong_old = verify_chain(store, Keyring("k2", {"k1": b"w" * 32, "k2": keys["k2"]}))
    assert (wrong_old.ok, wrong_old.first_bad_seq) == (False, 1)


def test_log_critical_is_written_before_listeners_hear_of_it(
    store: Engine, keyring: Keyring
) -> None:
    heard: list[tuple[str, int, int]] = []

    def listener(event: AuditEvent, seq: int) -> None:
        with store.connect() as c:
            stored = c.execute(
                text("SELECT count(*) FROM audit_log WHERE seq = :s"), {"s": seq}
            ).scalar_one()
        heard.append((event.action, seq, stored))

    log = AuditLog(store, keyring, critical_listeners=[listener])
    log.log_batch(list(phi_events(3)))
    result = log.log_critical(
        AuditEvent(
            principal="lab", action="lab.critical_result.detected", resource_type="lab_result"
        )
    )
    assert heard == [("lab.critical_result.detected", 4, 1)]
    with store.connect() as c:
        assert (
            c.execute(
                text("SELECT severity FROM audit_log WHERE seq = :s"), {"s": result.last_seq}
            ).scalar_one()
            == Severity.CRITICAL
        )


def test_a_failing_listener_does_not_lose_the_event(store: Engine, keyring: Keyring) -> None:
    def broken(_event: AuditEvent, _seq: int) -> None:
        raise RuntimeError("pager down")

    log = AuditLog(store, keyring, critical_listeners=[broken])
    log.log_critical(
        AuditEvent(
            principal="lab", action="lab.critical_result.detected", resource_type="lab_result"
        )
    )
    assert verify_chain(store, keyring).events_checked == 1


def test_non_ascii_and_odd_values_round_trip(store: Engine, keyring: Keyring) -> None:
    event = AuditEvent(
        principal="dr. Ñúñez 医生",
        action="phi.access.read",
        resource_type="patient",
        resource_id="Zoë 😀",
        details={"note": 'line\nbreak\ttab \\ back "q"', "n": -1, "x": 1e-7, "big": 2**62},
    )
    AuditLog(store, keyring).log(event)
    assert verify_chain(store, keyring).ok


def test_cutting_the_tail_and_moving_the_head_back_needs_the_key(
    store: Engine, keyring: Keyring
) -> None:
    AuditLog(store, keyring).log_batch(list(phi_events(30)))
    with store.connect() as c:
        seq, row_hash = c.execute(text("SELECT seq, row_hash FROM audit_log WHERE seq = 27")).one()
    tamper(store, "DELETE FROM audit_log WHERE seq > 27")
    tamper(store, f"UPDATE audit_chain_head SET seq = {seq}, row_hash = '{row_hash}'")
    result = verify_chain(store, keyring)
    assert (result.ok, result.first_bad_seq) == (False, 27)
    assert "head signature mismatch" in (result.reason or "")


def test_rows_beyond_the_head_are_found(store: Engine, keyring: Keyring) -> None:
    log = AuditLog(store, keyring)
    log.log_batch(list(phi_events(5)))
    tamper(store, "UPDATE audit_chain_head SET seq = 0")  # as if the head were never moved
    assert not verify_chain(store, keyring).ok


def test_verify_while_writers_append_is_never_falsely_broken(
    store: Engine, keyring: Keyring
) -> None:
    import threading

    log = AuditLog(store, keyring)
    log.log_batch(list(phi_events(2_000)))
    stop = threading.Event()

    def writer() -> None:
        i = 10_000
        while not stop.is_set():
            log.log_batch(list(phi_events(50, start=i)))
            i += 50

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        results = [verify_chain(store, keyring) for _ in range(5)]
    finally:
        stop.set()
        thread.join()
    assert all(r.ok for r in results), [r.describe() for r in results]
    assert results[-1].events_checked > 2_000


def test_sqlite_readers_do_not_block_the_audit_writer(
    sqlite_store: Engine, keyring: Keyring
) -> None:
    import time

    log = AuditLog(sqlite_store, keyring)
    log.log_batch(list(phi_events(10)))
    with sqlite_store.connect() as reader:
        reader.execute(text("SELECT count(*) FROM audit_log")).scalar_one()  # read transaction open
        started = time.monotonic()
        log.log_batch(list(phi_events(10, start=10)))
        assert time.monotonic() - started < 5


def test_sqlite_keeps_early_years_sortable_and_verifiable(
    sqlite_store: Engine, keyring: Keyring
) -> None:
    import datetime as dt

    AuditLog(sqlite_store, keyring).log(
        AuditEvent(
            occurred_at=dt.datetime(999, 5, 1, tzinfo=dt.UTC),
            principal="p",
            action="phi.access.read",
            resource_type="patient",
        )
    )
    with sqlite_store.connect() as c:
        assert (
            c.execute(text("SELECT occurred_at FROM audit_log"))
            .scalar_one()
            .startswith("0999-05-01")
        )
    assert verify_chain(sqlite_store, keyring).ok
