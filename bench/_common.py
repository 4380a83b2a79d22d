"""Helpers shared by the benchmark scripts: scratch database, peak RSS, GX import time."""

from __future__ import annotations

import contextlib
import os
import resource
import time
import uuid
from collections.abc import Iterator

import psycopg
from sqlalchemy.engine import make_url

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/custody_bench"


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """Create a fresh database next to CUSTODY_BENCH_DATABASE_URL's and drop it afterwards."""
    base = make_url(os.environ.get("CUSTODY_BENCH_DATABASE_URL", DEFAULT_URL))
    name = f"{base.database or 'custody_bench'}_{uuid.uuid4().hex[:8]}"
    admin = base.set(drivername="postgresql", database="postgres")
    admin_dsn = admin.render_as_string(hide_password=False)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        from custody.db import dispose_engines

        dispose_engines()
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def timed_import_of_great_expectations() -> float:
    """Import GX now (a one-off cost per process) and say how long it took."""
    started = time.perf_counter()
    import great_expectations  # noqa: F401

    return time.perf_counter() - started
