"""Audit append throughput: AuditLog.log_batch vs a raw COPY of the very same rows.

Both sides write to a real audit_log (monthly partitions, indexes, append-only trigger) in two
fresh databases made by the same migration. The baseline is handed the rows exactly as custody
stored them, already chained and signed, so the ratio is the cost of everything custody adds
(canonical form, hashing, HMAC, the chain lock) on top of moving the bytes.

    python bench/audit_append.py --events 100000 --batch 10000
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Iterator

import orjson
from _common import peak_rss_mb, scratch_database
from psycopg.types.json import set_json_dumps
from sqlalchemy import text

from custody.audit import AuditEvent, AuditLog, DataClassification, Keyring, verify_chain
from custody.audit.append import COLUMNS
from custody.db import get_engine
from custody.store import upgrade

PG_TYPES = [
    "int8",
    "timestamptz",
    "timestamptz",
    "uuid",
    *["text"] * 9,
    "int4",
    "jsonb",
    *["text"] * 4,
]


def event_batches(total: int, batch: int) -> Iterator[list[AuditEvent]]:
    """Application PHI-access events, the product's high-volume case, made a batch at a time."""
    for start in range(0, total, batch):
        yield [
            AuditEvent(
                principal=f"clinician{i % 400:04d}",
                action="phi.access.read",
                resource_type="patient",
                resource_id=f"MRN{i % 50_000:07d}",
                regulation="HIPAA",
                data_classification=DataClassification.PHI,
                retention_days=2190,
                details={"workstation": f"ws-{i % 90}", "reason": "treatment", "records": i % 7},
            )
            for i in range(start, min(total, start + batch))
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000, help="events to append")
    parser.add_argument("--batch", type=int, default=10_000, help="events per log_batch call")
    args = parser.parse_args()
    keyring = Keyring("bench", {"bench": b"b" * 32})
    ours = baseline = ours_cpu = baseline_cpu = 0.0
    load_before = os.getloadavg()[0]
    with scratch_database() as ours_url, scratch_database() as raw_url:
        engine, raw_engine = get_engine(ours_url), get_engine(raw_url)
        upgrade(engine)
        upgrade(raw_engine)
        log = AuditLog(engine, keyring)
        for events in event_batches(args.events, args.batch):
            started, cpu = time.perf_counter(), time.thread_time()
            result = log.log_batch(events)
            ours += time.perf_counter() - started
            ours_cpu += time.thread_time() - cpu
            del events
            with engine.connect() as conn:
                rows = conn.exec_driver_sql(
                    f"SELECT {', '.join(COLUMNS)} FROM audit_log WHERE seq BETWEEN %s AND %s",
                    (result.first_seq, result.last_seq),
                ).all()
            raw = raw_engine.raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            started, cpu = time.perf_counter(), time.thread_time()
            with driver.cursor() as cur:
                set_json_dumps(orjson.dumps, context=cur)
                with cur.copy(
                    f"COPY audit_log ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(PG_TYPES)
                    for row in rows:
                        copy.write_row(row)
            driver.commit()
            baseline += time.perf_counter() - started
            baseline_cpu += time.thread_time() - cpu
            raw.close()
        verified = verify_chain(engine, keyring)
        assert verified.ok and verified.events_checked == args.events, verified.describe()
        with raw_engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM audit_log")).scalar() == args.events

    print(
        json.dumps(
            {
                "events": args.events,
                "batch": args.batch,
                "ours_per_s": round(args.events / ours),
                "baseline_per_s": round(args.events / baseline),
                "ratio": round(baseline / ours, 3),
                # Where the time goes: this process's CPU per event; the rest is the server.
                "ours_client_cpu_us_per_event": round(ours_cpu / args.events * 1e6, 2),
                "baseline_client_cpu_us_per_event": round(baseline_cpu / args.events * 1e6, 2),
                "peak_rss_mb": peak_rss_mb(),
                "load_avg_before": round(load_before, 2),
                "load_avg_after": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
