"""Archival throughput: the archive-to-s3 flow vs a raw COPY -> Parquet -> upload, same run.

The source is the 13-column lab-result table of bench/migrate.py, every row past the policy's
cutoff. Ours includes everything a user gets: batch planning, COPY out, Parquet (zstd), upload
with a SHA-256 the server checks, the manifest row, reading each object back into a temporary
table and comparing count and content hash with the locked source rows, the delete, ledger,
audit and artifacts. The baseline moves the same batches with nothing else: COPY out as CSV,
Arrow, Parquet (zstd), one PUT each, no verification, no delete. Both write to a SeaweedFS
server started for the run.

The flow runs in a process of its own, as a worker runs it, and its peak RSS is that
process's: the Prefect test server and the baseline stay out of it.

    python bench/archive.py --rows 1000000 [--batch-size 100000] [--concurrency 2]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import time
from datetime import date

import psycopg
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from _common import peak_rss_mb, scratch_database
from migrate import FILL, LAB_TABLE, task_run_count

from tests.support.seaweed import seaweed_server


def raw_archive(src: str, client: object, bucket: str, batch: int, rows: int) -> float:
    """COPY each key range out as CSV, write Parquet, PUT it: no checks, no delete."""
    started = time.perf_counter()
    with psycopg.connect(src) as conn:
        for lower in range(0, rows, batch):
            buffer = io.BytesIO()
            query = (
                f"COPY (SELECT * FROM lab_results WHERE result_id > {lower} "
                f"AND result_id <= {lower + batch}) TO STDOUT (FORMAT csv)"
            )
            with conn.cursor().copy(query) as copy:
                for block in copy:
                    buffer.write(block)
            buffer.seek(0)
            table = pacsv.read_csv(
                buffer, read_options=pacsv.ReadOptions(autogenerate_column_names=True)
            )
            sink = io.BytesIO()
            pq.write_table(table, sink, compression="zstd")
            client.put_object(  # type: ignore[attr-defined]
                Bucket=bucket, Key=f"raw/{lower}.parquet", Body=sink.getvalue()
            )
    return time.perf_counter() - started


def run_flow_child(rows: int, batch_size: int, concurrency: int, profile: bool) -> None:
    """In the flow's own process: run archive-to-s3 and print its time and peak RSS."""
    if profile:
        import archive_phases

        archive_phases.install()
    from flows.archive import ArchiveParams, RetentionPolicy, archive_to_s3

    policy = RetentionPolicy(
        name="lab_results", table="lab_results", timestamp_column="collected_at",
        cutoff=date(2100, 1, 1),
    )  # fmt: skip
    started = time.perf_counter()
    state = archive_to_s3(
        ArchiveParams(database="bench_src", policies=[policy], batch_size=batch_size,
                      max_concurrency=concurrency),
        return_state=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    result = state.result()
    assert result.status == "success", result
    assert result.policies[0].rows_archived == rows, result
    phases = archive_phases.report() if profile else {}
    print(json.dumps({
        "seconds": seconds, "peak_rss_mb": peak_rss_mb(),
        "flow_run_id": str(state.state_details.flow_run_id), **phases,
    }))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="phase timeline (stderr)")
    parser.add_argument("--flow-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flow_child:
        run_flow_child(args.rows, args.batch_size, args.concurrency, args.profile)
        return
    load_before = [round(x, 2) for x in os.getloadavg()]
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with (
        scratch_database() as src,
        scratch_database() as store,
        seaweed_server() as s3,
        prefect_test_harness(server_startup_timeout=120),
    ):
        with psycopg.connect(src, autocommit=True) as conn:
            conn.execute(LAB_TABLE)
            conn.execute(FILL.format(rows=int(args.rows)))
            conn.execute("VACUUM ANALYZE lab_results")
        from custody.storage.s3 import ensure_bucket

        client = s3.client()
        for bucket in ("bench-raw", "bench-ours"):
            ensure_bucket(client, bucket, object_lock=False)
        os.environ.update({
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "CUSTODY_DATABASE_URL": store,
            "CUSTODY_HMAC_KEYS": json.dumps({"bench": "b" * 32}),
            "CUSTODY_CONNECTIONS__BENCH_SRC": src,
            "CUSTODY_OBJECT_STORE_URL": "s3://bench-ours/hospital",
            "CUSTODY_S3_ENDPOINT_URL": s3.endpoint_url,
            "CUSTODY_S3_ACCESS_KEY_ID": s3.access_key,
            "CUSTODY_S3_SECRET_ACCESS_KEY": s3.secret_key,
        })  # fmt: skip
        from custody.db import get_engine
        from custody.store import upgrade

        upgrade(get_engine(store))
        baseline = raw_archive(src, client, "bench-raw", args.batch_size, args.rows)
        child = subprocess.run(
            [sys.executable, __file__, "--flow-child", f"--rows={args.rows}",
             f"--batch-size={args.batch_size}", f"--concurrency={args.concurrency}",
             *(["--profile"] if args.profile else [])],
            check=True, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        ours = json.loads(child.stdout.strip().splitlines()[-1])
        if args.profile:
            keys = ("phase_seconds", "phase_calls", "peak_rss_mb_at", "timeline")
            profile = {k: ours.pop(k) for k in keys}
            print(json.dumps(profile, indent=1), file=sys.stderr)
        tasks = asyncio.run(task_run_count(ours["flow_run_id"]))
        with psycopg.connect(src) as conn:
            left = conn.execute("SELECT count(*) FROM lab_results").fetchone()
        assert left == (0,), f"{left} rows left in the source"

    print(json.dumps({
        "rows": args.rows,
        "batch_size": args.batch_size,
        "ours_per_s": round(args.rows / ours["seconds"]),
        "baseline_per_s": round(args.rows / baseline),
        "ratio": round(baseline / ours["seconds"], 3),
        "ours_seconds": round(ours["seconds"], 2),
        "baseline_seconds": round(baseline, 2),
        "task_runs": tasks,
        "peak_rss_mb": ours["peak_rss_mb"],
        "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
