"""Tests for the HL7 v2 ORU parser: public sample files, malformed input and fuzzed mutations."""

from __future__ import annotations

import contextlib
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custody.labs import hl7v2
from custody.labs.hl7v2 import parse_hl7
from custody.labs.model import FormatMismatchError, LabResult, Rejected, ResultStatus

DATA_DIR = Path(__file__).parents[4] / "shared" / "data" / "hl7v2"
needs_samples = pytest.mark.skipif(
    not DATA_DIR.is_dir(), reason=f"public HL7 samples not present at {DATA_DIR}"
)

# OBX segments per sample file, counted independently of the parser: each file split on CR and
# LF, counting the lines that start with "OBX|" (after a BOM / MLLP start byte), cross-checked
# with `tr '\r' '\n' < FILE | grep -c '^OBX|'`.
EXPECTED_OBX = {
    "cdc-data-exchange-hl7/2.3.1 HL7 Test File with HHS Data.txt": 8,
    "cdc-data-exchange-hl7/InterPartner~CELR~TX~AIMSPlatform~Prod~Prod~202104050123~STOP~ATVersion231.txt": 12,  # noqa: E501
    "cdc-data-exchange-hl7/InterPartner~CELR~TX~AIMSPlatform~Prod~Prod~202104050128~STOP~ATVersion23.txt": 1,  # noqa: E501
    "cdc-data-exchange-hl7/WI v231.txt": 1,
    "cdc-data-exchange-hl7/exampleConcatNotes.txt": 22,
    "cdc-prime-reportstream/CE-20200415-0001.hl7": 3,
    "cdc-prime-reportstream/FLFHospital-SARSCOV2-20200317-0001.hl7": 1,
    "cdc-prime-reportstream/ORU_deidentified.hl7": 4,
    "cdc-prime-reportstream/batch_message.hl7": 10,
    "cdc-prime-reportstream/elims_29_5065302_35227_NoPII_CANCELED.hl7": 17,
    "cdc-prime-reportstream/elims_2_72_3029198209_5121_NoPII.hl7": 10,
    "cdc-prime-reportstream/etor_ORU_20240220.hl7": 11,
    "cdc-prime-reportstream/hci.hl7": 4,
    "cdc-prime-reportstream/monkeypox-20221110.hl7": 1,
    "cdc-prime-reportstream/sample_oru_20241015-001.hl7": 149,
    "cdc-prime-reportstream/sample_oru_CDPH_NBS_20241021-001.hl7": 18,
    "cdc-prime-reportstream/test-0001-input-covid-19.hl7": 200,
    "cdc-prime-reportstream/valid_hl7.hl7": 26,
    "cdc-prime-reportstream/valid_mars.hl7": 4,
    "linuxforhealth-hl7v2-fhir-converter/ORU-multiline-short-mixed.hl7": 4,
    "microsoft-FHIR-Converter/LAB-ORU-1.hl7": 10,
    "microsoft-FHIR-Converter/LAB-ORU-2.hl7": 10,
    "microsoft-FHIR-Converter/LRI_2.0-NG_CBC_Typ_Message.hl7": 28,
    "microsoft-FHIR-Converter/ORU-R01-01.hl7": 5,
    "microsoft-FHIR-Converter/ORU-R01-RMGEAD.hl7": 1,
    "ruby-hl7/ORU_R01_2.5.1_SampleTestCase1.er7": 1,
    "ruby-hl7/ORU_R01_2.5.1_SampleTestCase2.er7": 1,
    "ruby-hl7/ORU_R01_2.5.1_SampleTestCase3.er7": 1,
    "ruby-hl7/ORU_R01_2.5.1_SampleTestCase4.er7": 1,
    "ruby-hl7/ORU_R01_2.5.1_SampleTestCase5.er7": 1,
    "ruby-hl7/ORU_R01_2.5.1_SampleTestCase6.er7": 3,
    "ruby-hl7/cerner_bordetella.hl7": 1,
    "ruby-hl7/cerner_lead.hl7": 1,
    "ruby-hl7/empty_segments.hl7": 2,
    "ruby-hl7/obxobr.hl7": 9,
    "ruby-hl7/realm-animal-rabies.hl7": 1,
    "ruby-hl7/realm-batch.hl7": 3,
    "ruby-hl7/realm-cj-joeslab.hl7": 2,
    "ruby-hl7/realm-hepatitis-c-virus.hl7": 3,
    "ruby-hl7/realm-lead-laboratory-result.hl7": 1,
    "ruby-hl7/realm-minimal-message.hl7": 1,
}

# Rejections per file, each one read off the file by hand; every other file: 0.
EXPECTED_REJECTED = {
    # Issue 16 item 6: OBR-7 and OBR-22 are the de-identification placeholder 'DATE!' and the
    # OBX have no OBX-14/OBX-19 of their own: a time present but unreadable quarantines the
    # results it dates (these were stored undated before).
    "cdc-prime-reportstream/ORU_deidentified.hl7": 4,
    # Issue 16 item 5: an empty OBX-5 with status F or C (stored as final before).
    "cdc-prime-reportstream/sample_oru_20241015-001.hl7": 1,
    "cdc-prime-reportstream/valid_hl7.hl7": 3,
    # OBX 4 of OBR 2 and of OBR 3 (the panel is sent twice) has OBX-14 '220241021055726'.
    "cdc-prime-reportstream/sample_oru_CDPH_NBS_20241021-001.hl7": 2,
    # OBX 2-4 are narrative continuation lines with an empty OBX-3; OBX 1's OBX-5 is empty
    # with status F (issue 16 item 5).
    "linuxforhealth-hl7v2-fhir-converter/ORU-multiline-short-mixed.hl7": 4,
    # The ED OBX before the first OBR has an empty OBX-3.
    "microsoft-FHIR-Converter/ORU-R01-01.hl7": 1,
    # OBX 1 has two extra empty fields after OBX-4: value in OBX-7, status in OBX-13.
    "ruby-hl7/realm-hepatitis-c-virus.hl7": 1,
}


