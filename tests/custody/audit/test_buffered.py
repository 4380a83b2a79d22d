"""The buffered (group-commit) writer: order, the chain, back-pressure, nothing dropped."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from custody.audit import (
    AppendResult,
    AuditEvent,
    AuditLog,
    AuditQueueFullError,
    Keyring,
    verify_chain,
)
from custody.db import get_engine
from custody.store import upgrade
from tests.support.audit import phi_events


def count(engine: Engine) -> int:
    with engine.connect() as c:
        return int(c.execute(text("SELECT count(*) FROM audit_log")).scalar_one())


def test_events_land_in_write_order_without_waiting_for_a_timer(
    store: Engine, keyring: Keyring
) -> None:
    events = list(phi_events(250))
    batches: list[int] = []
    with AuditLog(store, keyring).buffered(
        max_events=100, on_commit=lambda batch, _: batches.append(len(batch))
    ) as writer:
        started = time.monotonic()
        for event in events[:1]:
            writer.write(event)
        writer.flush(timeout=10)
        assert count(store) == 1 and time.monotonic() - started < 2  # no flush interval
        for event in events[1:]:
            writer.write(event)
    assert sum(batches) == 250 and max(batches) <= 100  # group commit, bounded batches
    with store.connect() as c:
        stored = [r for (r,) in c.execute(text("SELECT resource_id FROM audit_log ORDER BY seq"))]
    assert stored == [e.resource_id for e in events]
    assert verify_chain(store, keyring).events_checked == 250


def test_producers_in_threads_never_fork_the_chain(pg_store: Engine, keyring: Keyring) -> None:
    with AuditLog(pg_store, keyring).buffered(max_events=50) as writer:

        def produce(start: int) -> None:
            for event in phi_events(200, start=start):
                writer.write(event)

        threads = [threading.Thread(target=produce, args=(i * 1000,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    result = verify_chain(pg_store, keyring)
    assert result.ok and result.events_checked == 600


def test_critical_events_bypass_the_queue(store: Engine, keyring: Keyring) -> None:
    log = AuditLog(store, keyring)
    seen: list[int] = []
    log.add_critical_listener(lambda event, seq: seen.append(seq))
    with log.buffered() as writer:
        writer.write(
            AuditEvent(
                principal="lab",
                action="lab.critical_result.detected",
                resource_type="lab_result",
                severity="critical",  # type: ignore[arg-type]
            )
        )
        assert count(store) == 1 and seen == [1]  # written and announced before write returned


def test_a_store_that_is_down_fills_the_queue_and_the_producer_is_told(
    tmp_path: Path, keyring: Keyring
) -> None:
    missing = get_engine(f"sqlite:///{tmp_path / 'not-migrated.db'}")
    committed: list[Sequence[AuditEvent]] = []

    def on_commit(batch: Sequence[AuditEvent], result: AppendResult) -> None:
        committed.append(batch)

    from custody.audit.buffered import BufferedAuditWriter

    writer = BufferedAuditWriter(
        AuditLog(missing, keyring), max_events=5, max_queue=20, full_wait_s=0.2,
        on_commit=on_commit,
    )  # fmt: skip
    events = list(phi_events(21))
    for event in events[:20]:
        writer.write(event)  # returns at once: nothing waits on the (missing) store
    with pytest.raises(Exception, match="no such table"):
        writer.flush(timeout=10)  # the store's own error, events kept
    started = time.monotonic()
    with pytest.raises(AuditQueueFullError, match="queue full: 20 events waiting") as refused:
        writer.write(events[20])
    assert 0.15 < time.monotonic() - started < 2  # waited for room, then refused loudly
    assert "refuses writes (OperationalError)" in str(refused.value)
    assert writer.depth == 20 and committed == []

    upgrade(missing)  # the store comes back: everything queued lands, in order
    writer.close()
    assert count(missing) == 20 and sum(len(b) for b in committed) == 20
    assert verify_chain(missing, keyring).events_checked == 20
