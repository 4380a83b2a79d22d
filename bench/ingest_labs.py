"""Lab ingestion throughput per format: custody's ingest vs parsing alone and a raw COPY.

For each format the same synthetic results (potassium, sodium, glucose, hemoglobin, INR panels)
are written as files of about 10,000 results: CSV in custody's documented columns, FHIR R4
NDJSON (one Observation per line), and HL7 v2.5.1 ORU^R01 batch files of ten OBX per message.
Ours is ``LabIngestor.ingest`` per file, the work an ingest task does: parse, check, flag
critical values (audited at once), upsert on result id, quarantine, per-result audit events,
one transaction per file, into a PostgreSQL store. The baseline parses with the same parser and
COPYs the parsed rows into a plain table: no checks, no upsert, no audit.

    python bench/ingest_labs.py --results 100000 [--formats csv,fhir,hl7v2]

``--big-file SIZE`` (e.g. 100M, 1G) instead writes one HL7 v2 batch file of that size and
ingests it the way an ingest task does (``LabIngestor.ingest_file``: parsed and landed in
bounded batches, issue 15 item 9), reporting results per second and the peak RSS of the
process; every result must land. The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson
import psycopg
from _common import peak_rss_mb, scratch_database

from custody.audit import AuditLog, Keyring
from custody.db import get_engine
from custody.labs.critical import load_rules
from custody.labs.ingest import LabIngestor, parse
from custody.labs.model import LabResult
from custody.store import upgrade

PER_FILE = 10_000
TESTS = [  # LOINC, display, unit, typical low, typical high
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.2, 5.6),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 130, 150),
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 60, 200),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 9, 17),
    ("6301-6", "INR in Platelet poor plasma by Coagulation assay", "{INR}", 0.9, 3.5),
]
START = datetime(2026, 1, 1, tzinfo=UTC)


def results(count: int, seed: int = 7) -> list[dict[str, object]]:
    """Plain dicts for the generators: one in 500 is past a critical limit."""
    rng = random.Random(seed)
    out = []
    for n in range(count):
        code, display, unit, low, high = TESTS[n % len(TESTS)]
        value = round(rng.uniform(low, high), 2)
        if n % 500 == 0 and code == "2823-3":
            value = 6.8
        collected = START + timedelta(minutes=n)
        out.append({
            "n": n, "patient": f"P{n // 50:07d}", "order": f"ACC{n // 10:08d}", "code": code,
            "display": display, "value": value, "unit": unit, "low": low, "high": high,
            "collected": collected, "resulted": collected + timedelta(hours=1),
        })  # fmt: skip
    return out


def csv_file(rows: list[dict[str, object]]) -> bytes:
    header = (
        "result_id,patient_ref,order_ref,loinc_code,display,value,unit,reference_low,"
        "reference_high,abnormal_flag,status,collected_at,resulted_at,performing_lab,technician\n"
    )
    lines = [
        f'R{r["n"]},{r["patient"]},{r["order"]},{r["code"]},"{r["display"]}",{r["value"]},'
        f"{r['unit']},{r['low']},{r['high']},,final,{r['collected'].isoformat()},"  # type: ignore[attr-defined]
        f"{r['resulted'].isoformat()},Custody Lab,T1\n"  # type: ignore[attr-defined]
        for r in rows
    ]
    return (header + "".join(lines)).encode()


def ndjson_file(rows: list[dict[str, object]]) -> bytes:
    def observation(r: dict[str, object]) -> dict[str, object]:
        return {
            "resourceType": "Observation", "id": f"R{r['n']}", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                      "observation-category", "code": "laboratory"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": r["code"],
                                 "display": r["display"]}]},
            "subject": {"reference": f"Patient/{r['patient']}"},
            "effectiveDateTime": r["collected"].isoformat(),  # type: ignore[attr-defined]
            "issued": r["resulted"].isoformat(),  # type: ignore[attr-defined]
            "valueQuantity": {"value": r["value"], "unit": r["unit"],
                              "system": "http://unitsofmeasure.org", "code": r["unit"]},
            "referenceRange": [{"low": {"value": r["low"]}, "high": {"value": r["high"]}}],
        }  # fmt: skip

    return b"\n".join(orjson.dumps(observation(r)) for r in rows) + b"\n"


def hl7_file(rows: list[dict[str, object]]) -> bytes:
    def ts(value: object) -> str:
        return value.strftime("%Y%m%d%H%M%S+0000")  # type: ignore[attr-defined]

    segments = ["FHS|^~\\&|LIS|CUSTODY LAB", "BHS|^~\\&|LIS|CUSTODY LAB"]
    for start in range(0, len(rows), 10):
        first = rows[start]
        segments += [
            f"MSH|^~\\&|LIS|CUSTODY LAB|EHR|HOSP|{ts(first['collected'])}||ORU^R01^ORU_R01|"
            f"M{first['n']}|P|2.5.1",
            f"PID|1||{first['patient']}^^^HOSP^MR||DOE^JANE||19700101|F",
            f"OBR|1|{first['order']}|{first['order']}|24323-8^Panel^LN|||{ts(first['collected'])}",
        ]
        for i, r in enumerate(rows[start : start + 10], 1):
            segments.append(
                f"OBX|{i}|NM|{r['code']}^{r['display']}^LN||{r['value']}|{r['unit']}|"
                f"{r['low']}-{r['high']}||||F|||{ts(r['collected'])}||||||{ts(r['resulted'])}"
            )
    segments += ["BTS|1", "FTS|1"]
    return ("\r".join(segments) + "\r").encode()


MAKERS = {"csv": csv_file, "fhir": ndjson_file, "hl7v2": hl7_file}

RAW_TABLE = """
CREATE TABLE raw_results (result_id text, patient_ref text, loinc_code text, value_numeric
  numeric, unit text, reference_low numeric, reference_high numeric, status text,
  collected_at timestamptz, resulted_at timestamptz, source_file text, source_position text)