def sample(name: str) -> bytes:
    return next(DATA_DIR.rglob(name)).read_bytes()


def parse(data: bytes, file: str = "test.hl7") -> tuple[list[LabResult], list[Rejected]]:
    items = list(parse_hl7(data, file))
    results = [i for i in items if isinstance(i, LabResult)]
    rejected = [i for i in items if isinstance(i, Rejected)]
    assert len(results) + len(rejected) == len(items)
    return results, rejected


def by_code(results: list[LabResult], code: str) -> LabResult:
    (found,) = [r for r in results if r.code == code]
    return found


def hl7(*segments: str) -> bytes:
    return ("\r".join(segments) + "\r").encode()


MSH = (
    "MSH|^~\\&|LAB|FAC^11D0000001^CLIA|RCV|RCVFAC|20240101120000-0500||ORU^R01^ORU_R01|{id}|P|2.5.1"
)
PID = "PID|1||PAT1^^^HOSP&1.2.840.1&ISO^MR||DOE^JANE||19800101|F"
OBR = (
    "OBR|1|PL1^EHR|FI1^LAB|24323-8^CMP^LN|||20240101083000-0500|||||||||||||||"
    "20240101110000-0500|||F"
)
OBX_K = "OBX|1|NM|2823-3^Potassium^LN||4.2|mmol/L^mmol/L^UCUM|3.5-5.1|N|||F|||20240101083000-0500"
OBX_NA = "OBX|2|NM|2951-2^Sodium^LN||150|mmol/L^mmol/L^UCUM|136 - 145|H|||F|||20240101083000-0500"


def oru(control_id: str = "CTRL1", *obx: str) -> list[str]:
    return [MSH.format(id=control_id), PID, OBR, *(obx or (OBX_K, OBX_NA))]


# --- the public samples --------------------------------------------------------------------


@needs_samples
def test_expected_counts_cover_every_sample_file() -> None:
    on_disk = {
        str(p.relative_to(DATA_DIR))
        for p in DATA_DIR.rglob("*")
        if p.is_file() and not p.name.startswith("LICENSE")
    }
    assert on_disk == set(EXPECTED_OBX)


@needs_samples
@pytest.mark.parametrize("name", sorted(EXPECTED_OBX))
def test_every_obx_of_every_sample_is_a_result_or_a_rejection(name: str) -> None:
    data = (DATA_DIR / name).read_bytes()
    segments = re.split(rb"[\r\n]", data)
    assert (
        sum(s.lstrip(b"\xef\xbb\xbf\x0b").startswith(b"OBX|") for s in segments)
        == (EXPECTED_OBX[name])
    )

    results, rejected = parse(data, name)

    assert len(results) + len(rejected) == EXPECTED_OBX[name]
    assert len(rejected) == EXPECTED_REJECTED.get(name, 0), [r.reason for r in rejected]
    assert not [r for r in rejected if "internal" in r.reason]
    assert all(r.source.file == name and r.source.message_id for r in results)
    assert len({r.source.position for r in results}) == len(results)


@needs_samples
def test_glucose_structured_numeric_units_range_and_flag() -> None:
    (glucose,), rejected = parse(sample("ORU-R01-RMGEAD.hl7"))

    assert not rejected
    assert glucose.code == "1554-5"
    assert glucose.display == "GLUCOSE"
    assert glucose.value_numeric == Decimal(182)
    assert glucose.comparator is None
    assert glucose.unit == "mg/dl"
    assert (glucose.reference_low, glucose.reference_high) == (Decimal(70), Decimal(105))
    assert glucose.reference_text == "70_105"
    assert glucose.abnormal_flag == "H"
    assert glucose.status is ResultStatus.FINAL
    assert glucose.order_ref == "1045813"
    assert glucose.source.message_id == "CNTRL-3456"
    assert glucose.source.position == "message 1/OBR 1/OBX 1"
    # No OBX-14: the OBR-7 observation time stands in, with its +0600 offset.
    assert glucose.collected_at == datetime(2002, 2, 15, 7, 30, tzinfo=timezone(timedelta(hours=6)))


@needs_samples
def test_hepatitis_c_shifted_obx_is_rejected_and_the_rest_parse() -> None:
    results, (rejected,) = parse(sample("realm-hepatitis-c-virus.hl7"))

    assert rejected.source.position == "message 1/OBR 1/OBX 1"
    assert "shifted by 2" in rejected.reason
    assert "OBX-7" in rejected.reason
    age = by_code(results, "35659-2")
    assert (age.value_numeric, age.unit, age.loinc_code) == (Decimal(29), "a", "35659-2")
    assert by_code(results, "11294-6").value_text == "food handler"
    assert rejected.source.message_id == "1234567890"


