"""MariaDB -> PostgreSQL throughput: migrate-tables vs pgloader vs a raw export pipe, same run.

The source is one mixed-type table (unsigned int key, varchar, datetime(3), timestamp,
decimal, tinyint(1), text with NULLs, enum) of ``--rows`` rows, filled by MariaDB itself.

- ours: the migrate-tables flow with everything a user gets: the cast rules (checked tinyint(1),
  zero-date scan), per-chunk copy with a count and content hash of both sides (the target read
  back through psycopg), indexes and identity after the data, the GX gate, ledger and audit rows.
- pgloader: Debian's package with its defaults (installed here with apt-get when missing; it is
  not a project dependency). It verifies nothing.
- raw: ``mariadb --batch`` export piped into ``psql -c "COPY ... FROM STDIN"`` of a table created
  by hand: no casts, no checks, the floor.

Prints one JSON line last. Great Expectations is imported before the clock starts (a one-off per
process, reported as ``gx_import_seconds``), as in bench/migrate.py.

    python bench/migrate_mysql.py --rows 1000000 [--chunk-size 100000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import psycopg
from _common import peak_rss_mb, scratch_database, timed_import_of_great_expectations

MYSQL_URL = os.environ.get("CUSTODY_BENCH_MYSQL_URL", "mariadb://root@127.0.0.1:3306/test")
TABLE = (
    "CREATE TABLE visits (id int unsigned NOT NULL AUTO_INCREMENT PRIMARY KEY, "
    "patient varchar(40) NOT NULL, seen datetime(3), billed timestamp NULL, "
    "amount decimal(10,2), urgent tinyint(1) NOT NULL, note text, "
    "kind enum('inpatient','outpatient','emergency'), KEY idx_patient (patient))"
)
FILL = (
    "INSERT INTO visits (id, patient, seen, billed, amount, urgent, note, kind) "
    "SELECT seq, CONCAT('patient-', seq MOD 9973), '2020-01-01' + INTERVAL seq MINUTE, "
    "'2021-01-01' + INTERVAL seq SECOND, (seq MOD 100000) / 100, seq MOD 2, "
    "IF(seq MOD 7 = 0, NULL, REPEAT('n', seq MOD 30)), "
    "ELT(1 + seq MOD 3, 'inpatient', 'outpatient', 'emergency') FROM seq_1_to_{rows}"
)
RAW_TARGET = (
    "CREATE TABLE visits (id bigint, patient varchar(40), seen timestamp(3), "
    "billed timestamptz, amount numeric(10,2), urgent smallint, note text, kind text)"
)


def _mysql(database: str = "") -> object:
    import mariadb  # type: ignore[import-not-found]
    from sqlalchemy.engine import make_url

    url = make_url(MYSQL_URL)
    return mariadb.connect(
        host=url.host or "127.0.0.1", port=url.port or 3306, user=url.username or "root",
        password=url.password or "", database=database, autocommit=True,
    )  # fmt: skip


@contextlib.contextmanager
def mysql_database(rows: int) -> Iterator[str]:
    """A scratch MariaDB database with the filled table; dropped afterwards."""
    name = f"custody_bench_{uuid.uuid4().hex[:8]}"
    conn = _mysql()
    conn.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")  # type: ignore[attr-defined]
    try:
        with _mysql(name) as c:  # type: ignore[attr-defined]
            c.cursor().execute(TABLE)
            c.cursor().execute(FILL.format(rows=int(rows)))
        yield name
    finally:
        conn.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")  # type: ignore[attr-defined]
        conn.close()  # type: ignore[attr-defined]


def pgloader_bin() -> str | None:
    """Debian's pgloader, installed now if missing (it is not a project dependency)."""
    found = shutil.which("pgloader")
    if found or os.geteuid() != 0:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "pgloader"]
    if subprocess.run(cmd, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, check=False)
        subprocess.run(cmd, env=env, capture_output=True, check=False)
    return shutil.which("pgloader")


