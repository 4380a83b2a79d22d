"""Issue 15 item 10: a file another run has claimed is skipped, then landed once."""

from __future__ import annotations

import hashlib
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, text

from custody.audit import AuditLog, Keyring
from custody.labs.claims import claim, claim_key
from custody.labs.critical import load_rules
from custody.labs.ingest import LabIngestor
from tests.support.env import TEST_KEYS

KEYRING = Keyring("k1", {k: v.encode() for k, v in TEST_KEYS.items()})
FILE = (
    b"MSH|^~\\&|LIS|EAST LAB|EHR|HOSP|20261204070000-0500||ORU^R01|CL-1|P|2.5.1\r"
    b"PID|1||EL-1^^^HOSP^MR\r"
    b"OBR|1||ACC-CL1|2345-7^Glucose^LN|||20261204065000-0500\r"
    b"OBX|1|NM|2345-7^Glucose^LN||95|mg/dL|70-99|N|||F\r"
)


def test_issue_15_item_10_a_claimed_file_is_skipped_then_landed_once(pg_store: Engine) -> None:
    labs = LabIngestor(
        pg_store, AuditLog(pg_store, KEYRING), load_rules("default"), principal="test",
        correlation_id=None, zone=ZoneInfo("UTC"),
    )  # fmt: skip
    digest = hashlib.sha256(FILE).hexdigest()
    with claim(pg_store, digest) as mine:  # another run holds the file
        assert mine
        other = labs.ingest("east.hl7", FILE)
        assert (other.status, other.results) == ("claimed", 0)
        with pg_store.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM lab_files")).scalar() == 0
    first = labs.ingest("east.hl7", FILE)  # released: this run takes and lands it
    again = labs.ingest("east.hl7", FILE)
    assert (first.status, first.results, again.status) == ("ingested", 1, "skipped")
    with pg_store.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM lab_results")).scalar() == 1
        held = conn.execute(
            text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :o"),
            {"o": claim_key(digest) & 0xFFFFFFFF},
        ).scalar()
    assert held == 0  # every claim was released


def test_claim_keys_are_signed_64_bit_and_distinct() -> None:
    a, b = hashlib.sha256(b"a").hexdigest(), hashlib.sha256(b"b").hexdigest()
    assert claim_key(a) != claim_key(b)
    assert all(-(1 << 63) <= k < (1 << 63) for k in (claim_key(a), claim_key(b)))
