"""FHIR R4 JSON (single resources, Bundles of any type, bulk NDJSON) normalised to ``LabResult``.

No FHIR object model is used: a bulk export holds millions of Observations and building a full
resource object for each costs more than the whole normalisation, so only the elements
``LabResult`` needs are read, each checked for its JSON type on the way.

Decisions, so that the numbers in the tests can be explained:

* Every Observation that has a code is a result, lab or not (vital signs, surveys): the category
  filter belongs to whoever queries, not to the parser.
* An Observation without ``value[x]`` (a panel with ``hasMember``, a cancelled test) is a result
  without value. An Observation with no top-level value whose components carry values (blood
  pressure, eGFR) becomes one result per component that has a value; components without a value
  are skipped. When both exist, the top-level value is the result and components are ignored.
* A DiagnosticReport is not a result. It lends its identifier (or basedOn) as ``order_ref`` and
  its performer as fallback ``performing_lab`` to the Observations it lists that are in the same
  file; its ``contained`` Observations are all yielded; references to Observations elsewhere
  yield nothing.
* Bundle entries of other resource types, and entries without a resource (transaction
  requests, transaction responses) are skipped silently; a top-level resource of another type
  is one ``Rejected``.
* Numbers are parsed by the standard library straight into ``Decimal``: ``1.00`` stays
  ``1.00`` (the precision the lab reported), ``1E-245`` does not underflow, digits past 17
  survive. orjson parses ~3x faster but only into floats. End to end it matters little, as most
  of the time goes to normalising and validating ``LabResult``: on Synthea Observations as
  NDJSON, one core, ~27k results/s with exact decimals against ~31k/s with orjson.
* ``position`` counts JSON array items from 0, as FHIRPath does (``entry 4`` is
  ``Bundle.entry[4]``), and NDJSON lines from 1, as editors do.
* ``Rejected.reason`` names the element (``Observation.effectiveDateTime``), never its value.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

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

JsonObject = dict[str, Any]
Item = LabResult | Rejected | NotAResult

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
_BOM = b"\xef\xbb\xbf"
_MAX_ID = 200  # LabResult.result_id max_length
_MAX_BUNDLE_DEPTH = 8
_STATUSES = {status.value: status for status in ResultStatus}
_COMPARATORS = frozenset({"<", "<=", ">=", ">"})
_VALUE_KEYS = frozenset(
    f"value{kind}"
    for kind in (
        "Quantity",
        "CodeableConcept",
        "String",
        "Boolean",
        "Integer",
        "Range",
        "Ratio",
        "SampledData",
        "Time",
        "DateTime",
        "Period",
    )
)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]{0,63}")
_CODE_TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,40}")
_SUBJECT = ("Observation", "subject")
_YEAR_MONTH = re.compile(r"([0-9]{4})(?:-([0-9]{2}))?")


class _BadConstant(ValueError):
    """NaN and Infinity are JSON extensions Python accepts; FHIR JSON never contains them."""


def _reject_constant(name: str) -> Any:
    raise _BadConstant(name)


_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant)


class _Invalid(Exception):
    """An element has the wrong JSON type or value; the enclosing record becomes ``Rejected``."""


class _Origin(NamedTuple):
    """Where a resource sits, and the stable identity it gives its results (None: derive)."""

    file: str
    message_id: str | None
    position: str
    identity: str | None = None

    def at(self, step: str, identity: str | None = None, message_id: str | None = None) -> _Origin:
        position = f"{self.position}/{step}" if self.position else step
        return _Origin(self.file, message_id or self.message_id, position, identity)

    def source(self) -> SourceRef:
        return SourceRef(
            file=self.file, message_id=self.message_id, position=self.position or "resource"
        )

    def result_id(self, suffix: str = "") -> str:
        if self.identity is None:
            return derived_id("fhir", self.file, self.source().position)
        text = f"fhir:{self.identity}{suffix}"
        return text if len(text) <= _MAX_ID else derived_id("fhir", text)

    def reject(self, reason: str) -> Rejected:
        return Rejected(source=self.source(), reason=reason)


class _Report(NamedTuple):
    """What a DiagnosticReport lends the Observations it lists."""

    order_ref: str | None
    performing_lab: str | None


class _Value(NamedTuple):
    numeric: Decimal | None = None
    comparator: str | None = None
    text: str | None = None
    unit: str | None = None


_NO_VALUE = _Value()


class _Code(NamedTuple):
    code: str | None
    system: str | None
    loinc: str | None
    display: str | None


# ---------------------------------------------------------------------------------------------
# Entry point and format detection


def parse_fhir(data: bytes, file: str) -> Iterator[LabResult | Rejected | NotAResult]:
    """Normalise every Observation in a FHIR JSON or NDJSON file.

    The format is decided, and a file that is not FHIR JSON refused, when this is called rather
    than on the first ``next()``, so a caller can quarantine the file before loading anything.

    Args:
        data: The file's bytes (a UTF-8 BOM is ignored).
        file: The object key or path, recorded in every ``SourceRef``.

    Returns:
        Results and rejections in file order.

    Raises:
        FormatMismatchError: The file is empty, binary, not JSON, a JSON value that is not a
            FHIR resource, or NDJSON in which no line is a FHIR resource.
    """
    body = data.removeprefix(_BOM)
    if not body.strip():
        raise FormatMismatchError("empty file: no FHIR JSON")
    lines = body.split(b"\n")
    first = next(i for i, line in enumerate(lines) if line.strip())
    first_value = _decode(lines[first].rstrip(b"\r"))
    if not any(line.strip() for line in lines[first + 1 :]):
        if isinstance(first_value, _NotJson):
            raise FormatMismatchError(f"not FHIR JSON: {first_value.reason}")
        return _top_level(_check_document(first_value), file)
    whole_error = None
    if not isinstance(first_value, dict) and body.lstrip().startswith(b"{"):
        # A line that is not a whole object: pretty-printed JSON, or NDJSON with a bad line 1.
        document = _decode(body, with_line=True)
        if not isinstance(document, _NotJson):
            return _top_level(_check_document(document), file)
        whole_error = document.reason
    return _ndjson(lines, file, whole_error)


class _NotJson(NamedTuple):
    """Why bytes did not parse (a distinct type: a JSON string parses to ``str`` too)."""

    reason: str


def _decode(body: bytes, with_line: bool = False) -> Any:
    """The parsed JSON value, or ``_NotJson`` saying why there is none."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return _NotJson("not UTF-8 text (binary?)")
    try:
        return _DECODER.decode(text)
    except (ValueError, RecursionError) as exc:
        return _NotJson(_json_error(exc, with_line))


