"""Spans of wrapped calls, shared by the bench profilers (archive_phases.py, migrate_phases.py).

Each span is (label, thread name, start, end) in ``time.perf_counter`` seconds. Calls run on
several threads, so the sum per label can exceed the run's wall time: the sums say where the
work goes, the spans say when.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

Span = tuple[str, str, float, float]
SPANS: list[Span] = []
_lock = threading.Lock()


def record(label: str, start: float, end: float) -> None:
    """Add one span on the calling thread."""
    with _lock:
        SPANS.append((label, threading.current_thread().name, start, end))


def timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, recording a span under ``label`` on every call."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            record(label, started, time.perf_counter())

    return wrapper


def durations() -> dict[str, list[float]]:
    """Each label's span durations, in the order they were recorded."""
    found: dict[str, list[float]] = {}
    for label, _, start, end in SPANS:
        found.setdefault(label, []).append(end - start)
    return found
