"""The Pagila sample database (../shared/data/postgres/pagila), loaded with psql."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SHARED = Path(os.environ.get("CUSTODY_SHARED_DIR", Path(__file__).resolve().parents[3] / "shared"))
PAGILA = SHARED / "data" / "postgres" / "pagila"


def load_pagila(url: str) -> None:
    """Load schema and data into an empty database (about 3 s)."""
    assert PAGILA.is_dir(), (
        f"Pagila sample data not found at {PAGILA}: the tests expect the project's shared/ folder "
        "beside the repository (or CUSTODY_SHARED_DIR pointing at it)"
    )
    psql = shutil.which("psql")
    assert psql, "psql is needed to load Pagila: install the PostgreSQL client"
    for name in ("pagila-schema.sql", "pagila-data.sql"):
        subprocess.run(
            [
                psql,
                "--no-psqlrc",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                url,
                "-f",
                str(PAGILA / name),
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )


def table_digests(url: str) -> dict[str, tuple[int, str]]:
    """Row count and an order-independent digest of every table, by sorted row text."""
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1"
            )
        ]
        out = {}
        for table in tables:
            count, digest = conn.execute(
                "SELECT count(*), md5(string_agg(t::text, E'\\n' ORDER BY t::text)) "
                f'FROM "{table}" t'
            ).fetchone()  # type: ignore[misc]
            out[table] = (count, digest)
        return out
