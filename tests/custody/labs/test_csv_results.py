"""CSV lab results: Synthea's observations.csv, the default layout, and broken files."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from custody.labs.csv_results import (
    DEFAULT_COLUMNS,
    SYNTHEA_OBSERVATIONS,
    CsvMapping,
    parse_csv,
)
from custody.labs.model import (
    FormatMismatchError,
    LabResult,
    NotAResult,
    Rejected,
    ResultStatus,
    derived_id,
)

SHARED = Path(__file__).parents[4] / "shared" / "data"
OBSERVATIONS = SHARED / "synthea_csv" / "observations.csv"
needs_data = pytest.mark.skipif(not OBSERVATIONS.is_file(), reason="shared sample data missing")

SYNTHEA_HEADER = "DATE,PATIENT,ENCOUNTER,CATEGORY,CODE,DESCRIPTION,VALUE,UNITS,TYPE"


def parse(
    data: bytes, mapping: CsvMapping | None = None, file: str = "labs.csv"
) -> tuple[list[LabResult], list[Rejected]]:
    items = list(parse_csv(data, file, mapping))
    results = [i for i in items if isinstance(i, LabResult)]
    rejected = [i for i in items if isinstance(i, Rejected)]
    counted = [i for i in items if isinstance(i, NotAResult)]  # rows outside the lab filter
    assert len(results) + len(rejected) + len(counted) == len(items)
    return results, rejected


def synthea(*rows: str) -> bytes:
    return ("\n".join([SYNTHEA_HEADER, *rows]) + "\n").encode()


def default_csv(rows: list[dict[str, str]], columns: tuple[str, ...] = DEFAULT_COLUMNS) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


# --------------------------------------------------------------------------------------------
# Synthea


@needs_data
def test_synthea_laboratory_rows_are_the_results() -> None:
    with OBSERVATIONS.open(newline="", encoding="utf-8") as handle:
        lab_rows = [r for r in csv.DictReader(handle) if r["CATEGORY"] == "laboratory"]
    assert len(lab_rows) == 251  # SOURCES.md: 990 observations, 251 category=laboratory

    results, rejected = parse(OBSERVATIONS.read_bytes(), SYNTHEA_OBSERVATIONS, "observations.csv")
    assert rejected == []
    assert len(results) == len(lab_rows)
    assert all(r.loinc_code and re.fullmatch(r"\d{1,7}-\d", r.loinc_code) for r in results)
    assert [r.loinc_code for r in results] == [row["CODE"] for row in lab_rows]
    assert len({r.result_id for r in results}) == len(results)
    assert {r.status for r in results} == {ResultStatus.FINAL}
    numeric = [r for r in results if r.value_numeric is not None]
    assert len(numeric) == sum(row["TYPE"] == "numeric" for row in lab_rows) == 233
    assert all(r.value_text is None for r in numeric)
    assert all(r.collected_at is not None and r.collected_at.tzinfo is UTC for r in results)
    first = lab_rows[0]
    assert results[0].result_id == derived_id(
        "csv", first["PATIENT"], first["ENCOUNTER"], first["CODE"], first["DATE"]
    )
    assert results[0].source.position == "line 72"


def test_synthea_row_fields() -> None:
    results, _ = parse(
        synthea(
            "2023-10-10T04:17:47Z,P1,E1,laboratory,2339-0,Glucose,95.0,mg/dL,numeric",
            "2023-10-10T04:17:47Z,P1,E1,vital-signs,8302-2,Body Height,127.9,cm,numeric",
            "2023-10-10T04:17:47Z,P1,E1,laboratory,5778-6,Color of Urine,Yellow,,text",
        ),
        SYNTHEA_OBSERVATIONS,
    )
    glucose, colour = results  # the vital sign is filtered out, not rejected
    assert (glucose.loinc_code, glucose.code, glucose.code_system) == (
        "2339-0",
        "2339-0",
        "http://loinc.org",
    )
    assert (glucose.value_numeric, glucose.unit, glucose.display) == (
        Decimal("95.0"),
        "mg/dL",
        "Glucose",
    )
    assert str(glucose.value_numeric) == "95.0"
    assert glucose.patient_ref == "P1" and glucose.order_ref is None
    assert glucose.collected_at == datetime(2023, 10, 10, 4, 17, 47, tzinfo=UTC)
    assert (colour.value_text, colour.value_numeric, colour.unit) == ("Yellow", None, None)
    assert [r.source.position for r in results] == ["line 2", "line 4"]


def test_synthea_duplicate_rows_get_occurrence_numbered_ids() -> None:
    row = "2023-10-10T04:17:47Z,P1,E1,laboratory,2339-0,Glucose,95,mg/dL,numeric"
    results, _ = parse(synthea(row, row, row), SYNTHEA_OBSERVATIONS)
    key = ("P1", "E1", "2339-0", "2023-10-10T04:17:47Z")
    assert [r.result_id for r in results] == [
        derived_id("csv", *key),
        derived_id("csv", *key, "1"),
        derived_id("csv", *key, "2"),
    ]


def test_synthea_bad_rows_are_rejected_by_line_and_the_rest_land() -> None:
    results, rejected = parse(
        synthea(
            "2023-10-10T04:17:47Z,P1,E1,laboratory,2339-0,Glucose,95,mg/dL,numeric",
            "2023-10-10T04:17:47Z,P1,E1,laboratory,2339-0,Glucose,high,mg/dL,numeric",
            "yesterday,P1,E1,laboratory,2339-0,Glucose,95,mg/dL,numeric",
            "2023-10-10T04:17:47Z,P1,E1,laboratory,2339-0,Glucose,95,mg/dL",
            '2023-10-10T04:17:47Z,P1,E1,laboratory,2339-0,"Glucose\nsecond line",96,mg/dL,numeric',
            "2023-10-10T04:17:47Z,P1,E1,laboratory,2339-0,Glucose,97,mg/dL,numeric,extra",
            "2023-10-11T04:17:47Z,P1,E2,laboratory,2339-0,Glucose,98,mg/dL,numeric",
        ),
        SYNTHEA_OBSERVATIONS,
    )
    assert [r.value_numeric for r in results] == [95, 96, 98]
    assert [r.source.position for r in results] == ["line 2", "line 6", "line 9"]
    assert [r.reason for r in rejected] == [
        "line 3: value (VALUE) is not a number although the row says numeric",
        "line 4: collected_at (DATE) is not an ISO 8601 date/time",
        "line 5: 8 fields where the header has 9",
        "line 8: 10 fields where the header has 9",
    ]
    assert all("high" not in r.reason and "yesterday" not in r.reason for r in rejected)


# --------------------------------------------------------------------------------------------
# The default layout


def test_default_layout_round_trip() -> None:
    rows = [
        {
            "result_id": "R-1",
            "patient_ref": "MRN-1",
            "order_ref": "ACC-1",
            "loinc_code": "2823-3",
            "display": "Potassium",
            "value": "6.80",
            "unit": "mmol/L",
            "reference_low": "3.5",
            "reference_high": "5.1",
            "abnormal_flag": "HH",
            "status": "final",
            "collected_at": "2026-11-23T10:00:00-05:00",
            "resulted_at": "2026-11-23T10:15:00-05:00",
            "performing_lab": "Main Lab",
            "technician": "T. Ech",
        },
        {
            "result_id": "R-2",
            "patient_ref": "MRN-1",
            "loinc_code": "1988-5",
            "value": "<5",
            "unit": "mg/L",
            "status": "P",
            "collected_at": "2026-11-23",
        },
        {
            "patient_ref": "MRN-2",
            "loinc_code": "5778-6",
            "value": "yellow",
            "status": "C",
            "collected_at": "2026-11-23T10:00:00",
        },
    ]
    (potassium, crp, colour), rejected = parse(default_csv(rows))
    assert rejected == []
    minus_five = timezone(timedelta(hours=-5))
    assert potassium.model_dump(exclude={"source", "sender", "time_zone_source"}) == {
        "result_id": "csv:R-1",
        "patient_ref": "MRN-1",
        "order_ref": "ACC-1",
        "code": "2823-3",
        "code_system": "http://loinc.org",
        "loinc_code": "2823-3",
        "display": "Potassium",
        "value_numeric": Decimal("6.80"),
        "comparator": None,
        "value_text": None,
        "unit": "mmol/L",
        "reference_low": Decimal("3.5"),
        "reference_high": Decimal("5.1"),
        "reference_text": None,
        "abnormal_flag": "HH",
        "status": ResultStatus.FINAL,
        "collected_at": datetime(2026, 11, 23, 10, tzinfo=minus_five),
        "resulted_at": datetime(2026, 11, 23, 10, 15, tzinfo=minus_five),
        "performing_lab": "Main Lab",
        "technician": "T. Ech",
    }
    assert str(potassium.value_numeric) == "6.80"
    assert (crp.comparator, crp.value_numeric, crp.status) == (
        "<",
        Decimal(5),
        ResultStatus.PRELIMINARY,
    )
    assert crp.collected_at == datetime(2026, 11, 23)
    assert (colour.value_text, colour.status) == ("yellow", ResultStatus.CORRECTED)
    assert colour.result_id == derived_id("csv", "MRN-2", "", "5778-6", "2026-11-23T10:00:00")
    assert colour.source.position == "line 4"


def test_default_layout_needs_only_its_core_columns() -> None:
    core = ("patient_ref", "loinc_code", "value", "collected_at")
    data = default_csv(
        [{"patient_ref": "P", "loinc_code": "2345-7", "value": "5", "collected_at": "2026-01-01"}],
        core,
    )
    (result,), _ = parse(data)
    assert result.status is ResultStatus.UNKNOWN  # no status column: validation decides
    assert result.unit is None


def test_default_layout_bad_cells() -> None:
    good = {"patient_ref": "P", "loinc_code": "2345-7", "value": "5", "collected_at": "2026-01-01"}
    rows = [
        good,
        {**good, "reference_low": "low"},
        {**good, "reference_high": "<5"},
        {**good, "status": "done"},
        {**good, "resulted_at": "23/11/2026"},
        good,
    ]
    results, rejected = parse(default_csv(rows))
    assert len(results) == 2
    assert [r.reason for r in rejected] == [
        "line 3: reference_low is not a number",
        "line 4: reference_high is not a number",
        "line 5: status is not a FHIR or HL7 v2 result status",
        "line 6: resulted_at is not an ISO 8601 date/time",
    ]


def test_a_row_the_csv_module_cannot_read_is_rejected_and_reading_goes_on() -> None:
    header = b"patient_ref,loinc_code,value,collected_at\n"
    huge = b"P,2345-7," + b"9" * 200_000 + b",2026-01-01\n"  # past csv.field_size_limit()
    data = header + b"P,2345-7,5,2026-01-01\n" + huge + b"P,2345-7,6,2026-01-02\n"
    results, (rejected,) = parse(data)
    assert [r.value_numeric for r in results] == [5, 6]
    assert rejected.reason.startswith("line 3: malformed CSV: field larger than field limit")


def test_bom_crlf_and_blank_lines() -> None:
    data = b"\xef\xbb\xbf" + (
        b"patient_ref,loinc_code,value,collected_at\r\n\r\nP,2345-7,5,2026-01-01\r\n\r\n"
    )
    (result,), rejected = parse(data)
    assert rejected == [] and result.source.position == "line 3"


def test_a_mapping_naming_an_unknown_field_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="valu"):
        CsvMapping(columns={"valu": "VALUE"})


# --------------------------------------------------------------------------------------------
# Files that are not lab CSV at all


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b"\r\n \n", "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        ("patient_ref,loinc_code,value,collected_at\nJosé,1,2,3\n".encode("latin-1"), "UTF-8"),
        (b"MSH|^~\\&|LAB|HOSP\rPID|1||123\rOBX|1|NM|2345-7^Glucose^LN||5\r", "missing columns"),
        (b'{"resourceType": "Observation"}', "missing columns"),
        (b"patient_ref,loinc_code\nP,2345-7\n", "collected_at, value"),
    ],
)
def test_a_file_that_is_not_lab_csv_is_refused_whole(data: bytes, words: str) -> None:
    with pytest.raises(FormatMismatchError, match=words):
        parse_csv(data, "labs.csv")


@needs_data
def test_another_synthea_table_is_not_observations() -> None:
    patients = (SHARED / "synthea_csv" / "patients.csv").read_bytes()
    with pytest.raises(FormatMismatchError, match="CATEGORY, CODE"):
        parse_csv(patients, "patients.csv", SYNTHEA_OBSERVATIONS)


def test_a_default_layout_file_is_not_synthea() -> None:
    data = default_csv([{"patient_ref": "P"}])
    with pytest.raises(FormatMismatchError, match="missing columns CATEGORY"):
        parse_csv(data, "labs.csv", SYNTHEA_OBSERVATIONS)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 400))
def test_damaged_csv_gives_only_results_rejections_or_a_format_error(
    noise: bytes, where: int
) -> None:
    original = synthea(
        "2023-10-10T04:17:47Z,P1,E1,laboratory,2339-0,Glucose,95,mg/dL,numeric",
        "2023-10-11T04:17:47Z,P1,E2,laboratory,5778-6,Color,Yellow,,text",
    )
    data = original[:where] + noise + original[where:]
    try:
        items = list(parse_csv(data, "x.csv", SYNTHEA_OBSERVATIONS))
    except FormatMismatchError:
        return
    assert all(isinstance(i, LabResult | Rejected | NotAResult) for i in items)