def _json_error(exc: ValueError | RecursionError, with_line: bool) -> str:
    """Describe a parse failure by position only: the decoder's text never quotes content."""
    if isinstance(exc, json.JSONDecodeError):
        where = f"line {exc.lineno} column {exc.colno}" if with_line else f"column {exc.colno}"
        return f"invalid JSON: {exc.msg} at {where}"
    if isinstance(exc, _BadConstant):
        return "invalid JSON: NaN/Infinity is not a JSON number"
    if isinstance(exc, RecursionError):
        return "invalid JSON: nested too deeply"
    return "invalid JSON: number out of range"


def _check_document(document: Any) -> JsonObject:
    """Refuse a JSON value that is not a resource: the file is not FHIR, however it parsed."""
    if not isinstance(document, dict):
        kind = "an array" if isinstance(document, list) else "a scalar"
        raise FormatMismatchError(f"not FHIR JSON: the document is {kind}, not a resource")
    if not isinstance(document.get("resourceType"), str):
        raise FormatMismatchError("not FHIR JSON: the document has no resourceType")
    return document


def _ndjson(lines: list[bytes], file: str, whole_error: str | None) -> Iterator[Item]:
    """Find the first resource line eagerly (or refuse the file), then stream the rest.

    Args:
        lines: The file split on LF.
        file: Recorded in every ``SourceRef``.
        whole_error: Why the file did not parse as one document, if it looked like one: that
            says more than line 1's problem when no line parses.
    """
    pending: list[Rejected] = []
    for index, line in enumerate(lines):
        outcome = _ndjson_line(line, index + 1, file)
        if outcome is None:
            continue
        if isinstance(outcome, Rejected):
            pending.append(outcome)
            continue
        return _ndjson_stream(lines, index, outcome, pending, file)
    raise FormatMismatchError(f"not FHIR JSON or NDJSON: {whole_error or pending[0].reason}")


