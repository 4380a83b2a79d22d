"""The GX gate over landed lab results passes on good rows and names the rule a bad row breaks."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import Engine, insert

from custody.db import utc_now
from custody.labs.tables import lab_results
from custody.quality.labs import check_lab_results

GOOD = "a" * 64
BAD = "b" * 64


def add(store: Engine, result_id: str, sha: str, **values: object) -> None:
    row = {
        "result_id": result_id, "loinc_code": "2823-3", "value_numeric": Decimal("4.1"),
        "unit": "mmol/L", "status": "final", "source_file": "f.hl7",
        "source_position": "message 1/OBR 1/OBX 1", "file_sha256": sha, "ingested_at": utc_now(),
    }  # fmt: skip
    row.update(values)
    with store.begin() as conn:
        conn.execute(insert(lab_results).values(**row))


@pytest.mark.slow
def test_the_gate_passes_good_rows_and_names_each_broken_rule(store: Engine) -> None:
    url = store.url.render_as_string(hide_password=False)
    add(store, "r1", GOOD)
    add(store, "r2", BAD, loinc_code="2823", unit=None, status="unknown")
    assert check_lab_results(url, [GOOD]).success
    bad = check_lab_results(url, [BAD])
    assert not bad.success
    assert sorted(bad.failed) == [
        "expect_column_values_to_be_in_set(numeric_without_unit)",
        "expect_column_values_to_be_in_set(status)",
        "expect_column_values_to_match_regex(loinc_code)",
    ]


def test_file_hashes_must_be_hex_digests() -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        check_lab_results("sqlite://", ["x' OR 1=1 --"])
