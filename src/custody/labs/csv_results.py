"""Lab results delivered as CSV, in our default layout, Synthea's, or one a ``CsvMapping`` gives.

The default layout has one header row naming these columns, in any order (cells may be empty;
``patient_ref``, ``loinc_code``, ``value`` and ``collected_at`` must exist as columns)::

    result_id, patient_ref, order_ref, loinc_code, display, value, unit, reference_low,
    reference_high, abnormal_flag, status, collected_at, resulted_at, performing_lab, technician

* ``value`` is read as a number when it is one (optionally after ``<``, ``<=``, ``>``, ``>=``,
  which becomes the comparator) and as text otherwise, unless the mapping names a column that
  says which (Synthea's ``TYPE``): then a non-number in a numeric row is rejected.
* ``status`` takes FHIR codes (``final``) or HL7 v2 OBX-11 codes (``F``); empty means the
  mapping's default.
* Times are ISO 8601 (``2023-10-10T04:17:47Z``, ``2023-10-10``); an offset makes them aware.
* ``result_id`` is the sender's id under a ``csv:`` prefix, so it cannot collide with the
  ``fhir:`` ids; rows without one get a ``derived_id`` from the mapping's identifying columns,
  plus the occurrence number for the second and later rows with the same values.

The text must be UTF-8 (a BOM is ignored). Rows the mapping's filter excludes (Synthea's
vital signs and surveys) are skipped without a ``Rejected``: they are not lab results, so they
are not errors either.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType
from typing import NamedTuple

from pydantic import ValidationError

from custody.labs.model import (
    FormatMismatchError,
    LabResult,
    NotAResult,
    Rejected,
    ResultStatus,
    SourceRef,
    derived_id,
)

Item = LabResult | Rejected | NotAResult

LOINC = "http://loinc.org"
_MAX_ID = 200  # LabResult.result_id max_length

DEFAULT_COLUMNS: tuple[str, ...] = (
    "result_id",
    "patient_ref",
    "order_ref",
    "loinc_code",
    "display",
    "value",
    "unit",
    "reference_low",
    "reference_high",
    "abnormal_flag",
    "status",
    "collected_at",
    "resulted_at",
    "performing_lab",
    "technician",
)
_NUMBER = re.compile(r"(<=|>=|<|>)?\s*([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)")
_STATUSES: dict[str, ResultStatus] = {status.value: status for status in ResultStatus}
_STATUSES.update(  # HL7 v2 OBX-11, mapped as the v2-to-FHIR guide does
    {
        "f": ResultStatus.FINAL,
        "u": ResultStatus.FINAL,
        "c": ResultStatus.CORRECTED,
        "p": ResultStatus.PRELIMINARY,
        "r": ResultStatus.PRELIMINARY,
        "s": ResultStatus.PRELIMINARY,
        "i": ResultStatus.REGISTERED,
        "x": ResultStatus.CANCELLED,
        "w": ResultStatus.ENTERED_IN_ERROR,
        "d": ResultStatus.ENTERED_IN_ERROR,
    }
)


def _frozen(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class CsvMapping:
    """How one CSV layout maps onto ``LabResult``.

    Attributes:
        columns: ``LabResult`` field (or ``value``) -> CSV column. Fields must be among
            ``DEFAULT_COLUMNS``; a column the file lacks leaves its field empty.
        required: Columns the header must have, or the file is not this layout at all.
        row_filter: Column -> value a row needs to be a lab result; other rows are skipped.
        id_columns: Columns identifying a row that has no ``result_id`` of its own.
        value_type_column: Column saying ``numeric`` or ``text`` for ``value``, if any.
        default_status: Status of rows that carry none.
    """

    columns: Mapping[str, str] = field(
        default_factory=lambda: _frozen({name: name for name in DEFAULT_COLUMNS})
    )
    required: frozenset[str] = frozenset({"patient_ref", "loinc_code", "value", "collected_at"})
    row_filter: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    id_columns: tuple[str, ...] = ("patient_ref", "order_ref", "loinc_code", "collected_at")
    value_type_column: str | None = None
    default_status: ResultStatus = ResultStatus.UNKNOWN

    def __post_init__(self) -> None:
        """Refuse a mapping naming fields ``LabResult`` lacks: a typo would drop data silently."""
        unknown = set(self.columns) - set(DEFAULT_COLUMNS)
        if unknown:
            raise ValueError(f"CsvMapping names unknown fields: {', '.join(sorted(unknown))}")


SYNTHEA_OBSERVATIONS = CsvMapping(
    columns=_frozen(
        {
            "patient_ref": "PATIENT",
            "loinc_code": "CODE",
            "display": "DESCRIPTION",
            "value": "VALUE",
            "unit": "UNITS",
            "collected_at": "DATE",
        }
    ),
    required=frozenset(
        {
            "DATE",
            "PATIENT",
            "ENCOUNTER",
            "CATEGORY",
            "CODE",
            "DESCRIPTION",
            "VALUE",
            "UNITS",
            "TYPE",
        }
    ),
    row_filter=_frozen({"CATEGORY": "laboratory"}),
    id_columns=("PATIENT", "ENCOUNTER", "CODE", "DATE"),
    value_type_column="TYPE",
    default_status=ResultStatus.FINAL,  # Synthea writes only final observations
)
"""Synthea's ``observations.csv``: the rows with CATEGORY ``laboratory``, CODE being LOINC."""