def _ndjson_stream(
    lines: list[bytes], first: int, resource: JsonObject, pending: list[Rejected], file: str
) -> Iterator[Item]:
    yield from pending
    yield from _top_level(resource, file, f"line {first + 1}")
    for index in range(first + 1, len(lines)):
        outcome = _ndjson_line(lines[index], index + 1, file)
        if outcome is None:
            continue
        if isinstance(outcome, Rejected):
            yield outcome
        else:
            yield from _top_level(outcome, file, f"line {index + 1}")


def _ndjson_line(line: bytes, number: int, file: str) -> JsonObject | Rejected | None:
    """A resource, the rejection of a line that is not one, or None for a blank line."""
    if not line.strip():
        return None
    parsed = _decode(line.rstrip(b"\r"))
    if isinstance(parsed, dict) and isinstance(parsed.get("resourceType"), str):
        return parsed
    if isinstance(parsed, _NotJson):
        problem = parsed.reason
    else:
        problem = "not a FHIR resource (no resourceType)"
    source = SourceRef(file=file, position=f"line {number}")
    return Rejected(source=source, reason=f"line {number}: {problem}")


# ---------------------------------------------------------------------------------------------
# Resources


def _top_level(resource: JsonObject, file: str, position: str = "") -> Iterator[Item]:
    rtype = resource["resourceType"]
    message_id = _plain_id(resource)
    origin = _Origin(file, message_id, position, _identity(rtype, message_id, None))
    if rtype in ("Observation", "DiagnosticReport", "Bundle"):
        yield from _resource(resource, origin, depth=0)
    else:
        shown = rtype if _TYPE_NAME.fullmatch(rtype) else "The resource"
        yield origin.reject(f"{shown} is not an Observation, DiagnosticReport or Bundle")


def _resource(
    resource: JsonObject, origin: _Origin, depth: int, report: _Report | None = None
) -> Iterator[Item]:
    """Dispatch on resourceType; anything else is not lab data and yields nothing."""
    rtype = resource.get("resourceType")
    if rtype == "Observation":
        yield from _observation(resource, origin, report)
    elif rtype == "DiagnosticReport":
        yield from _diagnostic_report(resource, origin)
    elif rtype == "Bundle":
        yield from _bundle(resource, origin, depth)


def _plain_id(resource: JsonObject) -> str | None:
    """``Resource.id`` when it is a usable string; anything else is as good as absent."""
    rid = resource.get("id")
    return rid if isinstance(rid, str) and rid and _encodable(rid) else None


def _identity(rtype: Any, rid: str | None, full_url: Any) -> str | None:
    """The resource's identity: an absolute fullUrl, else ``Type/id``, else None (derive)."""
    if isinstance(full_url, str) and _SCHEME.match(full_url) and _encodable(full_url):
        return full_url
    if rid is not None and isinstance(rtype, str) and _encodable(rtype):
        return f"{rtype}/{rid}"
    return None