@needs_samples
def test_hepatitis_c_structured_numeric_once_the_fields_are_aligned() -> None:
    # The same OBX with the two stray empty fields removed reads as the sender meant it.
    data = sample("realm-hepatitis-c-virus.hl7").replace(b"|1|||>^11.0|", b"|1|>^11.0|")

    results, rejected = parse(data)

    assert not rejected
    hcv = by_code(results, "5198-7")
    assert (hcv.comparator, hcv.value_numeric) == (">", Decimal("11.0"))
    assert hcv.unit == "1"
    assert (hcv.reference_low, hcv.reference_high) == (Decimal("0.0"), Decimal("0.9"))
    assert hcv.abnormal_flag == "H"  # 'H~POS': the first repetition
    assert hcv.status is ResultStatus.FINAL
    assert hcv.loinc_code == "5198-7"
    assert hcv.technician is None  # 9876543^Slide^Stan is OBX-25, the medical director
    assert hcv.performing_lab == "GHH Lab"


@needs_samples
def test_bom_lf_and_utc_offsets_give_aware_times() -> None:
    data = sample("LAB-ORU-1.hl7")
    assert data.startswith(b"\xef\xbb\xbf")

    results, rejected = parse(data)

    assert len(results) == 10
    assert not rejected
    erythrocytes = by_code(results, "11273-0")
    assert erythrocytes.collected_at == datetime(
        2014, 10, 6, 6, 27, tzinfo=timezone(timedelta(hours=7))
    )
    assert erythrocytes.value_numeric == Decimal("4.06")
    assert erythrocytes.status is ResultStatus.PRELIMINARY
    pending = by_code(results, "11156-7")  # OBX-5 empty, status I
    assert pending.status is ResultStatus.REGISTERED
    assert (pending.value_numeric, pending.value_text, pending.collected_at) == (None, None, None)
    assert {r.order_ref for r in results} == {"82503246", "890775544"}


@needs_samples
def test_preliminary_and_final_of_the_same_orders_share_result_ids() -> None:
    preliminary, _ = parse(sample("LAB-ORU-1.hl7"), "LAB-ORU-1.hl7")
    final, _ = parse(sample("LAB-ORU-2.hl7"), "LAB-ORU-2.hl7")

    # Different MSH-10, same filler order numbers, the OBX in another order: ids still match.
    assert {r.order_ref for r in preliminary} == {r.order_ref for r in final}
    assert {r.result_id for r in preliminary} == {r.result_id for r in final}
    assert all(r.status is ResultStatus.FINAL for r in final)
    before = {r.result_id: r for r in preliminary}
    hemoglobin = by_code(final, "20509-6")
    assert before[hemoglobin.result_id].code == "20509-6"
    assert before[hemoglobin.result_id].value_numeric is None
    assert hemoglobin.value_numeric == Decimal("13.4")


@needs_samples
def test_batch_envelope_yields_both_messages() -> None:
    results, rejected = parse(sample("realm-batch.hl7"))

    assert not rejected
    assert [r.source.position for r in results] == [
        "message 1/OBR 1/OBX 1",
        "message 1/OBR 2/OBX 1",
        "message 2/OBR 1/OBX 1",
    ]
    culture, lead_1, lead_2 = results
    assert culture.value_text == "Campylobacter jejuni"
    assert culture.status is ResultStatus.PRELIMINARY
    # The second MSH declares '^~&' only: no escape character, '&' is the subcomponent.
    assert lead_2.value_numeric == lead_1.value_numeric == Decimal(50)
    assert lead_2.patient_ref == "2.16.840.1.113883.19.3.2.1|36363636"
    assert lead_2.reference_high == Decimal(10)
    assert lead_2.reference_text == "<10 ug/dL"


@needs_samples
def test_concatenated_messages_without_batch_header() -> None:
    results, rejected = parse(sample("valid_mars.hl7"))

    assert not rejected
    assert [r.source.position.split("/")[0] for r in results] == ["message 1"] * 2 + [
        "message 2"
    ] * 2
    assert results[0].value_text == "Detected"
    assert results[1].value_numeric == Decimal(24)


@needs_samples
def test_five_encoding_characters_and_escapes() -> None:
    data = sample("hci.hl7")
    assert b"MSH|^~\\&#|" in data

    results, rejected = parse(data)

    assert not rejected
    a1c = by_code(results, "55454-3")
    assert (a1c.value_numeric, a1c.unit, a1c.abnormal_flag) == (Decimal("5.8"), "mg/dL", "H")
    assert (a1c.reference_low, a1c.reference_high) == (Decimal("0.0"), Decimal("5.6"))
    assert a1c.performing_lab == "ProPhase Diagnostics"
    assert by_code(results, "5196-1").value_text == "Reactive"
    # hci.hl7 has its escapes in NTE only; put the same ones into an OBX value.
    escaped = data.replace(b"|Reactive|", b"|Re\\T\\active\\X0d0a\\line 2 \\S\\ \\F\\|", 1)
    results, _ = parse(escaped)
    assert by_code(results, "5196-1").value_text == "Re&active\nline 2 ^ |"


@needs_samples
def test_formatted_text_escapes_in_sample() -> None:
    results, _ = parse(sample("sample_oru_20241015-001.hl7"))

    summary = by_code(results, "57724-7")
    assert summary.value_text is not None
    assert summary.value_text.startswith("ACTION REQUIRED\n\nNBS Testing Lab")
    assert "~" in summary.value_text  # \R\
    assert "\\" not in summary.value_text


@needs_samples
def test_leading_zeros_ranges_and_the_bad_timestamp() -> None:
    results, rejected = parse(sample("sample_oru_CDPH_NBS_20241021-001.hl7"))

    ohp = results[0]
    assert ohp.value_numeric == Decimal("65.88")
    assert (ohp.reference_low, ohp.reference_high, ohp.reference_text) == (
        None,
        Decimal(85),
        "<85",
    )
    assert [r.source.position for r in rejected] == [
        "message 1/OBR 2/OBX 4",
        "message 1/OBR 3/OBX 4",
    ]
    assert all(r.reason == "OBX-14: bad timestamp '220241021055726'" for r in rejected)
    # The placer number stands in for the missing filler number.
    assert {r.order_ref for r in results} == {"123456"}
    # The panel is sent twice under the same order: occurrences keep the ids apart.
    assert len({r.result_id for r in results}) == len(results)


