"""FHIR R4 parser: every shared sample file, counted by hand, plus malformed input and mutations."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from custody.labs.fhir import parse_fhir
from custody.labs.model import (
    FormatMismatchError,
    LabResult,
    NotAResult,
    Rejected,
    ResultStatus,
    derived_id,
)

SHARED = Path(__file__).parents[4] / "shared" / "data"
DATA = SHARED / "fhir_r4"
OFFICIAL = DATA / "hl7-r4-official-examples"
SYNTHEA = DATA / "synthea-r4-bundles"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared sample data not at {DATA}")

# file -> (results, rejected), counted by reading each file (jq over entry[].resource):
# one result per Observation with a code; an Observation without value[x] whose components
# carry values gives one result per valued component instead; DiagnosticReports, other resource
# types and entries without a resource give nothing. None of these files is malformed JSON
# (SOURCES.md: all pass json.load); the only rejections are the two top-level resources that
# are not lab data.
EXPECTED: dict[str, tuple[int, int]] = {
    # DiagnosticReport + Observations r1..r17, each with valueQuantity.
    "Bundle-101.json": (17, 0),
    # transaction-response: a Patient, a Parameters and an empty searchset Bundle as
    # resources; the other 7 entries carry only response.status.
    "Bundle-bundle-response.json": (0, 0),
    # transaction: 5 Patients and a Parameters; DELETE and GET entries carry no resource.
    "Bundle-bundle-transaction.json": (0, 0),
    # 51 Observations: 48 valued + panels p1, p2, p3 (hasMember, no value); 3 Specimens.
    "Bundle-ghp.json": (51, 0),
    # transaction: 9 HLA Observations without value[x] or id; 12 MolecularSequences.
    "Bundle-hla-1.json": (9, 0),
    # DiagnosticReport + 4 Observations.
    "Bundle-lipids.json": (4, 0),
    # 16 Observations: 12 valued + gramstain1..4 with no value and 2 valued components each.
    "Bundle-lri-example.json": (12 + 4 * 2, 0),
    # 25 Observations: 20 valued + obx2-1, obx3-1 (no value) and panels obr-2, obr-3, org1;
    # a ServiceRequest.
    "Bundle-micro.json": (25, 0),
    # DiagnosticReport + 13 Observations.
    "Bundle-report.json": (13, 0),
    # Its one result reference (Observation/bmd) is not in the file.
    "DiagnosticReport-102.json": (0, 0),
    # No result[], no contained Observation: a presentedForm PDF only.
    "DiagnosticReport-gingival-mass.json": (0, 0),
    "Observation-bgpanel.json": (1, 0),  # panel: hasMember, no value
    "Observation-bloodgroup.json": (1, 0),
    "Observation-bmd.json": (1, 0),
    "Observation-decimal.json": (7, 0),  # no value, 7 valued components
    "Observation-example.json": (1, 0),
    "Observation-f001.json": (1, 0),
    "Observation-f002.json": (1, 0),
    "Observation-f003.json": (1, 0),
    "Observation-f004.json": (1, 0),
    "Observation-f005.json": (1, 0),
    "Observation-f202.json": (1, 0),  # entered-in-error is a status, not a rejection
    "Observation-f203.json": (1, 0),
    "Observation-f204.json": (1, 0),
    "Observation-f205.json": (2, 0),  # no value, 2 valued components
    "Observation-f206.json": (1, 0),
    "Observation-herd1.json": (1, 0),
    "Observation-rhstatus.json": (1, 0),
    "Observation-satO2.json": (1, 0),
    "Observation-unsat.json": (1, 0),  # cancelled, dataAbsentReason, no value
    "Observation-vp-oyster.json": (1, 0),
    "ServiceRequest-lipid.json": (0, 1),  # a resource of the wrong type
    "Specimen-101.json": (0, 1),  # a resource of the wrong type
    # Synthea transaction Bundles: Observations = valued + blood pressure panels (no value,
    # systolic and diastolic components) among Patient/Encounter/Claim/... entries.
    "Buster_Hoeger_ad2e3fc5-2b5d-4cb9-8d03-9ea0f4ac8423.json": (30 + 3 * 2, 0),
    "Clemente_Kreiger_1484a42d-0eaf-4654-9cbf-6b050a5cd73b.json": (45 + 3 * 2, 0),
    "Ned_Hintz_e4b9259d-0f54-48d1-a35d-b526729a4dfe.json": (31 + 4 * 2, 0),
    "hospitalInformation1559319163815.json": (0, 0),  # 102 Organizations
    "practitionerInformation1559319163815.json": (0, 0),  # 102 Practitioners
}


def sample_files() -> dict[str, Path]:
    if not DATA.is_dir():
        return {}
    return {p.name: p for p in sorted(DATA.rglob("*.json")) if p.name != "package.json"}


def parse(data: bytes, file: str = "test.json") -> tuple[list[LabResult], list[Rejected]]:
    items = list(parse_fhir(data, file))
    results = [i for i in items if isinstance(i, LabResult)]
    rejected = [i for i in items if isinstance(i, Rejected)]
    assert len(results) + len(rejected) == len(items)
    return results, rejected


def parse_file(name: str) -> tuple[list[LabResult], list[Rejected]]:
    path = sample_files()[name]
    return parse(path.read_bytes(), name)


def dumps(value: Any) -> bytes:
    return json.dumps(value).encode()


def observation(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
        "valueQuantity": {"value": 5, "unit": "mmol/L"},
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


# --------------------------------------------------------------------------------------------
# The shared sample files


def test_every_sample_file_has_a_counted_expectation() -> None:
    assert set(sample_files()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_file_gives_the_counted_results(name: str) -> None:
    results, rejected = parse_file(name)
    assert (len(results), len(rejected)) == EXPECTED[name]
    assert len({r.result_id for r in results}) == len(results), "result ids repeat in a file"
    assert {r.source.file for r in results} | {r.source.file for r in rejected} <= {name}
    assert not [r.reason for r in rejected if r.reason.startswith("unexpected")]


def test_glucose_f001() -> None:
    (glucose,), _ = parse_file("Observation-f001.json")
    assert glucose.result_id == "fhir:Observation/f001"
    assert (glucose.loinc_code, glucose.code_system) == ("15074-8", "http://loinc.org")
    assert glucose.display == "Glucose [Moles/volume] in Blood"
    assert (glucose.value_numeric, glucose.unit) == (Decimal("6.3"), "mmol/L")
    assert (glucose.reference_low, glucose.reference_high) == (Decimal("3.1"), Decimal("6.2"))
    assert glucose.abnormal_flag == "H"
    assert glucose.status is ResultStatus.FINAL
    assert glucose.patient_ref == "Patient/f001"
    plus_one = timezone(timedelta(hours=1))
    assert glucose.collected_at == datetime(2013, 4, 2, 9, 30, 10, tzinfo=plus_one)  # period.start
    assert glucose.resulted_at == datetime(2013, 4, 3, 15, 30, 10, tzinfo=plus_one)
    assert glucose.performing_lab == "A. Langeveld"
    assert (glucose.source.message_id, glucose.source.position) == ("f001", "resource")


def test_decimal_values_keep_the_precision_and_range_the_json_text_has() -> None:
    results, _ = parse_file("Observation-decimal.json")
    texts = [str(r.value_numeric) for r in results]
    assert texts == [
        "1.0",
        "1.00",  # a float would say 1.0
        "1.0",
        "1E-22",
        "1000000000000000000",
        "1.000000000000000000E-245",  # below float's range: a float would be 0.0 or 1e-245
        "-1.000000000000000000E+245",
    ]
    assert [r.source.position for r in results] == [f"component {i}" for i in range(7)]
    assert results[1].result_id == "fhir:Observation/decimal/component/1"


def test_f205_egfr_components_with_a_comparator() -> None:
    black, other = parse_file("Observation-f205.json")[0]
    assert (black.loinc_code, black.comparator, black.value_numeric) == (
        "48643-1",
        ">",
        Decimal(60),
    )
    assert (other.loinc_code, other.comparator, other.value_numeric) == (
        "48642-3",
        None,
        Decimal(60),
    )
    assert black.unit == "mL/min/{1.73_m2}"  # the UCUM code, not the display text
    assert black.reference_low == 60 and black.reference_high is None
    assert black.patient_ref == other.patient_ref == "Patient/f201"  # shared with the parent
    assert [black.source.position, other.source.position] == ["component 0", "component 1"]


def test_bundle_101_gives_17_cbc_results_with_the_report_accession() -> None:
    results, _ = parse_file("Bundle-101.json")
    assert len(results) == 17
    assert {r.order_ref for r in results} == {"5234342"}  # DiagnosticReport.identifier
    assert {r.performing_lab for r in results} == {"Acme Laboratory, Inc"}
    assert {"H", "L", "HH", "LL"} <= {r.abnormal_flag for r in results}
    ranged = [r for r in results if r.reference_low is not None or r.reference_high is not None]
    assert len(ranged) == 12  # SOURCES.md: 12 referenceRange
    first = results[0]
    assert first.result_id == "fhir:https://example.com/base/Observation/r1"
    assert (first.source.message_id, first.source.position) == ("101", "entry 1")
    assert (first.loinc_code, first.value_numeric, first.unit) == ("718-7", Decimal(176), "g/L")


def test_panel_and_cancelled_observations_are_results_without_value() -> None:
    (panel,), _ = parse_file("Observation-bgpanel.json")
    (cancelled,), _ = parse_file("Observation-unsat.json")
    for result in (panel, cancelled):
        assert result.value_numeric is None and result.value_text is None
    assert cancelled.status is ResultStatus.CANCELLED


def test_observations_without_an_id_take_their_fullurl() -> None:
    results, _ = parse_file("Bundle-hla-1.json")
    assert all(r.result_id.startswith("fhir:urn:uuid:") for r in results)


def test_synthea_blood_pressure_splits_into_systolic_and_diastolic() -> None:
    results, _ = parse_file("Ned_Hintz_e4b9259d-0f54-48d1-a35d-b526729a4dfe.json")
    pressure = [r for r in results if r.loinc_code in ("8480-6", "8462-4")]
    assert len(pressure) == 8
    assert all(r.unit == "mm[Hg]" and r.value_numeric is not None for r in pressure)
    assert all(r.result_id.startswith("fhir:urn:uuid:") for r in results)
    assert all(r.collected_at is not None and r.collected_at.tzinfo is UTC for r in results)


def test_codeable_concept_values_are_text() -> None:
    (culture,), _ = parse_file("Observation-f206.json")
    assert (culture.value_text, culture.value_numeric) == ("Staphylococcus aureus", None)
    assert culture.abnormal_flag == "POS"


# --------------------------------------------------------------------------------------------
# Files that are not FHIR JSON at all


def hl7_sample() -> bytes:
    return (SHARED / "hl7v2" / "ruby-hl7" / "ORU_R01_2.5.1_SampleTestCase1.er7").read_bytes()


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "empty"),
        (b" \r\n\t\n", "empty"),
        (b"\xef\xbb\xbf", "empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "UTF-8"),
        (bytes(range(256)) * 4, "not"),
        (b'{"resourceType": "Observation", "status": "fin', "invalid JSON"),
        (b'{\n  "resourceType": "Observation",\n  "status": "final"\n  "id": "x"\n}\n', "line 4"),
        (b"[1, 2, 3]", "array"),
        (b'{"id": "x", "status": "final"}', "resourceType"),
        (b'"Observation"', "scalar"),
        (b'{"resourceType": "Observation", "valueQuantity": {"value": NaN}}', "NaN"),
        (b"not json\nat all\n", "line 1: invalid JSON"),
        (b"{}\n{}\n", "no resourceType"),
    ],
)
def test_a_file_that_is_not_fhir_json_is_refused_before_anything_is_yielded(
    data: bytes, words: str
) -> None:
    with pytest.raises(FormatMismatchError, match=words):
        parse_fhir(data, "bad.json")  # raised on the call, not on the first next()


def test_an_hl7_message_is_not_fhir() -> None:
    with pytest.raises(FormatMismatchError, match="invalid JSON"):
        parse_fhir(hl7_sample(), "message.hl7")


def test_a_patient_resource_is_one_rejection() -> None:
    results, (rejected,) = parse(dumps({"resourceType": "Patient", "id": "p1"}))
    assert results == []
    assert rejected.reason == "Patient is not an Observation, DiagnosticReport or Bundle"
    assert (rejected.source.message_id, rejected.source.position) == ("p1", "resource")


# --------------------------------------------------------------------------------------------
# NDJSON


def ndjson(*lines: bytes, end: bytes = b"\n") -> bytes:
    return end.join(lines) + end


def test_ndjson_a_bad_line_is_rejected_and_the_others_land() -> None:
    good = [dumps(observation(id=f"o{i}")) for i in range(1, 4)]
    data = ndjson(good[0], b'{"resourceType": "Observation", "id": ', good[1], b"", good[2])
    results, (bad,) = parse(data, "bulk.ndjson")
    assert [r.result_id for r in results] == [
        "fhir:Observation/o1",
        "fhir:Observation/o2",
        "fhir:Observation/o3",
    ]
    assert [r.source.position for r in results] == ["line 1", "line 3", "line 5"]
    assert bad.source.position == "line 2"
    assert bad.reason.startswith("line 2: invalid JSON: ")


def test_ndjson_with_bom_crlf_and_bad_first_lines() -> None:
    good = dumps(observation())
    data = b"\xef\xbb\xbf" + ndjson(b"\xff\xfe garbage", b"[1]", good, end=b"\r\n")
    results, rejected = parse(data, "bulk.ndjson")
    assert [r.source.position for r in results] == ["line 3"]
    assert [r.reason for r in rejected] == [
        "line 1: not UTF-8 text (binary?)",
        "line 2: not a FHIR resource (no resourceType)",
    ]


def test_ndjson_of_bundles_and_reports_uses_nested_positions() -> None:
    bundle = {
        "resourceType": "Bundle",
        "id": "b1",
        "type": "searchset",
        "entry": [{"resource": observation(id="x")}],
    }
    data = ndjson(dumps(observation()), dumps(bundle))
    results, _ = parse(data, "bulk.ndjson")
    assert [(r.source.message_id, r.source.position) for r in results] == [
        ("o1", "line 1"),
        ("b1", "line 2/entry 0"),
    ]


def test_ndjson_where_no_line_is_json_is_refused() -> None:
    with pytest.raises(FormatMismatchError, match="not FHIR JSON or NDJSON"):
        parse_fhir(ndjson(b"{bad", b"{worse", b"MSH|^~\\&|"), "bulk.ndjson")


# --------------------------------------------------------------------------------------------
# DiagnosticReports and Bundles


def report(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": "r1",
        "status": "final",
        "code": {"text": "Panel"},
        "identifier": [{"value": "ACC-9"}],
        "performer": [{"display": "Main Lab"}],
    }
    base.update(fields)
    return base


def test_contained_observations_of_a_report_are_results_with_its_accession() -> None:
    data = dumps(
        report(
            contained=[
                observation(id="a"),
                {"resourceType": "Specimen", "id": "s"},
                observation(id="b"),
            ],
            result=[{"reference": "#a"}, {"reference": "#b"}, {"reference": "Observation/x"}],
        )
    )
    results, rejected = parse(data)
    assert rejected == []
    assert [r.result_id for r in results] == [
        "fhir:DiagnosticReport/r1#a",
        "fhir:DiagnosticReport/r1#b",
    ]
    assert [r.source.position for r in results] == ["contained 0", "contained 2"]
    assert {(r.order_ref, r.performing_lab) for r in results} == {("ACC-9", "Main Lab")}


def test_a_report_with_only_external_references_gives_nothing() -> None:
    assert parse(dumps(report(result=[{"reference": "Observation/x"}]))) == ([], [])


def test_bundle_observations_listed_by_a_report_are_yielded_once_with_its_context() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:1",
                "resource": observation(id=None, basedOn=[{"reference": "ServiceRequest/own"}]),
            },
            {"fullUrl": "urn:uuid:2", "resource": observation(id="two")},
            {"request": {"method": "DELETE", "url": "Observation/9"}},
            {"resource": {"resourceType": "Patient", "id": "p"}},
            {
                "fullUrl": "urn:uuid:3",
                "resource": report(
                    identifier=None,
                    basedOn=[{"reference": "ServiceRequest/sr1"}],
                    result=[{"reference": "urn:uuid:1"}, {"reference": "Observation/two"}],
                ),
            },
            {"resource": observation(id=None)},
        ],
    }
    results, rejected = parse(dumps(bundle), "b.json")
    assert rejected == []
    assert [r.result_id for r in results] == [
        "fhir:urn:uuid:1",
        "fhir:urn:uuid:2",
        derived_id("fhir", "b.json", "entry 5"),
    ]
    assert [r.order_ref for r in results] == ["ServiceRequest/sr1", "ServiceRequest/sr1", None]
    assert [r.source.message_id for r in results] == [None, "two", None]


# --------------------------------------------------------------------------------------------
# Observations that cannot be read are rejected, naming the element and not the value


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"code": {"coding": []}}, "Observation.code missing"),
        ({"code": None}, "Observation.code missing"),
        ({"status": "done"}, "Observation.status 'done' is not a FHIR status"),
        ({"status": None}, "Observation.status missing"),
        ({"status": "Jane Doe, 1970-01-01!"}, "Observation.status is not a FHIR status"),
        ({"effectiveDateTime": "2013-02-30"}, "Observation.effectiveDateTime is not a valid"),
        ({"effectiveDateTime": "02/03/2013"}, "Observation.effectiveDateTime is not a FHIR"),
        ({"issued": 20130203}, "Observation.issued is not a string"),
        ({"valueQuantity": {"value": "6.3"}}, "Observation.valueQuantity.value is not a number"),
        (
            {"valueQuantity": {"value": 1, "comparator": "~"}},
            "Observation.valueQuantity.comparator",
        ),
        ({"valueQuantity": [5]}, "Observation.valueQuantity is not an object"),
        ({"valueString": "x"}, "Observation has more than one value[x]"),
        ({"referenceRange": {"low": 1}}, "Observation.referenceRange is not an array"),
        ({"subject": {"reference": "Patient/\udc00"}}, "Observation.subject.reference is not"),
    ],
)
def test_an_unreadable_observation_is_rejected_with_the_element_named(
    change: dict[str, Any], reason: str
) -> None:
    resource = observation()
    resource.update(change)
    resource = {k: v for k, v in resource.items() if v is not None}
    results, (rejected,) = parse(json.dumps(resource).encode("utf-8", "surrogatepass"))
    assert results == []
    assert rejected.reason.startswith(reason)
    assert "Jane" not in rejected.reason and "6.3" not in rejected.reason


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2013", datetime(2013, 1, 1)),
        ("2013-04", datetime(2013, 4, 1)),
        ("2013-04-02", datetime(2013, 4, 2)),
        ("2013-04-02T09:30:10", datetime(2013, 4, 2, 9, 30, 10)),
        ("2013-04-02T09:30:10Z", datetime(2013, 4, 2, 9, 30, 10, tzinfo=UTC)),
        (
            "2013-04-02T09:30:10.1234-05:00",
            datetime(2013, 4, 2, 9, 30, 10, 123400, tzinfo=timezone(timedelta(hours=-5))),
        ),
    ],
)
def test_partial_fhir_datetimes_start_at_their_precision(text: str, expected: datetime) -> None:
    (result,), _ = parse(dumps(observation(effectiveDateTime=text)))
    assert result.collected_at == expected
    assert (result.collected_at.tzinfo is None) == (expected.tzinfo is None)


def test_other_value_types() -> None:
    cases = {
        "valueBoolean": (True, None, "true"),
        "valueInteger": (7, Decimal(7), None),
        "valueString": ("trace", None, "trace"),
        "valueRatio": ({"numerator": {"value": 1}, "denominator": {"value": 640}}, None, "1:640"),
        "valueRange": ({"low": {"value": 2}, "high": {"value": 5}}, None, "2-5"),
        "valueCodeableConcept": ({"coding": [{"code": "260373001"}]}, None, "260373001"),
    }
    for key, (raw, numeric, text) in cases.items():
        (result,), _ = parse(dumps(observation(valueQuantity=None, **{key: raw})))
        assert (result.value_numeric, result.value_text) == (numeric, text), key


def test_a_long_fullurl_still_gives_an_id_that_fits() -> None:
    url = "https://example.org/fhir/Observation/" + "x" * 300
    bundle = {"resourceType": "Bundle", "entry": [{"fullUrl": url, "resource": observation()}]}
    (result,), _ = parse(dumps(bundle))
    assert result.result_id == derived_id("fhir", f"fhir:{url}")


# --------------------------------------------------------------------------------------------
# Mutations: whatever the damage, only FormatMismatchError, results or rejections come out

SEEDS = ["Observation-f001.json", "Observation-f205.json", "Bundle-lipids.json"]


def seed_bytes() -> list[bytes]:
    files = sample_files()
    if not files:
        return [b"{}"]
    seeds = [files[name].read_bytes() for name in SEEDS]
    lines = [json.dumps(json.loads(s)).encode() for s in seeds]
    return [*seeds, b"\n".join(lines) + b"\n"]


def assert_survives(data: bytes) -> None:
    try:
        items = list(parse_fhir(data, "mutant.json"))
    except FormatMismatchError:
        return
    assert all(isinstance(i, LabResult | Rejected | NotAResult) for i in items)
    unexpected = [i.reason for i in items if isinstance(i, Rejected) and "unexpected" in i.reason]
    assert not unexpected


MUTATION = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@MUTATION
@given(st.data())
def test_truncated_or_byte_flipped_files(data: st.DataObject) -> None:
    original = data.draw(st.sampled_from(seed_bytes()))
    mutated = bytearray(original[: data.draw(st.integers(0, len(original)))])
    flips = data.draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8))
    for where, byte in flips:
        if mutated:
            mutated[where % len(mutated)] = byte
    assert_survives(bytes(mutated))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["2013-04-02", "final", "http://loinc.org", "Observation", "#a", ""]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, child in node.items():
            found += paths(child, (*prefix, key))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found += paths(child, (*prefix, index))
    return found


@MUTATION
@given(st.data())
def test_elements_deleted_or_replaced_with_other_json(data: st.DataObject) -> None:
    names = [n for n in SEEDS if n in sample_files()] or pytest.skip("no sample data")
    document = json.loads(sample_files()[data.draw(st.sampled_from(names))].read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        targets = paths(document)
        if not targets:
            break
        *parents, last = data.draw(st.sampled_from(targets))
        holder = document
        for step in parents:
            holder = holder[step]
        if data.draw(st.booleans()):
            del holder[last]
        else:
            holder[last] = data.draw(json_values)
    assert_survives(json.dumps(document).encode())