class _Plan(NamedTuple):
    """Column positions resolved once from the header, so rows are read by index."""

    width: int
    fields: dict[str, int]  # LabResult field (or "value") -> index
    names: dict[str, str]  # LabResult field -> column name, for reasons
    filters: tuple[tuple[int, str], ...]
    id_indexes: tuple[int | None, ...]
    value_type: int | None
    default_status: ResultStatus


def parse_csv(
    data: bytes, file: str, mapping: CsvMapping | None = None
) -> Iterator[LabResult | Rejected | NotAResult]:
    """Normalise the lab results in a CSV file.

    The header is checked when this is called, before any row is read, so a file of another
    kind is refused as a whole.

    Args:
        data: The file's bytes, UTF-8 (a BOM is ignored).
        file: The object key or path, recorded in every ``SourceRef``.
        mapping: The layout; the documented default columns when None.

    Returns:
        One ``LabResult`` or ``Rejected`` per data row the filter keeps, in file order.

    Raises:
        FormatMismatchError: The file is empty, binary, not UTF-8, or its header lacks a
            required column (the message names them).
    """
    mapping = mapping or CsvMapping()
    if b"\x00" in data:
        raise FormatMismatchError("binary file (NUL bytes): not CSV")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FormatMismatchError(f"not UTF-8 text (byte {exc.start}): not CSV") from None
    if not text.strip():
        raise FormatMismatchError("empty file: no CSV header")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next((row for row in reader if row), None)
    except csv.Error as exc:
        raise FormatMismatchError(f"not CSV: {exc}") from None
    if header is None:
        raise FormatMismatchError("no CSV header")
    plan = _plan([name.strip() for name in header], mapping)
    return _rows(reader, plan, file)


def _plan(header: list[str], mapping: CsvMapping) -> _Plan:
    """Resolve column names to indexes, refusing a header without the required columns."""
    index: dict[str, int] = {}
    for i, name in enumerate(header):
        index.setdefault(name, i)
    needed = set(mapping.required) | set(mapping.row_filter)
    if mapping.value_type_column:
        needed.add(mapping.value_type_column)
    missing = sorted(name for name in needed if name not in index)
    if missing:
        raise FormatMismatchError(f"not a lab results CSV: missing columns {', '.join(missing)}")
    fields = {f: index[c] for f, c in mapping.columns.items() if c in index}
    vtype = mapping.value_type_column
    return _Plan(
        width=len(header),
        fields=fields,
        names=dict(mapping.columns),
        filters=tuple((index[c], v) for c, v in mapping.row_filter.items()),
        id_indexes=tuple(index.get(c) for c in mapping.id_columns),
        value_type=index[vtype] if vtype else None,
        default_status=mapping.default_status,
    )


class _RowError(Exception):
    """A cell cannot be read; the row becomes ``Rejected`` with this reason."""


def _rows(reader: Iterator[list[str]], plan: _Plan, file: str) -> Iterator[Item]:
    seen: dict[tuple[str, ...], int] = {}
    line_num = getattr(reader, "line_num", 0)
    while True:
        start = line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line_num = getattr(reader, "line_num", line_num + 1)
            yield _reject(file, start, f"malformed CSV: {_csv_problem(exc)}")
            continue
        line_num = getattr(reader, "line_num", line_num + 1)
        if not row:
            continue
        if plan.filters and _filtered_out(row, plan.filters):  # counted, not dropped unseen
            yield NotAResult(
                source=SourceRef(file=file, position=f"line {start}"),
                reason="row outside the layout's lab-result filter",
            )
            continue
        if len(row) != plan.width:
            yield _reject(file, start, f"{len(row)} fields where the header has {plan.width}")
            continue
        try:
            yield _result(row, plan, file, start, seen)
        except _RowError as exc:
            yield _reject(file, start, str(exc))
        except ValidationError as exc:
            names = sorted({str(err["loc"][0]) for err in exc.errors() if err["loc"]})
            yield _reject(file, start, f"does not fit LabResult ({', '.join(names)})")


