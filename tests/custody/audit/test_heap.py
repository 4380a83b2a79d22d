"""Freezing the heap for the buffered writer: once per process, and only when asked."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from custody.audit import AuditLog, Keyring, heap


@pytest.fixture
def thawed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process whose heap no writer has frozen yet; thawed again afterwards."""
    gc.unfreeze()
    monkeypatch.setattr(heap, "_frozen", False)
    yield
    gc.unfreeze()


@pytest.mark.usefixtures("thawed")
def test_the_heap_is_frozen_once_per_process() -> None:
    assert gc.get_freeze_count() == 0
    assert heap.freeze_heap_once() is True
    frozen = gc.get_freeze_count()
    assert frozen > 1000  # the imported modules at least
    assert heap.freeze_heap_once() is False  # no second full collection
    assert gc.get_freeze_count() == frozen


@pytest.mark.usefixtures("thawed")
def test_a_writer_freezes_the_heap_unless_told_not_to(
    sqlite_store: Engine, keyring: Keyring
) -> None:
    log = AuditLog(sqlite_store, keyring)
    with log.buffered(freeze_heap=False):
        assert gc.get_freeze_count() == 0
    with log.buffered():
        assert gc.get_freeze_count() > 1000
