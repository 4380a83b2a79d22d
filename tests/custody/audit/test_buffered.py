from __future__ import annotations

import time

from sqlalchemy import Engine, text

from custody.audit import AuditEvent, AuditLog, Keyring, verify_chain
from custody.db import get_engine
from tests.support.audit import phi_events


def count(engine: Engine) -> int:
    with engine.connect() as c:
        return int(c.execute(text("SELECT count(*) FROM audit_log")).scalar_one())


def test_flushes_by_size_and_by_age(store: Engine, keyring: Keyring) -> None:
    log = AuditLog(store, keyring)
    with log.buffered(max_events=100, max_delay_s=0.3) as writer:
        for event in phi_events(250):
            writer.write(event)
        assert count(store) == 200  # two full batches written at once
        time.sleep(1.0)
        assert count(store) == 250  # the rest by age
    assert verify_chain(store, keyring).events_checked == 250


def test_critical_events_bypass_the_buffer(store: Engine, keyring: Keyring) -> None:
    log = AuditLog(store, keyring)
    with log.buffered(max_events=1000, max_delay_s=60) as writer:
        writer.write(next(phi_events(1)))
        writer.write(
            AuditEvent(
                principal="lab",
                action="lab.critical_result.detected",
                resource_type="lab_result",
                severity="critical",
            )
        )
        assert count(store) == 1
    assert count(store) == 2


def test_a_failed_flush_keeps_its_events(tmp_path, keyring: Keyring) -> None:  # type: ignore[no-untyped-def]
    missing = get_engine(f"sqlite:///{tmp_path / 'not-migrated.db'}")
    writer = AuditLog(missing, keyring).buffered(max_events=10_000, max_delay_s=60)
    for event in phi_events(5):
        writer.write(event)
    try:
        writer.flush()
    except Exception:
        pass
    else:
        raise AssertionError("flush into a store without audit_log must fail")
    assert len(writer._pending) == 5
    from custody.store import upgrade

    upgrade(missing)
    writer.close()
    assert count(missing) == 5
