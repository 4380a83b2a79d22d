"""Phase timeline of one archival run, for bench/archive.py --profile (bench only).

Wraps the archive's phase functions with wall-clock timers. Batches run on several threads, so
phase sums can exceed the run's wall time: they say where the work goes, the timeline says when.
"""

from __future__ import annotations

import resource
import time
from typing import Any

from _timeline import SPANS, durations, record, timed

T0 = time.perf_counter()
_rss: dict[str, float] = {}


def mark(name: str) -> None:
    """A point in the timeline."""
    now = time.perf_counter()
    record(name, now, now)


def wrap(owner: Any, attribute: str, name: str) -> None:
    """Replace ``owner.attribute`` with a timed version named ``name``."""
    setattr(owner, attribute, timed(name, getattr(owner, attribute)))


def install() -> None:
    """Time every phase of a PostgreSQL archive batch (call before the flow runs)."""
    started = time.perf_counter()
    import flows.archive  # noqa: F401

    record("import flows.archive", started, time.perf_counter())
    _rss["after imports"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    from custody.archive import manifest, work

    plan: list[tuple[Any, str, str]] = [
        (work.ArchiveRangeWork, "__call__", "batch total"),
        (work.ArchiveRangeWork, "_checked", "table checks"),
        (work, "read_arrow", "source read (COPY->Arrow)"),
        (work, "_time_range", "time range"),
        (work, "_parquet", "parquet encode"),
        (work.ArchiveRangeWork, "put_object", "PUT (sha256+upload)"),
        (manifest, "insert", "manifest insert"),
        (work.ArchiveRangeWork, "_verify_and_delete", "verify+delete total"),
        (work, "read_object", "GET+sha256+decode"),
        (work, "_load_back", "load back (COPY in + fingerprint)"),
        (work, "check_references", "reference checks"),
    ]
    import flows.archive as flow_module

    for step in (
        "check_destination", "warm_store", "describe_archive_table", "record_event",
        "prepare_archive_manifest", "plan_archive_batches", "run_chunks", "find_orphan_objects",
        "publish_result", "publish_audit_artifacts", "open_store", "_archive",
    ):  # fmt: skip
        if hasattr(flow_module, step):
            plan.append((flow_module, step, f"flow: {step}"))
    for owner, attribute, name in plan:
        if hasattr(owner, attribute):
            wrap(owner, attribute, name)


def report() -> dict[str, Any]:
    """Totals per phase and the timeline of batch spans, JSON-ready."""
    timeline = sorted(SPANS, key=lambda s: s[2])
    return {
        "phase_seconds": {k: round(sum(v), 3) for k, v in durations().items()},
        "phase_calls": {k: len(v) for k, v in durations().items()},
        "peak_rss_mb_at": {k: round(v, 1) for k, v in _rss.items()},
        "timeline": [
            (name, thread[-12:], round(start - T0, 2), round(end - T0, 2))
            for name, thread, start, end in timeline
        ],
    }
