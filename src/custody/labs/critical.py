"""Critical-value rules keyed by LOINC code, and the check run on every parsed result.

CLIA (42 CFR 493.1291(g)) requires the laboratory to tell the clinician at once when a result
falls in a life-threatening range. The limits are a site's own policy: the default set names a
published source for every limit, and a site replaces it with its own file of the same shape.
Units are compared as written (case-insensitively): a result in a unit the rule does not list
is not judged, rather than converted on a guess.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from custody.errors import ConfigError
from custody.labs.model import LabResult

RULES_DIR = Path(__file__).parent / "rules"


class Limit(BaseModel):
    """Critical low and/or high for results reported in one of ``units``."""

    model_config = ConfigDict(extra="forbid")

    units: list[str] = Field(min_length=1)
    low: Decimal | None = None
    high: Decimal | None = None

    @model_validator(mode="after")
    def _one_bound(self) -> Limit:
        if self.low is None and self.high is None:
            raise ValueError("a limit needs low, high or both")
        if self.low is not None and self.high is not None and self.low >= self.high:
            raise ValueError("low must be below high")
        return self


class Rule(BaseModel):
    """One analyte: the LOINC codes it covers, its limits per unit, and where they come from."""

    model_config = ConfigDict(extra="forbid")

    analyte: str = Field(min_length=1)
    loinc: list[str] = Field(min_length=1)
    limits: list[Limit] = Field(min_length=1)
    source: str = Field(min_length=10, description="The published guidance or site policy")


class RuleSet(BaseModel):
    """A named set of rules, as loaded from a JSON file."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    rules: list[Rule]


# Sender flags that mean "critical" (HL7 table 0078 OBX-8; FHIR v3 ObservationInterpretation).
# Under CLIA the performing laboratory defines its own critical values: its flag alerts too.
SENDER_CRITICAL = {"HH": "high", "LL": "low", "AA": "abnormal", "CRITICAL": "abnormal"}
RULE_TABLE = "rule_table"
SENDER_FLAG = "sender_flag"


@dataclass(frozen=True)
class CriticalFinding:
    """A critical result: which rule or sender flag said so, which side, the limit crossed.

    ``alert_source`` is ``rule_table``, ``sender_flag`` or ``rule_table+sender_flag``; a
    finding from the sender's flag alone has no limit (the sender's own critical range).
    """

    result_id: str
    analyte: str
    loinc_code: str
    direction: str  # "low", "high" or (sender flag AA) "abnormal"
    limit: Decimal | None
    value: Decimal | None
    unit: str
    source: str
    alert_source: str = RULE_TABLE


class CriticalRules:
    """Rules indexed by LOINC code and unit for a constant-time check per result."""

    def __init__(self, rule_set: RuleSet) -> None:
        """Index the rule set."""
        self.name = rule_set.name
        self._index: dict[tuple[str, str], tuple[Rule, Limit]] = {}
        for rule in rule_set.rules:
            for code in rule.loinc:
                for limit in rule.limits:
                    for unit in limit.units:
                        self._index[(code, unit.casefold())] = (rule, limit)

    def check(self, result: LabResult) -> CriticalFinding | None:
        """The finding for a result critical by the rule table, the sender's flag, or both."""
        by_rule = self._by_rule(result)
        direction = SENDER_CRITICAL.get((result.abnormal_flag or "").strip().upper())
        if direction is None:
            return by_rule
        if by_rule is not None:
            return replace(by_rule, alert_source=f"{RULE_TABLE}+{SENDER_FLAG}")
        return CriticalFinding(
            result_id=result.result_id,
            analyte=result.display or result.code or result.loinc_code or "unknown",
            loinc_code=result.loinc_code or result.code or "",
            direction=direction,
            limit=None,
            value=result.value_numeric,
            unit=result.unit or "",
            source="the performing laboratory's own critical flag",
            alert_source=SENDER_FLAG,
        )

    def _by_rule(self, result: LabResult) -> CriticalFinding | None:
        """The rule table's finding, or None (also for units no rule lists)."""
        if result.loinc_code is None or result.value_numeric is None:
            return None
        found = self._index.get((result.loinc_code, (result.unit or "").casefold()))
        if found is None:
            return None
        rule, limit = found
        value = result.value_numeric
        # A bounded value ("<2.0") is critical only if its bound is past the limit too.
        if limit.low is not None and value < limit.low and result.comparator not in (">", ">="):
            return self._finding(result, rule, "low", limit.low)
        if limit.high is not None and value > limit.high and result.comparator not in ("<", "<="):
            return self._finding(result, rule, "high", limit.high)
        return None

    @staticmethod
    def _finding(result: LabResult, rule: Rule, direction: str, bound: Decimal) -> CriticalFinding:
        assert result.loinc_code is not None and result.value_numeric is not None
        return CriticalFinding(
            result_id=result.result_id,
            analyte=rule.analyte,
            loinc_code=result.loinc_code,
            direction=direction,
            limit=bound,
            value=result.value_numeric,
            unit=result.unit or "",
            source=rule.source,
        )


RULE_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def load_rules(name: str, rules_dir: Path | None = None) -> CriticalRules:
    """A rule set chosen by name, from the configured directory, else those shipped.

    The configured directory is ``CUSTODY_LAB_RULES_DIR`` (a site's ``<name>.json``). Never a
    path: a parameter that could name any file would read it and put what it holds
    into an error, i.e. into Prefect's run state (issue 15 item 2). Errors name the rule set
    and what is wrong with it, never a path, whether a path exists, or the file's content.

    Raises:
        ConfigError: the name is not a plain name, no rule set has it, or it is not valid.
    """
    if not isinstance(name, str) or not RULE_SET_NAME.fullmatch(name):
        raise ConfigError(
            "critical rule set must be a rule set name (letters, digits, '-' and '_'), not a path"
        )
    directories = [d for d in (rules_dir or _configured_dir(), RULES_DIR) if d is not None]
    path = next((p for p in (_rule_file(d, name) for d in directories) if p is not None), None)
    if path is None:
        raise ConfigError(
            f"critical rule set {name!r} is not one of the available rule sets: "
            f"{', '.join(available_rule_sets(rules_dir)) or 'none'}"
        )
    try:
        rule_set = RuleSet.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        invalid = ConfigError(
            f"critical rule set {name!r} is not valid JSON (line {exc.lineno}, column {exc.colno})"
        )
    except UnicodeDecodeError:
        invalid = ConfigError(f"critical rule set {name!r} is not UTF-8 text")
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {str(e['msg']).removeprefix('Value error, ')}"
            for e in exc.errors(include_input=False, include_url=False, include_context=False)
        )
        invalid = ConfigError(f"critical rule set {name!r} is not a valid rule set: {problems}")
    else:
        return CriticalRules(rule_set)
    raise invalid  # outside the except blocks: no __context__ carrying the file's content


def available_rule_sets(rules_dir: Path | None = None) -> list[str]:
    """The names a ``critical_rules`` parameter may take (configured and shipped)."""
    names: set[str] = set()
    for directory in (rules_dir or _configured_dir(), RULES_DIR):
        if directory is not None and directory.is_dir():
            names.update(
                p.stem for p in directory.glob("*.json") if RULE_SET_NAME.fullmatch(p.stem)
            )
    return sorted(names)


def _configured_dir() -> Path | None:
    from custody.settings import get_settings

    return get_settings().lab_rules_dir


def _rule_file(directory: Path, name: str) -> Path | None:
    """``directory/<name>.json`` if it is a regular file really inside the directory."""
    path = directory / f"{name}.json"
    if path.is_symlink() or not path.is_file():
        return None
    return path