def _bundle(bundle: JsonObject, origin: _Origin, depth: int) -> Iterator[Item]:
    """Walk entries in order, yielding each Observation once with its report's context.

    Reports usually come before or after the Observations they list, so a first pass links
    report references to entries and the second yields.
    """
    if depth >= _MAX_BUNDLE_DEPTH:
        yield origin.reject(f"Bundle nested more than {_MAX_BUNDLE_DEPTH} levels deep")
        return
    bundle_origin = _Origin(
        origin.file, _plain_id(bundle) or origin.message_id, origin.position, origin.identity
    )
    entries = bundle.get("entry")
    if entries is None:
        return
    if not isinstance(entries, list):
        yield bundle_origin.reject("Bundle.entry is not an array")
        return
    resources: list[tuple[int, JsonObject, _Origin]] = []
    for index, entry in enumerate(entries):
        found = _entry_resource(entry, index, bundle_origin)
        if isinstance(found, Rejected):
            yield found
        elif found is not None:
            resources.append((index, *found))
    contexts = _link_reports(resources)
    for index, resource, entry_origin in resources:
        yield from _resource(resource, entry_origin, depth + 1, contexts.get(index))


def _entry_resource(
    entry: Any, index: int, origin: _Origin
) -> tuple[JsonObject, _Origin] | Rejected | None:
    """An entry's resource with its origin; None for entries that carry none (requests)."""
    step = f"entry {index}"
    if not isinstance(entry, dict):
        return origin.at(step).reject(f"Bundle.entry[{index}] is not an object")
    resource = entry.get("resource")
    if resource is None:
        return None
    if not isinstance(resource, dict):
        return origin.at(step).reject(f"Bundle.entry[{index}].resource is not an object")
    rid = _plain_id(resource)
    identity = _identity(resource.get("resourceType"), rid, entry.get("fullUrl"))
    message_id = None if origin.message_id else rid
    return resource, origin.at(step, identity, message_id)


def _link_reports(resources: list[tuple[int, JsonObject, _Origin]]) -> dict[int, _Report]:
    """Map entry index -> context of the first DiagnosticReport that lists the Observation."""
    by_reference: dict[str, int] = {}
    for index, resource, origin in resources:
        if resource.get("resourceType") != "Observation":
            continue
        if origin.identity is not None:
            by_reference.setdefault(origin.identity, index)
        rid = _plain_id(resource)
        if rid is not None:
            by_reference.setdefault(f"Observation/{rid}", index)
    contexts: dict[int, _Report] = {}
    for _, resource, _ in resources:
        if resource.get("resourceType") != "DiagnosticReport":
            continue
        try:
            report = _report_context(resource)
            references = _result_references(resource)
        except _Invalid:
            continue  # rejected once, when the report itself is walked
        for reference in references:
            target = by_reference.get(reference)
            if target is not None:
                contexts.setdefault(target, report)
    return contexts


def _result_references(report: JsonObject) -> list[str]:
    references = []
    for i, item in enumerate(_array(report, "result", "DiagnosticReport")):
        ref = _obj_item(item, f"DiagnosticReport.result[{i}]")
        text = _str(ref, "reference", f"DiagnosticReport.result[{i}]")
        if text is not None:
            references.append(text)
    return references


def _report_context(report: JsonObject) -> _Report:
    """The accession a report carries (identifier, else basedOn) and who performed it."""
    identifier = _first(report, "identifier", "DiagnosticReport")
    order_ref = _str(identifier, "value", "DiagnosticReport.identifier[0]") if identifier else None
    if order_ref is None:
        order_ref = _reference(_first(report, "basedOn", "DiagnosticReport"), "basedOn[0]")
    return _Report(order_ref, _performer(report, "DiagnosticReport"))


def _diagnostic_report(report: JsonObject, origin: _Origin) -> Iterator[Item]:
    """Yield a report's contained Observations; the report itself is not a result."""
    try:
        context = _report_context(report)
        _result_references(report)
        contained = _array(report, "contained", "DiagnosticReport")
    except _Invalid as exc:
        yield origin.reject(str(exc))
        return
    for index, item in enumerate(contained):
        step = f"contained {index}"
        if not isinstance(item, dict):
            yield origin.at(step).reject(f"DiagnosticReport.contained[{index}] is not an object")
            continue
        if item.get("resourceType") != "Observation":
            continue
        local = _plain_id(item)
        identity = f"{origin.identity}#{local}" if origin.identity and local else None
        yield from _observation(item, origin.at(step, identity), context)


