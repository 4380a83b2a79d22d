"""Lab ingestion, two versions of custody interleaved file by file: a fair A/B on a busy machine.

On a shared 2-core machine the load changes by the minute, so two benches run one after the
other do not compare. Here two worker processes (``--base-src``: another checkout's ``src``, and
this checkout) each ingest the same 10,000-result files into their own scratch database, taking
turns file by file (the order alternates), and the time each spends in ``LabIngestor.ingest`` is
summed. The last line printed is JSON.

    python bench/ingest_labs_ab.py --base-src ../main/src --results 200000 [--formats csv,hl7v2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any


def worker(results: int) -> None:
    """Ingest ``fmt i`` requests from stdin; print seconds and peak RSS per file."""
    from zoneinfo import ZoneInfo

    from _common import peak_rss_mb, scratch_database
    from ingest_labs import MAKERS, PER_FILE
    from ingest_labs import results as make_results

    from custody.audit import AuditLog, Keyring
    from custody.db import get_engine
    from custody.labs.critical import load_rules
    from custody.labs.ingest import LabIngestor
    from custody.store import upgrade

    rows = make_results(results)
    with scratch_database() as url:
        upgrade(get_engine(url))
        store = get_engine(url)
        ingestor = LabIngestor(
            store, AuditLog(store, Keyring("bench", {"bench": b"b" * 32})),
            load_rules("default"), principal="bench", correlation_id=None, zone=ZoneInfo("UTC"),
        )  # fmt: skip
        files: dict[str, list[bytes]] = {}
        print("ready", flush=True)
        for line in sys.stdin:
            fmt, index = line.split()
            if fmt not in files:
                files[fmt] = [
                    MAKERS[fmt](rows[i : i + PER_FILE]) for i in range(0, results, PER_FILE)
                ]
            started = time.perf_counter()
            report = ingestor.ingest(f"{fmt}/batch-{index}", files[fmt][int(index)], fmt)  # type: ignore[arg-type]
            seconds = time.perf_counter() - started
            assert report.status == "ingested" and report.results == PER_FILE, report
            print(f"{seconds:.4f} {peak_rss_mb()}", flush=True)


def _start(results: int, src: str | None) -> subprocess.Popen[str]:
    env = dict(os.environ)
    if src is not None:  # put the other checkout's package first on the path
        env["PYTHONPATH"] = str(Path(src).resolve())
    process = subprocess.Popen(
        [sys.executable, __file__, "--worker", "--results", str(results)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


def _ask(process: subprocess.Popen[str], request: str) -> tuple[float, float]:
    stdin: IO[str] | None = process.stdin
    assert stdin is not None and process.stdout is not None
    stdin.write(request + "\n")
    stdin.flush()
    seconds, rss = process.stdout.readline().split()
    return float(seconds), float(rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-src", help="the other checkout's src directory")
    parser.add_argument("--results", type=int, default=200_000)
    parser.add_argument("--formats", default="csv,fhir,hl7v2")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.results)
        return
    workers = {"base": _start(args.results, args.base_src), "this": _start(args.results, None)}
    out: dict[str, Any] = {"results": args.results, "load_before": os.getloadavg()}
    for fmt in args.formats.split(","):
        spent = dict.fromkeys(workers, 0.0)
        rss: dict[str, float] = {}
        for i in range(args.results // 10_000):
            for name in list(workers) if i % 2 == 0 else list(reversed(workers)):
                seconds, rss[name] = _ask(workers[name], f"{fmt} {i}")
                spent[name] += seconds
        out[fmt] = {f"{k}_per_s": round(args.results / v) for k, v in spent.items()} | {
            "speedup": round(spent["base"] / spent["this"], 2), "peak_rss_mb": rss,
            "load": os.getloadavg(),
        }  # fmt: skip
        print(fmt, out[fmt], flush=True)
    for process in workers.values():
        assert process.stdin is not None
        process.stdin.close()
        process.wait()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
