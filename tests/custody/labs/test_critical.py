"""Critical-value rules: every default limit cites a source, and a site's file replaces them."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from custody.errors import ConfigError
from custody.labs.critical import RULES_DIR, load_rules
from custody.labs.model import LabResult, SourceRef

REF = SourceRef(file="f.hl7", position="message 1/OBR 1/OBX 1")


def result(loinc: str, value: str, unit: str, comparator: str | None = None) -> LabResult:
    return LabResult(
        result_id="r1", loinc_code=loinc, value_numeric=Decimal(value), unit=unit,
        comparator=comparator, source=REF,
    )  # fmt: skip


def test_every_default_rule_names_a_published_source() -> None:
    rules = json.loads((RULES_DIR / "default.json").read_text())["rules"]
    assert {r["analyte"] for r in rules} >= {
        "Potassium", "Sodium", "Glucose", "Hemoglobin", "INR", "Troponin I (cardiac)"
    }  # fmt: skip
    for rule in rules:
        assert "Kost GJ" in rule["source"] or "ARUP Laboratories" in rule["source"], rule


@pytest.mark.parametrize(
    ("loinc", "value", "unit", "comparator", "expected"),
    [
        ("2823-3", "6.8", "mmol/L", None, ("Potassium", "high", Decimal("6.2"))),
        ("2823-3", "6.8", "MEQ/L", None, ("Potassium", "high", Decimal("6.2"))),
        ("2823-3", "2.5", "mmol/L", None, ("Potassium", "low", Decimal("2.8"))),
        ("2823-3", "4.1", "mmol/L", None, None),
        ("2823-3", "6.8", "mg/dL", None, None),  # a unit the rule does not list is not judged
        ("2823-3", "2.0", "mmol/L", ">", None),  # "> 2.0" may be normal
        ("2345-7", "30", "mg/dL", None, ("Glucose", "low", Decimal("46"))),
        ("2345-7", "30", "mmol/L", None, ("Glucose", "high", Decimal("26.9"))),
        ("6301-6", "5.5", "{INR}", None, ("INR", "high", Decimal("5.0"))),
    ],
)
def test_default_rules(
    loinc: str, value: str, unit: str, comparator: str | None, expected: tuple | None
) -> None:
    finding = load_rules("default").check(result(loinc, value, unit, comparator))
    got = None if finding is None else (finding.analyte, finding.direction, finding.limit)
    assert got == expected


def test_a_site_file_replaces_the_default_set(tmp_path: Path) -> None:
    site = tmp_path / "site.json"
    site.write_text(json.dumps({"name": "st-mary", "rules": [{
        "analyte": "Potassium", "loinc": ["2823-3"],
        "limits": [{"units": ["mmol/L"], "low": "3.0", "high": "6.0"}],
        "source": "St Mary's laboratory policy LAB-114, rev. 7",
    }]}))  # fmt: skip
    rules = load_rules("site", rules_dir=site.parent)  # chosen by file name, not path
    assert rules.name == "st-mary"
    finding = rules.check(result("2823-3", "6.1", "mmol/L"))
    assert finding is not None and finding.limit == Decimal("6.0")
    assert rules.check(result("2345-7", "30", "mg/dL")) is None  # only the site's rules apply


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "critical rule set"),
        ('{"name": "x", "rules": [{"analyte": "K", "loinc": ["2823-3"], "limits": '
         '[{"units": ["mmol/L"]}], "source": "somewhere real"}]}', "low, high or both"),
        ('{"name": "x", "rules": [{"analyte": "K", "loinc": ["2823-3"], "limits": '
         '[{"units": ["mmol/L"], "low": "6", "high": "3"}], "source": "somewhere real"}]}',
         "must be below"),
    ],
)  # fmt: skip
def test_a_bad_rule_file_is_refused_with_the_reason(
    tmp_path: Path, content: str, message: str
) -> None:
    site = tmp_path / "bad.json"
    site.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_rules("bad", rules_dir=tmp_path)


def test_unknown_rule_set_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="not one of the available rule sets: default"):
        load_rules("nonexistent")
    with pytest.raises(ConfigError, match="not a path"):
        load_rules("../../etc/passwd")


FHIR_WITH_PHI = (
    '{"resourceType": "Observation", "subject": {"display": "DOE^JANE MRN0099123"}, '
    '"valueQuantity": {"value": 6.8123}}'
)


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd", "/tmp/x/obs.json", "obs.json", "../obs", "C:\\rules", "obs json", ""],
)
def test_issue_15_item_2_rule_sets_are_names_never_paths(tmp_path: Path, name: str) -> None:
    """Issue 15 item 2: pointing critical_rules at any file reads nothing and says nothing."""
    (tmp_path / "obs.json").write_text(FHIR_WITH_PHI)
    with pytest.raises(ConfigError) as caught:
        load_rules(name, rules_dir=tmp_path if name == "obs.json" else None)
    message = str(caught.value)
    assert "must be a rule set name" in message and caught.value.__context__ is None
    assert "DOE" not in message and "6.8123" not in message and "passwd" not in message


def test_issue_15_item_2_errors_never_quote_the_file_nor_reveal_paths(tmp_path: Path) -> None:
    """Issue 15 item 2: a file in the rules directory that is not a rule set is refused by
    name, quoting none of its content; a missing name does not say where it was looked for."""
    (tmp_path / "obs.json").write_text(FHIR_WITH_PHI)
    (tmp_path / "cut.json").write_text(FHIR_WITH_PHI[:40])
    (tmp_path / "linked.json").symlink_to(RULES_DIR / "default.json")
    for name in ("obs", "cut"):
        with pytest.raises(ConfigError) as caught:
            load_rules(name, rules_dir=tmp_path)
        message = str(caught.value)
        assert f"critical rule set {name!r} is not" in message
        assert "DOE" not in message and "MRN" not in message and "6.8123" not in message
        assert str(tmp_path) not in message and caught.value.__context__ is None
    with pytest.raises(ConfigError) as missing:
        load_rules("absent", rules_dir=tmp_path)
    assert str(tmp_path) not in str(missing.value) and "/" not in str(missing.value)
    with pytest.raises(ConfigError):  # a symlink in the rules directory is not followed
        load_rules("linked", rules_dir=tmp_path)