@needs_samples
def test_titer_ratio_cancelled_and_legacy_messages() -> None:
    results, _ = parse(sample("elims_2_72_3029198209_5121_NoPII.hl7"))
    titer = by_code(results, "PLT805")
    assert (titer.value_text, titer.value_numeric, titer.unit) == ("1:640", None, "{titer}")
    assert titer.abnormal_flag == "POS"
    assert titer.status is ResultStatus.CORRECTED

    cancelled, _ = parse(sample("elims_29_5065302_35227_NoPII_CANCELED.hl7"))
    assert sum(r.status is ResultStatus.CANCELLED for r in cancelled) == 16

    legacy, _ = parse(sample("obxobr.hl7"))  # v2.2: MSH-9 'ORU', no OBX-11
    assert all(r.status is ResultStatus.UNKNOWN for r in legacy)
    assert legacy[0].value_text == "This is a test on 05/02/94."


@needs_samples
def test_repeated_numeric_value_and_coded_flag() -> None:
    results, _ = parse(sample("ORU-R01-01.hl7"))

    before_obr = [r for r in results if r.source.position == "message 1/OBX 1"]
    assert [(r.code, r.value_text) for r in before_obr] == [("8867-4", "https://testurl.com")]
    repeated = [r for r in results if r.value_text == "27; 25"]
    assert len(repeated) == 1
    assert repeated[0].value_numeric is None
    culture = by_code(results, "625-4")
    assert culture.abnormal_flag == "A"
    assert culture.value_text == "Salmonella"


# --- framing and decoding ------------------------------------------------------------------


def test_mllp_frames_give_the_same_results_as_plain_text() -> None:
    first, second = "\r".join(oru("CTRL1")), "\r".join(oru("CTRL2", OBX_NA))
    plain = f"{first}\r{second}\r".encode()
    framed = f"\x0b{first}\r\x1c\r\x0b{second}\r\x1c\r".encode()

    plain_items = list(parse_hl7(plain, "f.hl7"))
    framed_items = list(parse_hl7(framed, "f.hl7"))

    assert len(plain_items) == 3
    assert framed_items == plain_items


@needs_samples
def test_mllp_frames_of_sample_messages() -> None:
    messages = [sample("ORU-R01-RMGEAD.hl7"), sample("hci.hl7")]
    framed = b"".join(b"\x0b" + m.rstrip(b"\r\n") + b"\r\x1c\r" for m in messages)
    plain = b"\n".join(m.rstrip(b"\r\n") for m in messages)

    assert list(parse_hl7(framed, "f")) == list(parse_hl7(plain, "f"))


@pytest.mark.parametrize("terminator", ["\r", "\n", "\r\n"])
def test_segment_terminators(terminator: str) -> None:
    data = terminator.join(oru()).encode()

    results, rejected = parse(data)

    assert [r.code for r in results] == ["2823-3", "2951-2"]
    assert not rejected


def test_mixed_terminators_and_blank_lines() -> None:
    segments = oru()
    data = f"\n\n{segments[0]}\r\n{segments[1]}\n{segments[2]}\r\r{segments[3]}\n \n{segments[4]}"

    results, _ = parse(data.encode())

    assert len(results) == 2


def test_latin1_only_when_msh18_declares_it() -> None:
    segments = oru()
    segments[0] += "|||NE|NE|USA|8859/1"
    segments[4] = segments[4].replace("Sodium", "Sodium é")
    latin1 = hl7(*segments).decode().encode("latin-1")

    results, _ = parse(latin1)
    assert results[1].display == "Sodium é"

    undeclared = latin1.replace(b"|8859/1", b"|UNICODE UTF-8")
    with pytest.raises(FormatMismatchError, match="UTF-8"):
        parse_hl7(undeclared, "f")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b" \r\n\t", "empty"),
        (b"\x0b\x1c\r", "empty"),
        (b"MSH|^~\\&|\x00\x01\x02", "NUL"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "NUL"),
        (b"\xff\xfeM\x00S\x00H\x00", "NUL"),
        (b"MSH|^~\\&|A\xff\xfeB|", "UTF-8"),
        (b'{"resourceType": "Bundle", "entry": []}', "does not start with MSH"),
        (b"PID|1||123\rOBX|1|NM|1^A^LN||1|||||F\r", "does not start with MSH"),
        (b"FHS|^~\\&|A\rBHS|^~\\&|A\rBTS|0\rFTS|1\r", "no MSH"),
        (b"hello world, MSH|^~\\&|", "does not start with MSH"),
    ],
)
def test_whole_file_problems_raise_before_anything_is_yielded(data: bytes, message: str) -> None:
    with pytest.raises(FormatMismatchError, match=message):
        parse_hl7(data, "f")  # raised by the call itself, not by iterating


def test_leading_bom_whitespace_and_mllp_start_are_accepted() -> None:
    data = b"\xef\xbb\xbf \r\n\x0b" + hl7(*oru())

    results, _ = parse(data)

    assert len(results) == 2


# --- malformed messages and segments -------------------------------------------------------


