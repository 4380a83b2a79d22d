"""The buffered audit writer: group commit for high-volume producers.

Producers put events on a bounded in-memory queue and return at once; one flusher thread writes
whatever has queued as one chained COPY transaction as soon as the previous one committed. Under
load the batches grow by themselves (more arrives while a write is in flight), at low rates each
event is written almost as soon as it arrives: there is no timer to wait for, so latency is one
or two transaction times, never a flush interval.

Producers never wait on the database. When the store is down or slower than the producers for
long enough to fill the queue, :meth:`BufferedAuditWriter.write` waits briefly for room (the
back-pressure) and then raises :class:`AuditQueueFullError` naming the last write error: events
are refused loudly, never dropped silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING

from sqlalchemy import Connection

from custody.audit.events import AuditEvent, Severity, check_not_future
from custody.audit.heap import freeze_heap_once
from custody.errors import AuditChainError

if TYPE_CHECKING:
    from custody.audit.log import AppendResult, AuditLog

logger = logging.getLogger(__name__)

CommitListener = Callable[[Sequence[AuditEvent], "AppendResult"], None]
"""Called by the flusher with each committed batch, in write order (e.g. to measure latency)."""

_RETRY_FIRST_S = 0.05
_RETRY_MAX_S = 2.0


class AuditQueueFullError(AuditChainError):
    """The writer's queue is full: the store is down, or slower than the producers."""


class BufferedAuditWriter:
    """Queues events and appends them with group commit (see the module docstring).

    A failed write keeps its events at the head of the queue and is retried with backoff;
    :meth:`flush` and :meth:`close` raise while the store refuses them. Critical events bypass
    the queue: they are written and announced at once, in the caller's thread.
    """

    def __init__(
        self,
        audit_log: AuditLog,
        max_events: int = 5_000,
        max_queue: int = 50_000,
        full_wait_s: float = 1.0,
        on_commit: CommitListener | None = None,
        freeze_heap: bool = True,
    ) -> None:
        """Start the flusher.

        Args:
            audit_log: where the events go.
            max_events: the most events one transaction writes.
            max_queue: the most events held in memory waiting to be written.
            full_wait_s: how long ``write`` waits for room in a full queue before raising.
            on_commit: called after each committed batch, from the flusher thread.
            freeze_heap: freeze the process's heap out of the garbage collector's full walks,
                once per process (:mod:`custody.audit.heap`): those walks stop every thread
                for 50-190 ms and were the latency tail. Pass False if the application
                manages the collector itself.
        """
        if max_events < 1 or max_queue < max_events or full_wait_s < 0:
            raise ValueError("need max_events >= 1, max_queue >= max_events, full_wait_s >= 0")
        self._log = audit_log
        self._max_events = max_events
        self._max_queue = max_queue
        self._full_wait_s = full_wait_s
        self._on_commit = on_commit
        self._queue: deque[AuditEvent] = deque()
        self._cond = threading.Condition()
        self._enqueued = 0  # events ever queued
        self._committed = 0  # events ever committed
        self._attempts = 0  # writes tried (flush raises only for a failure after its call)
        self._error: BaseException | None = None
        self._failed_at: float | None = None
        self._closing = False
        self._connection: Connection | None = None
        if freeze_heap:
            freeze_heap_once()
        self._thread = threading.Thread(target=self._run, name="audit-flusher", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Events queued or being written, not yet committed."""
        return self._enqueued - self._committed

    @property
    def last_error(self) -> BaseException | None:
        """The error of the last failed write, until a write succeeds again."""
        return self._error

    def write(self, event: AuditEvent) -> None:
        """Queue one event; returns without touching the database (critical ones excepted).

        Raises:
            FutureEventError: the event is dated beyond the allowed clock skew (not queued).
            AuditQueueFullError: the queue stayed full for ``full_wait_s`` (not queued).
        """
        check_not_future((event,), self._log.max_clock_skew)
        if event.severity is Severity.CRITICAL:
            self._log.log_critical(event)
            return
        with self._cond:
            if self._closing:
                raise AuditChainError("the buffered audit writer is closed")
            if len(self._queue) >= self._max_queue:
                self._wait_for_room()
            self._queue.append(event)
            self._enqueued += 1
            if len(self._queue) == 1:
                self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every event queued before this call is committed.

        Raises:
            Exception: the store's error, when a write fails meanwhile (events stay queued and
                the flusher keeps retrying).
            TimeoutError: not all written within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target, attempts = self._enqueued, self._attempts
            self._cond.notify_all()  # cut a retry backoff short: try again now
            while self._committed < target:
                if self._error is not None and self._attempts > attempts:
                    raise self._error
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"{target - self._committed} audit events not yet written")
                self._cond.wait(0.1 if remaining is None else min(remaining, 0.1))

    def close(self) -> None:
        """Write what is queued and stop the flusher; raises (and keeps running) if it cannot."""
        self.flush()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    def __enter__(self) -> BufferedAuditWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _wait_for_room(self) -> None:
        """Back-pressure: called holding the lock with a full queue."""
        deadline = time.monotonic() + self._full_wait_s
        while len(self._queue) >= self._max_queue:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                error = self._error
                why = (
                    f"the store refuses writes ({type(error).__name__}) since "
                    f"{time.monotonic() - (self._failed_at or 0):.1f} s ago"
                    if error is not None
                    else "the store is slower than the producers"
                )
                raise AuditQueueFullError(
                    f"audit writer queue full: {len(self._queue)} events waiting and {why}; "
                    "this event was not queued"
                ) from error
            self._cond.wait(remaining)

    def _run(self) -> None:
        try:
            self._flush_loop()
        finally:
            if self._connection is not None:
                self._connection.close()

    def _flush_loop(self) -> None:
        retry_s = _RETRY_FIRST_S
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                n = min(len(self._queue), self._max_events)
                if n == len(self._queue):  # the usual case: take the whole queue in O(1)
                    batch, self._queue = self._queue, deque()
                else:
                    popleft = self._queue.popleft
                    batch = deque(popleft() for _ in range(n))
            try:
                result = self._append(batch)
            except Exception as exc:
                logger.warning("buffered audit write failed; will retry: %s", type(exc).__name__)
                if self._connection is not None:
                    self._connection.invalidate()  # a fresh one next time: it may be broken
                    self._connection.close()
                    self._connection = None
                with self._cond:
                    self._queue.extendleft(reversed(batch))
                    if self._error is None:
                        self._failed_at = time.monotonic()
                    self._error = exc
                    self._attempts += 1
                    self._cond.notify_all()
                    self._cond.wait(retry_s)  # flush() wakes it to retry at once
                retry_s = min(retry_s * 2, _RETRY_MAX_S)
                continue
            retry_s = _RETRY_FIRST_S
            with self._cond:
                self._attempts += 1
                self._committed += n
                self._error = self._failed_at = None
                self._cond.notify_all()
            if self._on_commit is not None:
                try:
                    self._on_commit(batch, result)
                except Exception:
                    logger.exception("buffered audit writer: on_commit listener failed")

    def _append(self, batch: Sequence[AuditEvent]) -> AppendResult:
        """One transaction on the writer's own connection.

        The connection is kept for the writer's life: no pool checkout and pre-ping per
        transaction (a round trip each, which costs most when the server is busy).
        """
        if self._connection is None:
            engine = self._log.engine.execution_options(custody_write=True)
            self._connection = engine.connect()
        with self._connection.begin():
            return self._log.append_in(self._connection, batch)
