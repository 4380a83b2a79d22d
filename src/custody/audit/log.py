"""AuditLog: the one way events enter the trail."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine

from custody.audit.append import append_chained, append_uniform
from custody.audit.chain import Keyring
from custody.audit.events import AuditEvent, Severity, check_not_future
from custody.db import get_engine, utc_now, write_transaction
from custody.settings import Settings, get_settings

if TYPE_CHECKING:
    from custody.audit.buffered import BufferedAuditWriter, CommitListener

logger = logging.getLogger(__name__)

DEFAULT_MAX_CLOCK_SKEW = dt.timedelta(minutes=5)
CriticalListener = Callable[[AuditEvent, int], None]
"""Called with each critical event and its sequence number once it is durably written."""


@dataclass(frozen=True)
class AppendResult:
    """Where a batch landed in the chain."""

    first_seq: int
    last_seq: int
    head_hash: str

    @property
    def count(self) -> int:
        """Number of events written."""
        return self.last_seq - self.first_seq + 1


class AuditLog:
    """Appends events to the hash-chained, signed ``audit_log`` table.

    Every call writes and commits before it returns; for very high volume use :meth:`buffered`.
    """

    def __init__(
        self,
        engine: Engine,
        keyring: Keyring,
        critical_listeners: Iterable[CriticalListener] = (),
        max_clock_skew: dt.timedelta = DEFAULT_MAX_CLOCK_SKEW,
    ) -> None:
        """Write to ``engine``'s audit_log, signing with ``keyring``'s active key.

        Events dated more than ``max_clock_skew`` ahead of this process's clock are refused.
        """
        self.engine = engine
        self.keyring = keyring
        self.max_clock_skew = max_clock_skew
        self._critical_listeners = list(critical_listeners)

    @classmethod
    def from_settings(
        cls,
        settings: Settings | None = None,
        critical_listeners: Iterable[CriticalListener] = (),
    ) -> AuditLog:
        """Build from ``CUSTODY_DATABASE_URL`` and ``CUSTODY_HMAC_KEYS``."""
        settings = settings or get_settings()
        active, keys = settings.require_hmac_keys()
        return cls(
            get_engine(settings.store_url()),
            Keyring(active, keys),
            critical_listeners,
            dt.timedelta(seconds=settings.audit_max_clock_skew_seconds),
        )

    def add_critical_listener(self, listener: CriticalListener) -> None:
        """Announce critical events somewhere else too (Prefect events, paging)."""
        self._critical_listeners.append(listener)

    def log(self, event: AuditEvent) -> AppendResult:
        """Append one event."""
        return self.log_batch([event])

    def log_batch(self, events: Sequence[AuditEvent]) -> AppendResult:
        """Append events in one transaction, in the order given.

        Raises:
            ValueError: ``events`` is empty.
        """
        if not events:
            raise ValueError("log_batch needs at least one event")
        with write_transaction(self.engine) as connection:
            result = self.append_in(connection, events)
        for offset, event in enumerate(events):
            if event.severity is Severity.CRITICAL:
                self._announce(event, result.first_seq + offset)
        return result

    def append_in(self, connection: Connection, events: Sequence[AuditEvent]) -> AppendResult:
        """Append inside the caller's transaction on this store, to commit with other writes.

        Critical listeners are not called here: the caller's transaction may still roll back.
        """
        now = utc_now()
        check_not_future(events, self.max_clock_skew, now)
        first, last, head = append_chained(connection, events, now, self.keyring)
        return AppendResult(first, last, head)

    def append_uniform_in(
        self,
        connection: Connection,
        template: AuditEvent,
        items: Sequence[tuple[str, dict[str, str]]],
    ) -> AppendResult:
        """Append one event per ``(resource_id, details)`` item, the rest taken from ``template``.

        The high-volume form of :meth:`append_in` (per-result events of an ingest): same rows,
        hashes and signatures, without a validated model object per event. Critical events go
        through :meth:`log_critical`, never through here.

        Raises:
            ValueError: ``template`` is critical, or an item would not pass :class:`AuditEvent`.
        """
        if template.severity is Severity.CRITICAL:
            raise ValueError("critical events take log_critical, not the uniform path")
        now = utc_now()
        check_not_future([template], self.max_clock_skew, now)
        first, last, head = append_uniform(connection, template, items, now, self.keyring)
        return AppendResult(first, last, head)

    def log_critical(self, event: AuditEvent) -> AppendResult:
        """Write a critical event at once (never buffered) and announce it to the listeners."""
        if event.severity is not Severity.CRITICAL:
            event = event.model_copy(update={"severity": Severity.CRITICAL})
        return self.log_batch([event])

    def buffered(
        self,
        max_events: int = 5_000,
        max_queue: int = 50_000,
        on_commit: CommitListener | None = None,
        max_delay_s: float | None = None,
        freeze_heap: bool = True,
    ) -> BufferedAuditWriter:
        """A group-commit writer for high-volume producers (:mod:`custody.audit.buffered`).

        ``max_delay_s`` is accepted for callers of the earlier timer-based writer and has no
        effect: events are written as soon as the previous write committed. ``freeze_heap``: see
        :class:`~custody.audit.buffered.BufferedAuditWriter`.
        """
        del max_delay_s
        from custody.audit.buffered import BufferedAuditWriter

        return BufferedAuditWriter(
            self,
            max_events=max_events,
            max_queue=max_queue,
            on_commit=on_commit,
            freeze_heap=freeze_heap,
        )

    def _announce(self, event: AuditEvent, seq: int) -> None:
        for listener in self._critical_listeners:
            try:
                listener(event, seq)
            except Exception:
                # The event is already durable in audit_log; a failing notifier must not undo it.
                logger.exception("critical-event listener failed for audit seq %s", seq)