def test_truncated_message_is_rejected_and_its_neighbours_parse() -> None:
    complete = "\r".join(oru("CTRL1"))
    truncated = "\r".join(oru("CTRL2"))
    truncated = truncated[: truncated.index("|136 - 145")]  # cut mid-OBX, before OBX-11
    data = f"{complete}\r{truncated}\r{complete.replace('CTRL1', 'CTRL3')}".encode()

    results, rejected = parse(data)

    assert [r.source.message_id for r in results] == ["CTRL1", "CTRL1", "CTRL2", "CTRL3", "CTRL3"]
    (cut,) = rejected
    assert cut.source.position == "message 2/OBR 1/OBX 2"
    assert cut.source.message_id == "CTRL2"
    assert "OBX-11" in cut.reason


def test_truncated_msh_rejects_the_message_only() -> None:
    data = hl7(*oru("CTRL1"), MSH.format(id="X")[:60], *oru("CTRL3"))

    results, rejected = parse(data)

    assert len(results) == 4
    (msh,) = rejected
    assert msh.source.position == "message 2"
    assert "MSH-9" in msh.reason


def test_obx_without_identifier_is_rejected() -> None:
    no_code = "OBX|3|NM|||7|mmol/L|||||F"
    text_only = "OBX|4|ST|^Comment only^L||note||||||F"
    data = hl7(*oru("CTRL1", OBX_K, no_code, text_only, OBX_NA))

    results, rejected = parse(data)

    assert [r.code for r in results] == ["2823-3", "2951-2"]
    assert [r.reason.split(":")[0] for r in rejected] == [
        "OBX-3 missing",
        "OBX-3 has no identifier code (text only)",
    ]
    assert [r.source.position for r in rejected] == [
        "message 1/OBR 1/OBX 2",
        "message 1/OBR 1/OBX 3",
    ]


def test_obx_without_value_is_still_a_result() -> None:
    pending = "OBX|3|NM|2075-0^Chloride^LN||||||||I"
    cancelled = "OBX|4|NM|2028-9^CO2^LN||||||||X"

    results, rejected = parse(hl7(*oru("CTRL1", pending, cancelled)))

    assert not rejected
    assert [r.status for r in results] == [ResultStatus.REGISTERED, ResultStatus.CANCELLED]
    assert all(r.value_numeric is None and r.value_text is None for r in results)


def test_non_oru_message_is_one_rejection_and_others_still_parse() -> None:
    adt = [
        "MSH|^~\\&|ADT|FAC|RCV|RCVFAC|20240101||ADT^A01^ADT_A01|ADT1|P|2.5.1",
        "PID|1||PAT9^^^HOSP^MR||SECRETNAME^JOHN||19700101|M",
        "OBX|1|NM|8302-2^Height^LN||180|cm|||||F",
    ]
    data = hl7(*oru("CTRL1"), *adt, *oru("CTRL3"))

    results, rejected = parse(data)

    assert len(results) == 4
    (adt_rejection,) = rejected
    assert adt_rejection.reason == "MSH-9 is ADT^A01, not ORU (R01, R30...) or OUL^R21-R24"
    assert adt_rejection.source.position == "message 2"
    assert adt_rejection.source.message_id == "ADT1"
    assert "SECRETNAME" not in adt_rejection.model_dump_json()


def test_oru_without_trigger_and_r03_are_accepted() -> None:
    v22 = MSH.format(id="C1").replace("ORU^R01^ORU_R01", "ORU").replace("2.5.1", "2.2")
    r03 = MSH.format(id="C2").replace("ORU^R01^ORU_R01", "ORU^R03")
    results, rejected = parse(hl7(v22, PID, OBR, OBX_K, r03, PID, OBR, OBX_NA))

    assert not rejected
    assert len(results) == 2


@pytest.mark.parametrize(
    ("msh", "reason"),
    [
        ("MSH", "MSH-1"),
        ("MSH|", "MSH-2"),
        ("MSH|^~\\&|A|B|C|D|20240101||ORU^R01|", "MSH-10"),
        ("MSH|^~\\&|A|B|C|D|20240101|||C1|P|2.5.1", "MSH-9"),
        ("MSH|^^\\&|A|B|C|D|20240101||ORU^R01|C1|P|2.5.1", "distinct"),
        ("MSHa^~\\&a", "distinct"),
    ],
)
def test_broken_msh_reasons(msh: str, reason: str) -> None:
    results, (rejected,) = parse(hl7(msh, PID, OBR, OBX_K, *oru("CTRL2")))

    assert reason in rejected.reason
    assert rejected.source.position == "message 1"
    assert len(results) == 2


def test_bad_timestamps_reject_the_obx_without_echoing_non_timestamps() -> None:
    bad_month = OBX_K.replace("20240101083000-0500", "20241301")
    name_in_ts = OBX_NA.replace("20240101083000-0500", "DOE^JANE")
    bad_19 = OBX_K.replace("-0500", "-0500|||||2024010112345")

    _, rejected = parse(hl7(*oru("CTRL1", bad_month, name_in_ts, bad_19)))

    assert [r.reason for r in rejected] == [
        "OBX-14: bad timestamp '20241301'",
        "OBX-14: bad timestamp (3 characters, not a timestamp)",
        "OBX-19: bad timestamp '2024010112345'",
    ]