# ---------------------------------------------------------------------------------------------
# Observation


def _observation(obs: JsonObject, origin: _Origin, report: _Report | None) -> list[Item]:
    """One result per Observation, or one per valued component when the parent has no value.

    Unexpected exceptions become a ``Rejected`` naming only the exception type: a parser over
    untrusted input must not stop a whole file (tests assert this never happens on real data).
    """
    try:
        return _observation_results(obs, origin, report)
    except ValidationError as exc:
        fields = ", ".join(sorted({str(err["loc"][0]) for err in exc.errors() if err["loc"]}))
        return [origin.reject(f"Observation does not fit LabResult ({fields})")]
    except Exception as exc:
        return [origin.reject(f"unexpected {type(exc).__name__} normalising Observation")]


def _observation_results(obs: JsonObject, origin: _Origin, report: _Report | None) -> list[Item]:
    try:
        common = _common(obs, report)
        bad_times = common.pop(_BAD_TIMES)
        code = _code(obs, "Observation")
        value = _value(obs, "Observation")
        components = obs.get("component")
        valued = _valued(components) if components else []
        if value is not None or not valued:
            only = _result(origin, "", common, code, value, _detail(obs, "Observation"))
            unused = None if value is not None else set[int]()
            return [
                *_quarantined_if_badly_dated([only], bad_times),
                *_unread(components, origin, unused),
            ]
    except _Invalid as exc:
        return [origin.reject(str(exc))]
    items = _quarantined_if_badly_dated(_components(valued, origin, common), bad_times)
    return [*items, *_unread(components, origin, {i for i, _ in valued})]


def _unread(components: Any, origin: _Origin, used: set[int] | None = None) -> list[Item]:
    """Components that give no result, each counted (issue 16 item 4): nothing vanishes."""
    if not isinstance(components, list):
        return []
    counted: list[Item] = []
    for index, component in enumerate(components):
        if used is not None and index in used:
            continue
        where = origin.at(f"component {index}", origin.identity).source()
        if used is None:
            reason = "component of an Observation whose own value is the result"
        elif isinstance(component, dict) and "dataAbsentReason" in component:
            reason = "component with dataAbsentReason and no value"
        else:
            reason = "component without a value"
        counted.append(NotAResult(source=where, reason=reason))
    return counted


def _components(
    valued: list[tuple[int, JsonObject]], origin: _Origin, common: dict[str, Any]
) -> list[Item]:
    items: list[Item] = []
    for index, component in valued:
        path = f"Observation.component[{index}]"
        where = origin.at(f"component {index}", origin.identity)
        try:
            parts = (_code(component, path), _value(component, path), _detail(component, path))
        except _Invalid as exc:
            items.append(where.reject(str(exc)))
            continue
        items.append(_result(where, f"/component/{index}", common, *parts))
    return items


def _valued(components: Any) -> list[tuple[int, JsonObject]]:
    """The components that carry a value[x], with their index."""
    if not isinstance(components, list):
        raise _Invalid("Observation.component is not an array")
    return [
        (i, c)
        for i, c in enumerate(components)
        if isinstance(c, dict) and not _VALUE_KEYS.isdisjoint(c)
    ]


def _result(
    origin: _Origin,
    suffix: str,
    common: dict[str, Any],
    code: _Code,
    value: _Value | None,
    detail: dict[str, Any],
) -> LabResult:
    value = value or _NO_VALUE
    return LabResult(
        result_id=origin.result_id(suffix),
        code=code.code,
        code_system=code.system,
        loinc_code=code.loinc,
        display=code.display,
        value_numeric=value.numeric,
        comparator=value.comparator,
        value_text=value.text,
        unit=value.unit,
        source=origin.source(),
        **common,
        **detail,
    )


