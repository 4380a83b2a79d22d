"""Keeping CPython's full garbage collections short while the buffered writer runs.

A full (generation 2) collection walks every object the collector tracks and holds the GIL
throughout, so every thread stops: the producer's ``write()`` and the flusher's COPY alike. With
an application's heap of modules, classes and settings (~130k objects for custody and its
libraries alone, several times that under Prefect) one walk takes 50-190 ms on these 2-core
machines, and at 10,000 events/s the queued events that outlive two young collections start one
about every second. Measured (bench/audit_latency.py, 10,000 events/s): those walks were the
writer's latency tail (p99 150 ms, max 205 ms; with the heap frozen 50 ms and 70 ms).

``gc.freeze()`` moves everything alive now into a permanent generation the collector skips, so
later full collections walk only what was allocated since: a few milliseconds.
"""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_frozen = False


def freeze_heap_once() -> bool:
    """Collect garbage, then freeze what is left; only the first call in a process does it.

    Once per process, because each call costs a full collection (tens of ms at startup) and
    what matters is the long-lived heap that exists when a writer first starts: imports,
    configuration, caches. The price: a cycle among objects alive now that becomes garbage
    later is not reclaimed (``gc.unfreeze()`` gives them back to the collector).

    Returns:
        True if this call froze the heap, False if an earlier one had.
    """
    global _frozen
    with _lock:
        if _frozen:
            return False
        gc.collect()
        gc.freeze()
        _frozen = True
        return True