def test_issue_16_item_6_bad_obr_times_quarantine_the_results_they_date() -> None:
    obr = OBR.replace("20240101083000-0500", "DATE!").replace("20240101110000-0500", "2024133")
    undated = "OBX|1|NM|2823-3^Potassium^LN||4.2|mmol/L|||||F"
    dated = "OBX|2|NM|2951-2^Sodium^LN||140|mmol/L|||||F|||20240101083000|||||20240101110000"

    (result,), rejected = parse(hl7(MSH.format(id="C"), PID, obr, undated, dated))

    # Same rule as a bad OBX-19: quarantined with the field named; the OBX with its own
    # readable times does not depend on the OBR's and lands.
    assert [r.reason for r in rejected] == [
        "OBR-7: bad timestamp (5 characters, not a timestamp); OBR-22: bad timestamp '2024133'"
    ]
    assert result.code == "2951-2"


def test_obx_outside_any_message_is_rejected() -> None:
    data = hl7("FHS|^~\\&|A", "BHS|^~\\&|A", OBX_K, *oru("CTRL1"), "BTS|1", OBX_NA, "FTS|1")

    results, rejected = parse(data)

    assert len(results) == 2
    assert [r.reason for r in rejected] == ["OBX outside any message: no MSH before it"] * 2
    assert [r.source.position for r in rejected] == ["segment 3", "segment 10"]


def test_missing_status_rules_depend_on_version() -> None:
    no_status = "OBX|1|ST|1234-5^Note^LN||text"
    _, (rejected,) = parse(hl7(*oru("C1", no_status)))
    assert "OBX-11" in rejected.reason

    old = [s.replace("2.5.1", "2.2") for s in oru("C2", no_status)]
    (result,), _ = parse(hl7(*old))
    assert (result.status, result.value_text) == (ResultStatus.UNKNOWN, "text")


def test_internal_fault_becomes_a_rejection(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_args: object) -> None:
        raise KeyError("simulated")

    monkeypatch.setattr(hl7v2, "_enter_order", boom)

    items = list(parse_hl7(hl7(*oru()), "f"))

    assert isinstance(items[0], Rejected)
    assert items[0].reason == "OBR: internal parser error (KeyError)"
    assert len(items) == 3  # the OBX still parse, without their order context


# --- field semantics -----------------------------------------------------------------------


def test_full_result_fields_and_stable_id() -> None:
    obx = (
        "OBX|1|NM|X1^Local K^L^2823-3^Potassium^LN|2|+004.20|mmol/L^millimole per liter^UCUM|"
        "3.5-5.1|H~N|||C|||20240101083000.25+0130|CLIA1^Producer Lab|OB123^SMITH&Jr|||"
        "20240101110000-0500||||Perf Lab^L^^^^CLIA&2.16&ISO^XX^^^1236"
    )
    data = hl7(MSH.format(id="C1"), PID, OBR, obx)

    (result,), _ = parse(data, "dir/file.hl7")

    assert result.code == "X1"
    assert result.code_system == "L"
    assert result.loinc_code == "2823-3"
    assert result.display == "Local K"
    assert result.value_numeric == Decimal("4.20")
    assert result.unit == "mmol/L"
    assert result.abnormal_flag == "H"
    assert result.status is ResultStatus.CORRECTED
    assert result.collected_at == datetime(
        2024, 1, 1, 8, 30, 0, 250000, tzinfo=timezone(timedelta(hours=1, minutes=30))
    )
    assert result.resulted_at == datetime(2024, 1, 1, 11, tzinfo=timezone(timedelta(hours=-5)))
    assert result.performing_lab == "Perf Lab"
    assert result.technician == "OB123"
    assert result.patient_ref == "1.2.840.1|PAT1"
    assert result.order_ref == "FI1"
    assert result.source.model_dump() == {
        "file": "dir/file.hl7",
        "message_id": "C1",
        "position": "message 1/OBR 1/OBX 1",
    }
    resend = data.replace(b"|C1|", b"|C9|").replace(b"+004.20", b"4.3")
    (again,), _ = parse(resend)
    assert again.result_id == result.result_id


def test_repeated_code_and_sub_id_get_distinct_ids() -> None:
    comment = "OBX|{n}|ST|77202-0^Comment^LN|1.1|line {n}||||||F"
    results, _ = parse(hl7(*oru("C1", *(comment.format(n=n) for n in range(1, 4)))))

    assert len({r.result_id for r in results}) == 3


def test_no_order_number_falls_back_to_control_id_and_producer_name() -> None:
    obr = "OBR|1|||24323-8^CMP^LN"
    obx = "OBX|1|ST|1234-5^Note^LN||ok||||||F||||CLIA1^Producer Lab|^Smith&Jr"
    (a,), _ = parse(hl7(MSH.format(id="C1"), PID, obr, obx))
    (b,), _ = parse(hl7(MSH.format(id="C2"), PID, obr, obx))

    assert a.order_ref is None
    assert a.result_id != b.result_id
    assert a.performing_lab == "Producer Lab"
    assert a.technician == "Smith"


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("F", ResultStatus.FINAL),
        ("P", ResultStatus.PRELIMINARY),
        ("C", ResultStatus.CORRECTED),
        ("X", ResultStatus.CANCELLED),
        ("D", ResultStatus.ENTERED_IN_ERROR),
        ("I", ResultStatus.REGISTERED),
        ("R", ResultStatus.PRELIMINARY),
        ("W", ResultStatus.ENTERED_IN_ERROR),
        ("A", ResultStatus.AMENDED),
        ("f", ResultStatus.FINAL),
        ("F^Final^HL70085", ResultStatus.FINAL),
        ("Z", ResultStatus.UNKNOWN),
    ],
)
def test_status_mapping(code: str, status: ResultStatus) -> None:
    (result,), _ = parse(hl7(*oru("C1", f"OBX|1|NM|2823-3^K^LN||4||||||{code}")))

    assert result.status is status