def _common(obs: JsonObject, report: _Report | None) -> dict[str, Any]:
    """Fields an Observation's components share with it: status, who, when, where, order."""
    raw = obs.get("status")
    status = _STATUSES.get(raw) if type(raw) is str else None
    if status is None:
        raise _Invalid(_status_problem(raw))
    order_ref = report.order_ref if report else None
    if order_ref is None and "basedOn" in obs:
        order_ref = _reference(_first(obs, "basedOn", "Observation"), "Observation.basedOn[0]")
    performing_lab = _performer(obs, "Observation") if "performer" in obs else None
    if performing_lab is None and report is not None:
        performing_lab = report.performing_lab
    subject = obs.get("subject")
    patient_ref = None
    if subject is not None:
        patient_ref = _str(_obj_item(subject, "Observation.subject"), "reference", *_SUBJECT)
    issued = obs.get("issued")
    bad_times: list[str] = []
    return {
        "status": status,
        "patient_ref": patient_ref,
        "order_ref": order_ref,
        "performing_lab": performing_lab,
        "collected_at": _lenient(lambda: _effective(obs), bad_times),
        "resulted_at": None
        if issued is None
        else _lenient(lambda: _datetime(issued, "Observation.issued"), bad_times),
        _BAD_TIMES: bad_times,
    }


_BAD_TIMES = "_bad_times"


def _lenient(read: Callable[[], datetime | None], problems: list[str]) -> datetime | None:
    """A time, or None with the reason kept, rather than losing the whole Observation.

    The Observation is still quarantined for it, but what was read reaches the critical check
    (issue 16 item 3).
    """
    try:
        return read()
    except _Invalid as exc:
        problems.append(str(exc))
        return None


def _quarantined_if_badly_dated(items: list[Item], bad_times: list[str]) -> list[Item]:
    if not bad_times:
        return items
    reason = "; ".join(bad_times)
    return [
        Rejected(source=i.source, reason=reason, result=i) if isinstance(i, LabResult) else i
        for i in items
    ]


def _status_problem(raw: Any) -> str:
    if raw is None or raw == "":
        return "Observation.status missing"
    if not isinstance(raw, str):
        return "Observation.status is not a string"
    shown = f"'{raw}' " if _CODE_TOKEN.fullmatch(raw) else ""
    return f"Observation.status {shown}is not a FHIR status"


def _effective(obs: JsonObject) -> datetime | None:
    """When the specimen was taken: effectiveDateTime, effectivePeriod.start or effectiveInstant."""
    text = obs.get("effectiveDateTime")
    if text is not None:
        return _datetime(text, "Observation.effectiveDateTime")
    period = _obj(obs, "effectivePeriod", "Observation")
    if period is not None:
        start = period.get("start")
        return None if start is None else _datetime(start, "Observation.effectivePeriod.start")
    instant = obs.get("effectiveInstant")
    return None if instant is None else _datetime(instant, "Observation.effectiveInstant")


def _performer(resource: JsonObject, path: str) -> str | None:
    performer = _first(resource, "performer", path)
    if performer is None:
        return None
    display = _str(performer, "display", f"{path}.performer[0]")
    return display or _str(performer, "reference", f"{path}.performer[0]")


def _reference(ref: JsonObject | None, path: str) -> str | None:
    """A Reference's literal reference, else its logical identifier's value."""
    if ref is None:
        return None
    text = _str(ref, "reference", path)
    if text is not None:
        return text
    identifier = _obj(ref, "identifier", path)
    return _str(identifier, "value", f"{path}.identifier") if identifier else None


