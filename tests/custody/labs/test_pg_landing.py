"""PostgreSQL landing: new results are copied straight in, repeats and replacements upserted."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, text

from custody.audit import AuditLog, Keyring, verify_chain
from custody.labs.critical import load_rules
from custody.labs.ingest import IngestLimits, LabIngestor
from tests.support.env import TEST_KEYS

KEYRING = Keyring("k1", {k: v.encode() for k, v in TEST_KEYS.items()})


def _message(m: int, value: bytes, status: bytes = b"F") -> bytes:
    return (
        b"MSH|^~\\&|LIS|BIG LAB|EHR|HOSP|20261205060000-0500||ORU^R01|B-%d|P|2.5.1\r"
        b"PID|1||BL-%d^^^HOSP^MR\r"
        b"OBR|1||ACC-%d|BMP^BMP^L|||20261205055000-0500\r"
        b"OBX|1|NM|2823-3^Potassium^LN||%s|mmol/L|3.5-5.1||||%s\r" % (m, m, m, value, status)
    )


def _ingestor(store: Engine) -> LabIngestor:
    return LabIngestor(
        store, AuditLog(store, KEYRING), load_rules("default"), principal="test",
        correlation_id="run", zone=ZoneInfo("UTC"),
        limits=IngestLimits(in_memory_bytes=1024, batch_items=10),
    )  # fmt: skip


def _rows(store: Engine, sql: str) -> list[tuple[object, ...]]:
    with store.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql))]


def test_a_result_repeated_in_a_later_batch_of_the_same_file_lands_once_last_wins(
    pg_store: Engine, tmp_path: Path
) -> None:
    """Batch 1 copies straight in; batch 3 repeats message 0 (corrected): upserted, no history."""
    messages = [_message(m, b"4.2") for m in range(25)] + [_message(0, b"4.4", b"C")]
    big = tmp_path / "big.hl7"
    big.write_bytes(b"".join(messages))
    report = _ingestor(pg_store).ingest_file("big.hl7", str(big))
    assert (report.status, report.results, report.quarantined) == ("ingested", 25, 0)
    assert _rows(pg_store, "SELECT count(*) FROM lab_results") == [(25,)]
    assert _rows(
        pg_store, "SELECT value_numeric::text, status FROM lab_results WHERE order_ref = 'ACC-0'"
    ) == [("4.4", "corrected")]
    assert _rows(pg_store, "SELECT count(*) FROM lab_results_history") == [(0,)]
    assert verify_chain(pg_store, KEYRING).ok


def test_a_later_file_replacing_stored_results_keeps_history_and_moves_counts(
    pg_store: Engine, tmp_path: Path
) -> None:
    """Mutation guard for the straight-in COPY: a replacing batch must not skip the history."""
    first = tmp_path / "first.hl7"
    first.write_bytes(b"".join(_message(m, b"4.2") for m in range(30)))
    second = tmp_path / "second.hl7"
    second.write_bytes(b"".join(_message(m, b"4.6", b"C") for m in range(20, 40)))
    ingestor = _ingestor(pg_store)
    assert ingestor.ingest_file("first.hl7", str(first)).results == 30
    assert ingestor.ingest_file("second.hl7", str(second)).results == 20
    assert _rows(pg_store, "SELECT count(*) FROM lab_results") == [(40,)]
    assert _rows(pg_store, "SELECT count(*) FROM lab_results_history") == [(10,)]
    assert _rows(pg_store, "SELECT source_file, results FROM lab_files ORDER BY 1") == [
        ("first.hl7", 20), ("second.hl7", 20),
    ]  # fmt: skip
    replaced = "SELECT count(*) FROM audit_log WHERE action = 'lab.result.replaced'"
    assert _rows(pg_store, replaced) == [(10,)]
    assert verify_chain(pg_store, KEYRING).ok
