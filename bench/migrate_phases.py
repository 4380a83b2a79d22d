"""Where a migration's wall seconds go: bench/migrate.py's run with a timeline of its phases.

Wraps the flow's steps (task bodies) and each chunk's parts (the COPY pipe, both fingerprints,
ledger writes) with timers, runs ``bench/migrate.py`` with the same arguments, then prints each
timed span (start and end in seconds since the flow was called, duration, thread) and the sum
per phase to stderr; migrate.py's JSON line stays on stdout.

    python bench/migrate_phases.py --rows 1000000
"""

from __future__ import annotations

import sys
import time
from typing import Any

from _timeline import SPANS, durations, timed

CALLED: list[float] = []


def instrument() -> None:
    """Wrap the flow, its task bodies and the chunk parts (before migrate.py imports them)."""
    import flows.migrate as flow_module
    import tasks.migration as migration_tasks
    from custody.chunks import ledger
    from custody.migration import pgcopy

    pgcopy._pipe = timed("chunk: copy pipe", pgcopy._pipe)
    pgcopy.table_fingerprint = timed("chunk: fingerprint", pgcopy.table_fingerprint)
    for owner, name, label in (
        (pgcopy.PgRangeCopy, "__call__", "chunk: whole"),
        (ledger.Ledger, "start", "chunk: ledger start"),
        (ledger.Ledger, "finish", "chunk: ledger finish"),
    ):
        setattr(owner, name, timed(label, getattr(owner, name)))
    for name in (
        "describe_source_tables",
        "check_target_columns",
        "prepare_target_schema",
        "plan_table_ranges",
        "plan_migration",
        "finalize_target_schema",
        "check_target_table",
    ):
        task = getattr(migration_tasks, name, None)  # older versions lack some
        if task is not None:
            task.fn = timed(f"task: {name}", task.fn)
    flow = flow_module.migrate_tables  # its body is not wrapped: Prefect reads its signature

    def called(*args: Any, **kwargs: Any) -> Any:
        from custody.settings import reset_settings_cache
        from tasks.runtime import reset_runtime

        reset_settings_cache()  # migrate.py sets the environment after these imports
        reset_runtime()
        CALLED.append(time.perf_counter())
        return timed("flow: call", flow)(*args, **kwargs)

    flow_module.migrate_tables = called  # type: ignore[assignment]  # migrate.py imports it


def report() -> None:
    """Print the spans and the sum per phase to stderr."""
    if not CALLED:
        return
    zero = CALLED[0]
    for label, thread, start, end in sorted(SPANS, key=lambda s: s[2]):
        span = f"{start - zero:8.3f} {end - zero:8.3f} {end - start:7.3f}"
        print(f"{span}  {label:36s} {thread}", file=sys.stderr)
    for label, spans in sorted(durations().items(), key=lambda item: -sum(item[1])):
        print(f"sum {label:36s} n={len(spans):3d} {sum(spans):8.3f} s", file=sys.stderr)


if __name__ == "__main__":
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    instrument()
    import migrate

    try:
        migrate.main()
    finally:
        report()
