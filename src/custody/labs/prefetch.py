"""Run a producer (parsing a big file) in a thread, a few items ahead of its consumer.

The consumer lands batches in PostgreSQL; while it waits on the server (COPY, the upsert, index
maintenance) the GIL is free, and the thread parses the next batch: parsing uses one core while
the database loads on the other. The queue is bounded, so memory stays flat: at most ``depth``
batches wait. An exception in the producer is raised in the consumer at the point it reached;
a consumer that stops early (error, time limit) stops the producer too.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Generator, Iterable
from typing import TypeVar

T = TypeVar("T")

_DONE = object()


def prefetched(items: Iterable[T], depth: int = 2) -> Generator[T, None, None]:
    """Yield ``items`` as produced by a background thread, at most ``depth`` ahead.

    Raises:
        Exception: whatever producing the items raised, when the consumer reaches it.
    """
    slots: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Failed(exc))

    thread = threading.Thread(target=produce, name="custody-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()


class _Failed:
    """The producer's exception, carried through the queue."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
