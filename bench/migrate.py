"""Migration throughput: the migrate-tables flow vs a raw streamed COPY pipe, same table, same run.

The source is a 13-column lab-result table (bigint key, numerics, text, timestamptz) filled by
the server. Ours includes everything a user gets: schema copy, per-chunk COPY, count and content
hash on both sides, primary key after the data, the GX gate, ledger and audit rows. The baseline
is ``COPY lab_results TO STDOUT (FORMAT BINARY)`` piped into ``COPY ... FROM STDIN`` of an
identical table, with nothing else.

Great Expectations is imported before the clock starts, like dlt and psycopg: its import costs
10-14 s of CPU here, once per process, and is reported on its own (``gx_import_seconds``).
With ``--peers``, dlt runs on the same table with its fastest settings measured here: the
connectorx backend, the csv loader file format (COPY into PostgreSQL), files uncompressed
(about 2x faster than with compression; more normalize workers or smaller files did not help).

    python bench/migrate.py --rows 1000000 [--chunk-size 100000] [--peers]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time

import psycopg
from _common import peak_rss_mb, scratch_database, timed_import_of_great_expectations
from sqlalchemy.engine import make_url

LAB_TABLE = """
CREATE TABLE lab_results (
    result_id bigint PRIMARY KEY, patient_id integer NOT NULL, encounter_id bigint NOT NULL,
    loinc_code varchar(10) NOT NULL, loinc_display text NOT NULL, value_numeric numeric(12,4),
    unit varchar(20) NOT NULL, ref_low numeric(12,4), ref_high numeric(12,4),
    abnormal_flag varchar(2), status varchar(12) NOT NULL, collected_at timestamptz NOT NULL,
    resulted_at timestamptz NOT NULL)
"""
FILL = """
INSERT INTO lab_results SELECT g, (g % 50000) + 1, g / 10, (ARRAY['2823-3','2951-2','2345-7',
  '718-7','6690-2'])[g % 5 + 1], 'Potassium [Moles/volume] in Serum or Plasma',
  round((3 + (g % 400) / 100.0)::numeric, 4), 'mmol/L', 3.5, 5.1,
  CASE WHEN g % 17 = 0 THEN 'H' ELSE 'N' END, 'final',
  timestamptz '2026-01-01 00:00Z' + g * interval '7 seconds',
  timestamptz '2026-01-01 02:00Z' + g * interval '7 seconds'
FROM generate_series(1, {rows}) g
"""


def raw_copy(src: str, dst: str) -> float:
    with psycopg.connect(dst, autocommit=True) as out:
        out.execute(LAB_TABLE.replace(" PRIMARY KEY", ""))
    started = time.perf_counter()
    with psycopg.connect(src) as a, psycopg.connect(dst) as b:
        with (
            a.cursor().copy("COPY lab_results TO STDOUT (FORMAT BINARY)") as reader,
            b.cursor().copy("COPY lab_results FROM STDIN (FORMAT BINARY)") as writer,
        ):
            for block in reader:
                writer.write(block)
        b.commit()
    return time.perf_counter() - started


async def task_run_count(flow_run_id: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200
        )
    return len(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-size", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--peers", action="store_true", help="also measure dlt, if installed")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    from prefect.testing.utilities import prefect_test_harness

    with (
        scratch_database() as src,
        scratch_database() as dst,
        scratch_database() as raw_dst,
        scratch_database() as store,
        prefect_test_harness(server_startup_timeout=120),
    ):
        with psycopg.connect(src, autocommit=True) as conn:
            conn.execute(LAB_TABLE)
            conn.execute(FILL.format(rows=int(args.rows)))
            conn.execute("ANALYZE lab_results")
        os.environ.update({
            "CUSTODY_DATABASE_URL": store,
            "CUSTODY_HMAC_KEYS": json.dumps({"bench": "b" * 32}),
            "CUSTODY_CONNECTIONS__BENCH_SRC": src,
            "CUSTODY_CONNECTIONS__BENCH_DST": dst,
        })  # fmt: skip
        from custody.db import get_engine
        from custody.store import upgrade
        from flows.migrate import MigrateParams, migrate_tables

        upgrade(get_engine(store))
        gx_import = timed_import_of_great_expectations()
        baseline = raw_copy(src, raw_dst)
        started = time.perf_counter()
        state = migrate_tables(
            MigrateParams(source="bench_src", target="bench_dst", tables=["lab_results"],
                          chunk_size=args.chunk_size, max_concurrency=args.concurrency),
            return_state=True,
        )  # fmt: skip
        ours = time.perf_counter() - started
        result = state.result()
        assert result.status == "success", result
        tasks = asyncio.run(task_run_count(str(state.state_details.flow_run_id)))
        rss = peak_rss_mb()  # before dlt, which runs in this process too
        peers: dict[str, object] = {}
        if args.peers:
            peers = measure_dlt(src, args.rows)
            if isinstance(dlt_seconds := peers.get("dlt_seconds"), float):
                peers["ours_vs_dlt"] = round(dlt_seconds / ours, 2)

    print(json.dumps({
        "rows": args.rows,
        "chunk_size": args.chunk_size,
        "ours_per_s": round(args.rows / ours),
        "baseline_per_s": round(args.rows / baseline),
        "ratio": round(baseline / ours, 3),
        "ours_seconds": round(ours, 2),
        "baseline_seconds": round(baseline, 2),
        "task_runs": tasks,
        "gx_import_seconds": round(gx_import, 2),
        "peak_rss_mb": rss,
        **peers,
    }))  # fmt: skip


def measure_dlt(src: str, rows: int) -> dict[str, object]:
    """dlt's sql_database source into postgres, when dlt is installed (it is not a dependency)."""
    try:
        import dlt  # type: ignore[import-not-found]
        from dlt.sources.sql_database import sql_table  # type: ignore[import-not-found]
    except ImportError:
        return {"dlt": "not installed (pip install 'dlt[postgres,sql_database]' connectorx)"}
    os.environ["DATA_WRITER__DISABLE_COMPRESSION"] = "true"
    with scratch_database() as dlt_dst, tempfile.TemporaryDirectory() as pipelines_dir:
        # dlt insists on a password; trust authentication ignores it.
        password_set = make_url(dlt_dst).set(password="unused")
        destination = dlt.destinations.postgres(password_set.render_as_string(hide_password=False))
        pipeline = dlt.pipeline(
            pipeline_name="custody_bench",
            destination=destination,
            dataset_name="bench",
            pipelines_dir=pipelines_dir,
        )
        source = sql_table(
            credentials=src, table="lab_results", backend="connectorx", chunk_size=100_000
        )
        started = time.perf_counter()
        pipeline.run(source, loader_file_format="csv")
        seconds = time.perf_counter() - started
        with psycopg.connect(dlt_dst) as conn:
            landed = conn.execute("SELECT count(*) FROM bench.lab_results").fetchone()
    assert landed is not None and landed[0] == rows, f"dlt loaded {landed} of {rows} rows"
    return {"dlt_per_s": round(rows / seconds), "dlt_seconds": round(seconds, 2)}


if __name__ == "__main__":
    main()