def run_pgloader(database: str, rows: int) -> dict[str, object]:
    binary = pgloader_bin()
    if binary is None:
        return {"pgloader": "not installed (apt-get install pgloader)"}
    with scratch_database() as dst:
        started = time.perf_counter()
        done = subprocess.run(
            [binary, "--quiet", f"mysql://root@127.0.0.1:3306/{database}", dst],
            capture_output=True, check=False, timeout=3600,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        with psycopg.connect(dst) as conn:
            landed = conn.execute(f'SELECT count(*) FROM "{database}".visits').fetchone()
    assert done.returncode == 0, done.stderr[-2000:]
    assert landed is not None and landed[0] == rows, f"pgloader loaded {landed} of {rows}"
    return {"pgloader_per_s": round(rows / seconds), "pgloader_seconds": round(seconds, 2)}


def run_raw(database: str, rows: int) -> dict[str, object]:
    """``mariadb --batch`` (tab-separated, NULL as NULL, \\t \\n \\\\ escaped) into COPY."""
    with scratch_database() as dst:
        with psycopg.connect(dst, autocommit=True) as conn:
            conn.execute(RAW_TARGET)
        started = time.perf_counter()
        export = subprocess.Popen(
            ["mariadb", "--batch", "--skip-column-names", "-h", "127.0.0.1", "-u", "root",
             "--init-command=SET time_zone='+00:00'", database, "-e", "SELECT * FROM visits"],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        load = subprocess.run(
            ["psql", "-q", "-d", dst, "-c", "SET TimeZone = 'UTC'",
             "-c", "COPY visits FROM STDIN WITH (NULL 'NULL')"],
            stdin=export.stdout, capture_output=True, check=False,
        )  # fmt: skip
        export.wait()
        seconds = time.perf_counter() - started
        assert load.returncode == 0 and export.returncode == 0, load.stderr[-2000:]
        with psycopg.connect(dst) as conn:
            landed = conn.execute("SELECT count(*) FROM visits").fetchone()
    assert landed is not None and landed[0] == rows
    return {"raw_per_s": round(rows / seconds), "raw_seconds": round(seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument(
        "--task-runner", choices=["threads", "dask"], default="threads",
        help="dask: chunks in a local cluster of --concurrency processes (no shared GIL)",
    )  # fmt: skip
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from prefect.testing.utilities import prefect_test_harness

    with (
        mysql_database(args.rows) as source_db,
        scratch_database() as dst,
        scratch_database() as store,
        prefect_test_harness(server_startup_timeout=120),
    ):
        base = MYSQL_URL.rsplit("/", 1)[0]
        os.environ.update({
            "CUSTODY_DATABASE_URL": store,
            "CUSTODY_HMAC_KEYS": json.dumps({"bench": "b" * 32}),
            "CUSTODY_CONNECTIONS__BENCH_SRC": f"{base}/{source_db}",
            "CUSTODY_CONNECTIONS__BENCH_DST": dst,
            "CUSTODY_TASK_RUNNER": args.task_runner,
            "CUSTODY_DASK_WORKERS": str(args.concurrency),
        })  # fmt: skip
        from custody.db import get_engine
        from custody.store import upgrade
        from flows.migrate import MigrateParams, migrate_tables

        upgrade(get_engine(store))
        gx_import = timed_import_of_great_expectations()
        started = time.perf_counter()
        state = migrate_tables(
            MigrateParams(source="bench_src", target="bench_dst", tables=["visits"],
                          chunk_size=args.chunk_size, max_concurrency=args.concurrency),
            return_state=True,
        )  # fmt: skip
        ours = time.perf_counter() - started
        result = state.result()
        assert result.status == "success", result
        rss = peak_rss_mb()
        raw = run_raw(source_db, args.rows)
        pgloader = run_pgloader(source_db, args.rows)

    ours_per_s = round(args.rows / ours)
    print(json.dumps({
        "rows": args.rows,
        "chunk_size": args.chunk_size,
        "task_runner": args.task_runner,
        "ours_per_s": ours_per_s,
        "ours_seconds": round(ours, 2),
        "verified_chunks": sum(t.verified_now for t in result.tables),
        **raw,
        **pgloader,
        "ours_vs_pgloader": round(ours_per_s / pgloader["pgloader_per_s"], 2)  # type: ignore[operator]
        if "pgloader_per_s" in pgloader else None,
        "gx_import_seconds": round(gx_import, 2),
        "peak_rss_mb": rss,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