def _code(node: JsonObject, path: str) -> _Code:
    """The LOINC coding if there is one (that is what results are matched on), else the first."""
    concept = node.get("code")
    if concept is None:
        raise _Invalid(f"{path}.code missing")
    concept = _obj_item(concept, path, "code")
    codings = concept.get("coding")
    chosen = None
    if codings is not None:
        if type(codings) is not list:
            raise _Invalid(f"{path}.code.coding is not an array")
        for i, coding in enumerate(codings):
            if type(coding) is not dict:
                raise _Invalid(f"{path}.code.coding[{i}] is not an object")
            if coding.get("system") == LOINC:
                chosen = coding
                break
            chosen = chosen or coding
    text = _str(concept, "text", path, "code")
    code = system = display = None
    if chosen is not None:
        code = _str(chosen, "code", path, "code.coding")
        system = _str(chosen, "system", path, "code.coding")
        display = _str(chosen, "display", path, "code.coding")
    if code is None and text is None and display is None:
        raise _Invalid(f"{path}.code missing")
    return _Code(code, system, code if system == LOINC else None, display or text)


def _value(node: JsonObject, path: str) -> _Value | None:
    """value[x] as a number (Quantity, integer) or text (everything else that is a value)."""
    keys = _VALUE_KEYS.intersection(node)
    if not keys:
        return None
    if len(keys) > 1:
        raise _Invalid(f"{path} has more than one value[x]")
    key = next(iter(keys))
    where = f"{path}.{key}"
    raw = node[key]
    if key == "valueQuantity":
        return _quantity(_obj_item(raw, where), where)
    if key == "valueCodeableConcept":
        return _Value(text=_concept_text(_obj_item(raw, where), where))
    if key in ("valueString", "valueTime", "valueDateTime"):
        return _Value(text=_text(raw, where))
    if key == "valueBoolean":
        if not isinstance(raw, bool):
            raise _Invalid(f"{where} is not a boolean")
        return _Value(text="true" if raw else "false")
    if key == "valueInteger":
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise _Invalid(f"{where} is not an integer")
        return _Value(numeric=Decimal(raw))
    if key == "valueRange":
        return _pair(_obj_item(raw, where), where, ("low", "high"), "-")
    if key == "valueRatio":
        return _pair(_obj_item(raw, where), where, ("numerator", "denominator"), ":")
    if key == "valuePeriod":
        period = _obj_item(raw, where)
        start, end = _str(period, "start", where), _str(period, "end", where)
        return _Value(text=f"{start or ''}/{end or ''}")
    raise _Invalid(f"{where} is not a supported value type")


def _quantity(quantity: JsonObject, path: str) -> _Value:
    comparator = _str(quantity, "comparator", path)
    if comparator is not None and comparator not in _COMPARATORS:
        raise _Invalid(f"{path}.comparator is not <, <=, >= or >")
    return _Value(
        numeric=_number(quantity.get("value"), f"{path}.value"),
        comparator=comparator,
        unit=_unit(quantity, path),
    )


def _unit(quantity: JsonObject, path: str) -> str | None:
    """The UCUM code when the sender coded the unit in UCUM, else the unit as written."""
    code = _str(quantity, "code", path)
    if code is not None and _str(quantity, "system", path) == UCUM:
        return code
    return _str(quantity, "unit", path) or code


def _pair(node: JsonObject, path: str, names: tuple[str, str], sep: str) -> _Value:
    """A Range or Ratio as text (``1:640``, ``2-5``): neither is one number."""
    numbers: list[str] = []
    unit = None
    for name in names:
        quantity = _obj(node, name, path)
        if quantity is None:
            numbers.append("")
            continue
        number = _number(quantity.get("value"), f"{path}.{name}.value")
        numbers.append("" if number is None else str(number))
        unit = unit or _unit(quantity, f"{path}.{name}")
    return _Value(text=sep.join(numbers), unit=unit)