def _filtered_out(row: list[str], filters: tuple[tuple[int, str], ...]) -> bool:
    """True for a row the mapping's filter excludes (a short row is kept, to be rejected)."""
    width = len(row)
    return any(index < width and row[index] != value for index, value in filters)


def _csv_problem(exc: csv.Error) -> str:
    """The csv module's message without any quoted content (it quotes none today)."""
    return str(exc).split(":", 1)[0][:80]


def _reject(file: str, line: int, reason: str) -> Rejected:
    source = SourceRef(file=file, position=f"line {line}")
    return Rejected(source=source, reason=f"line {line}: {reason}")


def _result(
    row: list[str], plan: _Plan, file: str, line: int, seen: dict[tuple[str, ...], int]
) -> LabResult:
    # One pass over the mapped cells; a field whose column the file lacks reads as None.
    cell = {name: row[i].strip() or None for name, i in plan.fields.items()}.get
    numeric, comparator, text = _value(cell("value"), row, plan)
    loinc = cell("loinc_code")
    return LabResult(
        result_id=_result_id(cell("result_id"), row, plan, seen),
        patient_ref=cell("patient_ref"),
        order_ref=cell("order_ref"),
        display=cell("display"),
        unit=cell("unit"),
        abnormal_flag=cell("abnormal_flag"),
        performing_lab=cell("performing_lab"),
        technician=cell("technician"),
        code=loinc,
        code_system=LOINC if loinc else None,
        loinc_code=loinc,
        value_numeric=numeric,
        comparator=comparator,
        value_text=text,
        reference_low=_decimal(cell("reference_low"), plan, "reference_low"),
        reference_high=_decimal(cell("reference_high"), plan, "reference_high"),
        status=_status(cell("status"), plan),
        collected_at=_when(cell("collected_at"), plan, "collected_at"),
        resulted_at=_when(cell("resulted_at"), plan, "resulted_at"),
        source=SourceRef(file=file, position=f"line {line}"),
    )


def _result_id(
    given: str | None, row: list[str], plan: _Plan, seen: dict[tuple[str, ...], int]
) -> str:
    """The sender's id, else one derived from the identifying columns and the occurrence."""
    if given is not None:
        text = f"csv:{given}"
        return text if len(text) <= _MAX_ID else derived_id("csv", given)
    key = tuple([row[i].strip() if i is not None else "" for i in plan.id_indexes])
    occurrence = seen.get(key, 0)
    seen[key] = occurrence + 1
    if occurrence:
        return derived_id("csv", *key, str(occurrence))
    return derived_id("csv", *key)


def _value(
    raw: str | None, row: list[str], plan: _Plan
) -> tuple[Decimal | None, str | None, str | None]:
    """(number, comparator, text): a number when the type column or the cell says so."""
    if raw is None:
        return None, None, None
    kind = row[plan.value_type].strip().lower() if plan.value_type is not None else ""
    if kind == "text":
        return None, None, raw
    match = _NUMBER.fullmatch(raw)
    if match is not None:
        return Decimal(match[2]), match[1], None
    if kind == "numeric":
        raise _RowError(f"{_name(plan, 'value')} is not a number although the row says numeric")
    return None, None, raw


def _decimal(raw: str | None, plan: _Plan, name: str) -> Decimal | None:
    if raw is None:
        return None
    match = _NUMBER.fullmatch(raw)
    if match is None or match[1]:
        raise _RowError(f"{_name(plan, name)} is not a number")
    return Decimal(match[2])


def _status(raw: str | None, plan: _Plan) -> ResultStatus:
    if raw is None:
        return plan.default_status
    status = _STATUSES.get(raw.lower())
    if status is None:
        raise _RowError(f"{_name(plan, 'status')} is not a FHIR or HL7 v2 result status")
    return status


def _when(raw: str | None, plan: _Plan, name: str) -> datetime | None:
    if raw is None:
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        raise _RowError(f"{_name(plan, name)} is not an ISO 8601 date/time") from None


def _name(plan: _Plan, name: str) -> str:
    """How a reason names a cell: the field, and the file's column when it differs."""
    column = plan.names.get(name, name)
    return name if column == name else f"{name} ({column})"
