"""Record-level checks a parsed result must pass before it lands; failures are quarantined.

The parsers reject what they cannot read; these checks reject what reads but cannot be right:
a malformed LOINC code, a number without a unit or too large to store, a result reported before
it was collected, an unknown status, a reference range upside down. Times without a zone get the
site's zone here, so that everything stored is an instant.
"""

from __future__ import annotations

import functools
import re
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from custody.labs.model import LabResult, ResultStatus

_LOINC = re.compile(r"^\d{1,7}-\d$")
_NUMBERS = ("value_numeric", "reference_low", "reference_high")
_DIGITS = 300  # most digits a stored number may have before, or after, the decimal point
# Analytes reported without a unit by convention (ratios, pH); UCUM writes them as "1" or "{...}".
UNITLESS_OK = {"6301-6", "34714-6", "2744-1", "11558-4", "5803-2", "2756-5", "2965-2", "5811-5"}


@functools.lru_cache(maxsize=4096)
def loinc_check_digit_ok(code: str) -> bool:
    """LOINC's mod-10 check digit (the digit after the hyphen), as LOINC documents it.

    Cached: a feed carries a few hundred codes over millions of results.
    """
    body, _, check = code.partition("-")
    digits = [int(c) for c in body]
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2 == 0:  # rightmost and every second digit leftwards are doubled
            doubled = digit * 2
            total += doubled // 10 + doubled % 10
        else:
            total += digit
    return (10 - total % 10) % 10 == int(check)


def problems(result: LabResult) -> list[str]:
    """Why the result cannot land (empty when it can). Reasons name fields, never values."""
    found: list[str] = []
    if result.loinc_code is not None:
        if not _LOINC.fullmatch(result.loinc_code):
            found.append("loinc_code is not in LOINC's NNNNN-N form")
        elif not loinc_check_digit_ok(result.loinc_code):
            found.append("loinc_code fails LOINC's check digit")
    if (
        result.value_numeric is not None
        and not (result.unit or "").strip()
        and result.loinc_code not in UNITLESS_OK
    ):
        found.append("numeric value without a unit")
    for name in _NUMBERS:
        number = getattr(result, name)
        if number is not None and not _storable(number):
            found.append(f"{name} out of range: over {_DIGITS} digits before or after the point")
    if result.status is ResultStatus.UNKNOWN:
        found.append("status is missing or unknown")
    if (
        result.collected_at is not None
        and result.resulted_at is not None
        and _comparable(result.resulted_at) < _comparable(result.collected_at)
    ):
        found.append("resulted before collected")
    if (
        result.reference_low is not None
        and result.reference_high is not None
        and result.reference_low > result.reference_high
    ):
        found.append("reference range low is above high")
    return found


def _storable(number: Decimal) -> bool:
    """Whether every store holds the number as sent (no lab value comes near the limit).

    Past it, PostgreSQL's numeric refuses the whole file's landing with an error that quotes the
    value (PHI, which would reach Prefect's logs), and SQLite's REAL turns it into infinity.
    """
    exponent = number.as_tuple().exponent
    if not isinstance(exponent, int):  # NaN, Infinity: no parser produces them, but be sure
        return False
    return exponent >= -_DIGITS and number.adjusted() < _DIGITS


def with_zone(result: LabResult, zone: ZoneInfo) -> LabResult:
    """The result with naive times placed in ``zone`` (aware ones are kept).

    ``custody.labs.zones.ZonePolicy`` is the full rule (per sender and per source first).
    """
    from custody.labs.zones import ZonePolicy

    return ZonePolicy(default=zone).place(result)


def _comparable(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=ZoneInfo("UTC"))