def _concept_text(concept: JsonObject, path: str) -> str | None:
    text = _str(concept, "text", path)
    if text is not None:
        return text
    coding = _first(concept, "coding", path)
    if coding is None:
        return None
    return _str(coding, "display", f"{path}.coding[0]") or _str(coding, "code", f"{path}.coding")


def _detail(node: JsonObject, path: str) -> dict[str, Any]:
    """Reference range and interpretation, which an Observation and a component each carry."""
    low = high = text = None
    rng = _first(node, "referenceRange", path)
    if rng is not None:
        rpath = f"{path}.referenceRange[0]"
        low_q, high_q = _obj(rng, "low", rpath), _obj(rng, "high", rpath)
        low = _number(low_q.get("value"), f"{rpath}.low.value") if low_q else None
        high = _number(high_q.get("value"), f"{rpath}.high.value") if high_q else None
        text = _str(rng, "text", rpath)
    flag = None
    interpretation = _first(node, "interpretation", path)
    if interpretation is not None:
        coding = _first(interpretation, "coding", f"{path}.interpretation[0]")
        if coding is not None:
            flag = _str(coding, "code", f"{path}.interpretation[0].coding[0]")
    return {
        "reference_low": low,
        "reference_high": high,
        "reference_text": text,
        "abnormal_flag": flag,
    }


# ---------------------------------------------------------------------------------------------
# Typed access to parsed JSON: each raises _Invalid naming the element, never its value.


def _obj(node: JsonObject, key: str, *where: str) -> JsonObject | None:
    value = node.get(key)
    return None if value is None else _obj_item(value, *where, key)


def _obj_item(value: Any, *where: str) -> JsonObject:
    if type(value) is not dict:
        raise _Invalid(f"{'.'.join(where)} is not an object")
    return value


def _array(node: JsonObject, key: str, *where: str) -> list[Any]:
    value = node.get(key)
    if value is None:
        return []
    if type(value) is not list:
        raise _Invalid(f"{'.'.join(where)}.{key} is not an array")
    return value


def _first(node: JsonObject, key: str, *where: str) -> JsonObject | None:
    items = _array(node, key, *where)
    return _obj_item(items[0], *where, f"{key}[0]") if items else None


def _str(node: JsonObject, key: str, *where: str) -> str | None:
    """``node[key]`` as text; ``where`` names the node, joined only if there is a problem."""
    value = node.get(key)
    if value is None:
        return None
    if type(value) is str and value.isascii():  # the common case, checked without a call
        return value or None
    return _text(value, ".".join((*where, key)))


def _text(value: Any, path: str) -> str | None:
    """A JSON string as ``str``; empty means absent, and lone surrogates are refused."""
    if not isinstance(value, str):
        raise _Invalid(f"{path} is not a string")
    if not _encodable(value):
        raise _Invalid(f"{path} is not valid Unicode")
    return value or None


def _encodable(text: str) -> bool:
    """False for text with lone surrogates (escaped half pairs): they cannot be stored."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _number(value: Any, path: str) -> Decimal | None:
    if value is None:
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(value)
    raise _Invalid(f"{path} is not a number")


def _datetime(text: Any, path: str) -> datetime:
    """A FHIR date, dateTime or instant at the start of its precision.

    ``2013`` is 2013-01-01 00:00 and naive, as is any value without an offset: inventing a
    time zone would be a guess, while an offset given is kept. Full dates go to the C parser,
    which also takes a few ISO 8601 spellings FHIR does not (``+0100``): harmless, unambiguous.
    """
    if type(text) is not str:
        raise _Invalid(f"{path} is not a string")
    try:
        if len(text) >= 10 and text[4] == "-" and text[7] == "-" and text[10:11] in ("", "T"):
            return datetime.fromisoformat(text)
        match = _YEAR_MONTH.fullmatch(text)
        if match is not None:
            return datetime(int(match[1]), int(match[2] or 1), 1)
    except ValueError:
        raise _Invalid(f"{path} is not a valid date or time") from None
    raise _Invalid(f"{path} is not a FHIR dateTime")
