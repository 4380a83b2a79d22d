"""Buffered audit writer latency at a fixed event rate, default settings.

One producer thread calls ``BufferedAuditWriter.write`` on a fixed schedule (``--rate`` events
per second for ``--duration`` seconds) against a real, freshly migrated audit_log. Latency is
measured per event from the start of its ``write()`` call to the commit of the transaction that
holds it (the writer's ``on_commit`` hook, called right after COMMIT returns). Also reported:
the largest queue depth, the longest a ``write()`` call took, peak RSS, the rate achieved and
the machine's load average (the machine may be shared).

Events are copies of 10,000 validated templates with a fresh id and time each (``model_copy``):
what an application's own validation costs is not the writer's; ``--build full`` validates
every event instead. Garbage collections during the load are reported (count of full ones, the
longest pause in any thread): a full collection stops both threads, and before the writer froze
the heap (``--no-freeze-heap`` restores that) its 50-190 ms pauses were the latency tail.

    python bench/audit_latency.py --rate 10000 --duration 10
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import statistics
import threading
import time
import uuid
from collections.abc import Sequence

from _common import peak_rss_mb, scratch_database
from audit_append import event_batches

from custody.audit import AppendResult, AuditEvent, AuditLog, Keyring, verify_chain
from custody.db import get_engine
from custody.store import upgrade


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=10_000, help="events per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load")
    parser.add_argument("--build", choices=["template", "full"], default="template")
    parser.add_argument(
        "--no-freeze-heap", action="store_true", help="the writer leaves the GC's heap alone"
    )
    args = parser.parse_args()
    keyring = Keyring("bench", {"bench": b"b" * 32})
    templates = next(event_batches(10_000, 10_000))
    total = int(args.rate * args.duration)
    write_at: list[float] = []
    latencies: list[float] = []
    load_before = os.getloadavg()

    flusher = {"transactions": 0, "cpu_s": 0.0}
    collections = {"full": 0, "max_pause_s": 0.0}
    gc_started: dict[int, float] = {}

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[threading.get_ident()] = time.perf_counter()
            return
        began = gc_started.pop(threading.get_ident(), None)
        if began is not None and started is not None:
            collections["full"] += info["generation"] == 2
            collections["max_pause_s"] = max(
                collections["max_pause_s"], time.perf_counter() - began
            )

    def on_commit(batch: Sequence[AuditEvent], result: AppendResult) -> None:
        now = time.perf_counter()
        start = len(latencies)
        latencies.extend([now - t for t in write_at[start : start + len(batch)]])
        flusher["transactions"] += 1
        flusher["cpu_s"] = time.thread_time()  # the flusher thread's own CPU so far

    with scratch_database() as url:
        engine = get_engine(url)
        upgrade(engine)
        log = AuditLog(engine, keyring)
        max_depth = 0
        max_block = 0.0
        # default settings
        writer = log.buffered(on_commit=on_commit, freeze_heap=not args.no_freeze_heap)
        gc.callbacks.append(on_gc)
        started = time.perf_counter()
        written = 0
        while written < total:
            due = min(total, int((time.perf_counter() - started) * args.rate) + 1)
            while written < due:
                template = templates[written % len(templates)]
                if args.build == "full":
                    event = AuditEvent(**template.model_dump(exclude={"event_id", "occurred_at"}))
                else:
                    event = template.model_copy(
                        update={"event_id": uuid.uuid4(), "occurred_at": dt.datetime.now(dt.UTC)}
                    )
                t0 = time.perf_counter()
                write_at.append(t0)
                writer.write(event)
                block = time.perf_counter() - t0
                max_block = max(max_block, block)
                max_depth = max(max_depth, writer.depth)
                written += 1
            next_due = started + (written + 1) / args.rate
            pause = next_due - time.perf_counter()
            if pause > 0:
                time.sleep(min(pause, 0.001))
        load_elapsed = time.perf_counter() - started
        gc.callbacks.remove(on_gc)
        writer.close()
        verified = verify_chain(engine, keyring)
        assert verified.ok and verified.events_checked == total, verified.describe()
    assert len(latencies) == total
    ordered = sorted(latencies)
    print(
        json.dumps(
            {
                "date": dt.date.today().isoformat(),
                "rate_target": args.rate,
                "rate_achieved": round(total / load_elapsed),
                "events": total,
                "build": args.build,
                "avg_ms": round(statistics.fmean(latencies) * 1000, 1),
                "p50_ms": round(_percentile(ordered, 0.50) * 1000, 1),
                "p99_ms": round(_percentile(ordered, 0.99) * 1000, 1),
                "max_ms": round(ordered[-1] * 1000, 1),
                "max_queue_depth": max_depth,
                # Where the time goes: transactions and the flusher's own CPU; the rest of its
                # time it waits on the server (COPY ingest, index upkeep, COMMIT's WAL flush).
                "transactions": flusher["transactions"],
                "avg_batch": round(total / max(1, flusher["transactions"]), 1),
                "flusher_cpu_us_per_event": round(flusher["cpu_s"] / total * 1e6, 2),
                "flusher_cpu_share": round(flusher["cpu_s"] / load_elapsed, 3),
                "max_write_block_ms": round(max_block * 1000, 2),
                "freeze_heap": not args.no_freeze_heap,
                "gc_full_collections": collections["full"],
                "gc_max_pause_ms": round(collections["max_pause_s"] * 1000, 1),
                "peak_rss_mb": peak_rss_mb(),
                "load_avg_before": round(load_before[0], 2),
                "load_avg_after": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