@pytest.mark.parametrize(
    ("value_type", "value", "expected"),
    [
        ("NM", "4.2", (Decimal("4.2"), None, None)),
        ("NM", "+0065.880", (Decimal("65.880"), None, None)),
        ("NM", "-3", (Decimal(-3), None, None)),
        ("NM", "<0.5", (Decimal("0.5"), "<", None)),
        ("NM", "see note", (None, None, "see note")),
        ("NM", "27~25", (None, None, "27; 25")),
        ("NM", "NaN", (None, None, "NaN")),
        ("NM", "1_000", (None, None, "1_000")),
        ("SN", "^182", (Decimal(182), None, None)),
        ("SN", ">^11.0", (Decimal("11.0"), ">", None)),
        ("SN", "<^5", (Decimal(5), "<", None)),
        ("SN", ">=^32", (Decimal(32), ">=", None)),
        ("SN", "=^0.5", (Decimal("0.5"), None, None)),
        ("SN", "^1^:^640", (None, None, "1:640")),
        ("SN", "=^1^:^640", (None, None, "1:640")),
        ("SN", "^10^-^20", (None, None, "10-20")),
        ("SN", "^2^+", (None, None, "2+")),
        ("SN", "<>^abc", (None, None, "<> abc")),
        ("CWE", "260373001^Detected^SCT", (None, None, "Detected")),
        ("CE", "LA6576-8", (None, None, "LA6576-8")),
        ("CWE", "A^Yes^L~B^No^L", (None, None, "Yes; No")),
        ("CWE^^HL70125", "^^^^Alt text", (None, None, "Alt text")),
        ("ST", "  Not Detected  ", (None, None, "Not Detected")),
        ("TX", "line 1~line 2", (None, None, "line 1; line 2")),
        ("FT", "a\\.br\\b\\H\\bold\\N\\", (None, None, "a\nbbold")),
        ("CX", "LGZKXXR5^^^Lab&1.2&ISO", (None, None, "LGZKXXR5")),
        ("DT", "20240411", (None, None, "20240411")),
        ("", "something", (None, None, "something")),
    ],
)
def test_values(value_type: str, value: str, expected: tuple[object, ...]) -> None:
    (result,), _ = parse(hl7(*oru("C1", f"OBX|1|{value_type}|2823-3^K^LN||{value}||||||F")))

    assert (result.value_numeric, result.comparator, result.value_text) == expected


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("3.5-5.1", "3.5", "5.1"),
        ("3.5 - 5.1", "3.5", "5.1"),
        ("4.3 to 6.2", "4.3", "6.2"),
        ("70_105", "70", "105"),
        ("0 - 100 mg/dL", "0", "100"),
        ("-5-5", "-5", "5"),
        ("<85", None, "85"),
        ("<=2", None, "2"),
        (">60", "60", None),
        ("> 0.1", "0.1", None),
        ("<10 ug/dL", None, "10"),
        ("5.1-3.5", None, None),
        ("^^10.000000", None, None),
        ("Negative", None, None),
        ("<1 = Susceptible, >= 1 = Resistant", None, None),
        ("<9 mcg/dL:  Acceptable background lead exposure", None, None),
    ],
)
def test_reference_ranges(text: str, low: str | None, high: str | None) -> None:
    (result,), _ = parse(hl7(*oru("C1", f"OBX|1|NM|2823-3^K^LN||4||{text}||||F")))

    assert result.reference_low == (Decimal(low) if low else None)
    assert result.reference_high == (Decimal(high) if high else None)
    assert result.reference_text == text


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2024", datetime(2024, 1, 1)),
        ("202403", datetime(2024, 3, 1)),
        ("20240315", datetime(2024, 3, 15)),
        ("2024031512", datetime(2024, 3, 15, 12)),
        ("202403151230", datetime(2024, 3, 15, 12, 30)),
        ("20240315123045", datetime(2024, 3, 15, 12, 30, 45)),
        ("20240315123045.1234", datetime(2024, 3, 15, 12, 30, 45, 123400)),
        (
            "20240315123045-0600",
            datetime(2024, 3, 15, 12, 30, 45, tzinfo=timezone(-timedelta(hours=6))),
        ),
        ("202403151230+0000", datetime(2024, 3, 15, 12, 30, tzinfo=UTC)),
        ("20240315^S", datetime(2024, 3, 15)),
    ],
)
def test_timestamps(stamp: str, expected: datetime) -> None:
    (result,), _ = parse(hl7(*oru("C1", f"OBX|1|NM|2823-3^K^LN||4||||||F|||{stamp}")))

    if expected.tzinfo is None:  # issue 16 item 1: a naive time takes MSH-7's offset (-0500)
        expected = expected.replace(tzinfo=timezone(-timedelta(hours=5)))
        assert result.time_zone_source == "msh7"
    assert result.collected_at == expected
    assert result.collected_at.utcoffset() == expected.utcoffset()


@pytest.mark.parametrize(
    "stamp",
    [
        "202410211",
        "220241021055726",
        "20241301",
        "20240230",
        "2024031525",
        "20240315+2500",
        "2024.5",
        "abcd",
    ],
)
def test_bad_timestamps(stamp: str) -> None:
    _, (rejected,) = parse(hl7(*oru("C1", f"OBX|1|NM|2823-3^K^LN||4||||||F|||{stamp}")))

    assert rejected.reason.startswith("OBX-14: bad timestamp")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a\\F\\b", "a|b"),
        ("a\\S\\b\\T\\c\\R\\d\\E\\e", "a^b&c~d\\e"),
        ("x\\.br\\y", "x\ny"),
        ("x\\.sp\\y", "x\ny"),
        ("x\\.in+4\\y", "xy"),
        ("\\X48656C6C6F\\", "Hello"),
        ("\\XC3A9\\", "é"),
        ("C:\\temp", "C:\\temp"),
        ("a\\T\\b\\c", "a&b\\c"),
        ("\\H\\bold\\N\\", "bold"),
    ],
)
def test_escape_sequences(text: str, expected: str | None) -> None:
    (result,), _ = parse(hl7(*oru("C1", f"OBX|1|ST|1234-5^Note^LN||{text}||||||F")))

    assert result.value_text == expected


