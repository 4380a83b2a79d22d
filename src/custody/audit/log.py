"""AuditLog: the one way events enter the trail."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType

from sqlalchemy import Connection, Engine

from custody.audit.append import append_chained
from custody.audit.chain import Keyring
from custody.audit.events import AuditEvent, Severity, check_not_future
from custody.db import get_engine, utc_now, write_transaction
from custody.settings import Settings, get_settings

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

    def log_critical(self, event: AuditEvent) -> AppendResult:
        """Write a critical event at once (never buffered) and announce it to the listeners."""
        if event.severity is not Severity.CRITICAL:
            event = event.model_copy(update={"severity": Severity.CRITICAL})
        return self.log_batch([event])

    def buffered(self, max_events: int = 5_000, max_delay_s: float = 1.0) -> BufferedAuditWriter:
        """A writer that batches events by size or age: for high-volume producers."""
        return BufferedAuditWriter(self, max_events=max_events, max_delay_s=max_delay_s)

    def _announce(self, event: AuditEvent, seq: int) -> None:
        for listener in self._critical_listeners:
            try:
                listener(event, seq)
            except Exception:
                # The event is already durable in audit_log; a failing notifier must not undo it.
                logger.exception("critical-event listener failed for audit seq %s", seq)


class BufferedAuditWriter:
    """Collects events and appends them in batches, by size or every ``max_delay_s`` seconds.

    A failed flush keeps its events and re-raises on the next call, so nothing is dropped
    silently. Critical events bypass the buffer: they are written at once.
    """

    def __init__(self, audit_log: AuditLog, max_events: int, max_delay_s: float) -> None:
        """Start the background flusher."""
        if max_events < 1 or max_delay_s <= 0:
            raise ValueError("max_events must be >= 1 and max_delay_s > 0")
        self._log = audit_log
        self._max_events = max_events
        self._max_delay_s = max_delay_s
        self._pending: list[AuditEvent] = []
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._closed = threading.Event()
        self._timer = threading.Thread(target=self._tick, name="audit-flusher", daemon=True)
        self._timer.start()

    def write(self, event: AuditEvent) -> None:
        """Queue one event (critical ones are written immediately).

        Raises:
            FutureEventError: the event is dated beyond the allowed clock skew (not queued).
        """
        check_not_future((event,), self._log.max_clock_skew)
        self._raise_pending_error()
        if event.severity is Severity.CRITICAL:
            self._log.log_critical(event)
            return
        with self._lock:
            self._pending.append(event)
            full = len(self._pending) >= self._max_events
        if full:
            self.flush()

    def flush(self) -> AppendResult | None:
        """Write everything queued; the events stay queued if the write fails."""
        with self._lock:
            if not self._pending:
                return None
            batch, self._pending = self._pending, []
            try:
                return self._log.log_batch(batch)
            except BaseException:
                self._pending = batch + self._pending
                raise

    def close(self) -> None:
        """Stop the flusher and write what is left."""
        self._closed.set()
        self._timer.join()
        self._raise_pending_error()
        self.flush()

    def __enter__(self) -> BufferedAuditWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _tick(self) -> None:
        while not self._closed.wait(self._max_delay_s):
            try:
                self.flush()
            except Exception as exc:  # surfaced to the producer on its next call
                logger.warning("buffered audit flush failed; will retry: %s", type(exc).__name__)
                self._error = exc

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            self.flush()  # retry now; raises again if the store is still unavailable
            logger.info("buffered audit flush recovered after %s", type(error).__name__)