"""


def raw_row(r: LabResult) -> tuple[object, ...]:
    return (
        r.result_id, r.patient_ref, r.loinc_code, r.value_numeric, r.unit, r.reference_low,
        r.reference_high, r.status.value, r.collected_at, r.resulted_at, r.source.file,
        r.source.position,
    )  # fmt: skip


def run_format(fmt: str, files: list[tuple[str, bytes]], raw_url: str, store_url: str) -> dict:
    total = 0
    started = time.perf_counter()
    for name, data in files:
        total += sum(1 for r in parse(data, name, fmt) if isinstance(r, LabResult))
    parse_s = time.perf_counter() - started
    with psycopg.connect(raw_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS raw_results")
        conn.execute(RAW_TABLE)
    started = time.perf_counter()
    for name, data in files:  # the baseline parses again: its time is parse + COPY
        records = [r for r in parse(data, name, fmt) if isinstance(r, LabResult)]
        with (
            psycopg.connect(raw_url) as conn,
            conn.cursor().copy("COPY raw_results FROM STDIN") as copy,
        ):
            for record in records:
                copy.write_row(raw_row(record))
    baseline_s = time.perf_counter() - started
    store = get_engine(store_url)
    audit = AuditLog(store, Keyring("bench", {"bench": b"b" * 32}))
    ingestor = LabIngestor(
        store, audit, load_rules("default"), principal="bench", correlation_id=None,
        zone=ZoneInfo("UTC"),
    )  # fmt: skip
    started = time.perf_counter()
    landed = critical = 0
    for name, data in files:
        report = ingestor.ingest(f"{fmt}/{name}", data, fmt)  # type: ignore[arg-type]
        assert report.status == "ingested" and report.quarantined == 0, report
        landed += report.results
        critical += report.critical
    ours_s = time.perf_counter() - started
    assert landed == total, (landed, total)
    figures = {
        "results": total, "critical": critical,
        "ours_per_s": round(total / ours_s), "parse_only_per_s": round(total / parse_s),
        "baseline_per_s": round(total / baseline_s), "ratio": round(baseline_s / ours_s, 3),
    }  # fmt: skip
    if fmt == "hl7v2":
        figures["messages_per_s"] = round(total / 10 / ours_s)
    return figures


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = text.strip().upper().removesuffix("B")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1:] in units else int(text)


def write_big_hl7(path: str, size: int) -> int:
    """Write HL7 v2 batches of 10,000 results until the file holds ``size`` bytes.

    Generated block by block, so the generator's memory does not count towards the figure.
    """
    written = total = 0
    with open(path, "wb") as out:
        while written < size:
            rows = results(PER_FILE, seed=total)
            for row in rows:
                row["n"] = int(row["n"]) + total  # type: ignore[call-overload]
                row["order"] = f"ACC{int(row['n']) // 10:09d}"  # type: ignore[call-overload]
            data = hl7_file(rows)
            out.write(data)
            written += len(data)
            total += len(rows)
    return total


def run_big_file(size: int, store_url: str, directory: str) -> dict[str, object]:
    path = os.path.join(directory, "big-batch.hl7")
    expected = write_big_hl7(path, size)
    rss_before = peak_rss_mb()
    store = get_engine(store_url)
    audit = AuditLog(store, Keyring("bench", {"bench": b"b" * 32}))
    ingestor = LabIngestor(
        store, audit, load_rules("default"), principal="bench", correlation_id=None,
        zone=ZoneInfo("UTC"),
    )  # fmt: skip
    started = time.perf_counter()
    report = ingestor.ingest_file("big-batch.hl7", path, "hl7v2")
    seconds = time.perf_counter() - started
    assert report.status == "ingested" and report.quarantined == 0, report
    assert report.results == expected, (report.results, expected)  # every result landed
    with psycopg.connect(store_url.replace("+psycopg", "")) as conn:
        stored = conn.execute("SELECT count(*) FROM lab_results").fetchone()
    assert stored is not None and stored[0] == expected
    return {
        "big_file_bytes": os.path.getsize(path), "results": expected,
        "critical": report.critical, "seconds": round(seconds, 1),
        "results_per_s": round(expected / seconds), "mb_per_s": round(size / 2**20 / seconds, 2),
        "peak_rss_mb_before_ingest": rss_before, "peak_rss_mb": peak_rss_mb(),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=int, default=100_000)
    parser.add_argument("--formats", default="csv,fhir,hl7v2")
    parser.add_argument("--big-file", type=_size, default=None, metavar="SIZE",
                        help="ingest one HL7 v2 batch file of SIZE bytes (100M, 1G)")  # fmt: skip
    args = parser.parse_args()
    if args.big_file is not None:
        with scratch_database() as store, tempfile.TemporaryDirectory() as directory:
            upgrade(get_engine(store))
            print(json.dumps(run_big_file(args.big_file, store, directory)))
        return
    rows = results(args.results)
    out: dict[str, object] = {"results": args.results}
    with scratch_database() as raw, scratch_database() as store:
        upgrade(get_engine(store))
        for fmt in args.formats.split(","):
            files = [
                (f"batch-{i // PER_FILE:04d}", MAKERS[fmt](rows[i : i + PER_FILE]))
                for i in range(0, len(rows), PER_FILE)
            ]
            out[fmt] = run_format(fmt, files, raw, store)
            print(fmt, out[fmt], flush=True)
    out["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