def test_no_escape_character_keeps_backslashes() -> None:
    msh = MSH.format(id="C1").replace("^~\\&", "^~&")
    (result,), _ = parse(hl7(msh, PID, OBR, "OBX|1|ST|1234-5^Note^LN||a\\T\\b||||||F"))

    assert result.value_text == "a\\T\\b"


def test_custom_separators() -> None:
    msh = "MSH#$*!%#LAB#FAC#RCV#RCVFAC#20240101##ORU$R01#C1#P#2.5.1"
    obx = "OBX#1#NM#2823-3$Potassium$LN##4.2#mmol/L#3.5-5.1#N###F"

    (result,), rejected = parse(hl7(msh, "PID#1##P1", "OBR#1##F1", obx))

    assert not rejected
    assert (result.code, result.display, result.value_numeric) == (
        "2823-3",
        "Potassium",
        Decimal("4.2"),
    )
    assert result.order_ref == "F1"


# --- robustness ----------------------------------------------------------------------------

SEED_FILES = [
    "ORU-R01-RMGEAD.hl7",
    "realm-batch.hl7",
    "hci.hl7",
    "empty_segments.hl7",
    "CE-20200415-0001.hl7",
]
SEEDS = [hl7(*oru("CTRL1"), *oru("CTRL2"))]
if DATA_DIR.is_dir():
    SEEDS += [sample(name) for name in SEED_FILES]


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    seed = draw(st.sampled_from(SEEDS))
    segments = [s for s in re.split(rb"\r\n|\r|\n", seed) if s]
    for _ in range(draw(st.integers(1, 4))):
        segments = draw(_mutation(segments))
    terminator = draw(st.sampled_from([b"\r", b"\n", b"\r\n"]))
    data = terminator.join(segments)
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return data


def _mutation(segments: list[bytes]) -> st.SearchStrategy[list[bytes]]:
    if not segments:
        return st.just([b"MSH|^~\\&|"])
    index = st.integers(0, len(segments) - 1)

    def delete(i: int) -> list[bytes]:
        return segments[:i] + segments[i + 1 :]

    def duplicate(i: int) -> list[bytes]:
        return segments[: i + 1] + segments[i:]

    def swap(pair: tuple[int, int]) -> list[bytes]:
        out = list(segments)
        out[pair[0]], out[pair[1]] = out[pair[1]], out[pair[0]]
        return out

    def insert(args: tuple[int, int, bytes]) -> list[bytes]:
        i, offset, junk = args
        seg = segments[i]
        offset = min(offset, len(seg))
        return [*segments[:i], seg[:offset] + junk + seg[offset:], *segments[i + 1 :]]

    def replace(args: tuple[int, bytes, bytes]) -> list[bytes]:
        i, old, new = args
        return [*segments[:i], segments[i].replace(old, new), *segments[i + 1 :]]

    separators = st.sampled_from([b"|", b"^", b"~", b"\\", b"&", b"#", b"", b"\x0b", b"\x1c"])
    junk = st.one_of(
        st.binary(min_size=1, max_size=8),
        st.text("|^~\\&#\r\n\x0b\x1c0123456789.+-<>:MSHOBXR ", min_size=1, max_size=8).map(
            str.encode
        ),
    )
    return st.one_of(
        index.map(delete),
        index.map(duplicate),
        st.tuples(index, index).map(swap),
        st.tuples(index, st.integers(0, 300), junk).map(insert),
        st.tuples(index, separators, separators).map(replace),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_messages())
def test_mutations_never_raise_anything_but_format_mismatch(data: bytes) -> None:
    try:
        items = list(parse_hl7(data, "fuzz.hl7"))
    except FormatMismatchError:
        return
    assert all(isinstance(i, LabResult | Rejected) for i in items)
    internal = [i.reason for i in items if isinstance(i, Rejected) and "internal" in i.reason]
    assert not internal
    # Never more results than OBX segments: nothing is invented from other segments.
    text = data.decode("utf-8", "replace").translate({0x0B: "\r", 0x1C: "\r", 0x0A: "\r"})
    obx = sum(s.lstrip(" \t\f\ufeff")[:3] == "OBX" for s in text.split("\r"))
    assert sum(isinstance(i, LabResult) for i in items) <= obx


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_format_mismatch(junk: bytes) -> None:
    for data in (junk, b"MSH|^~\\&|" + junk, hl7(*oru()) + junk):
        with contextlib.suppress(FormatMismatchError):
            list(parse_hl7(data, "fuzz.hl7"))


def test_throughput_floor() -> None:
    # A guard against accidental quadratic behaviour, far below the measured rate.
    messages = [
        "\r".join(oru(f"C{i}", *(OBX_K.replace("|1|", f"|{k}|", 1) for k in range(10))))
        for i in range(2000)
    ]
    data = "\r".join(messages).encode()

    start = time.perf_counter()
    count = sum(1 for _ in parse_hl7(data, "bench.hl7"))
    elapsed = time.perf_counter() - start

    assert count == 20_000
    assert elapsed < 10
