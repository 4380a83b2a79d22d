"""HL7 v2.3-2.5.1 ORU parser: every OBX of a file becomes a ``LabResult`` or a ``Rejected``.

Written with ``str.split`` rather than an HL7 library: lab feeds are large, the subset of HL7 we
need is small, and a one-pass splitter keeps the parser both fast and tolerant of the many ways
real senders bend the standard (mixed line endings, MLLP frames, batch envelopes, missing
trailing fields, 3- or 5-character MSH-2).

Only a file that is not HL7 v2 at all raises ``FormatMismatchError``, and it does so before the
first item is produced, so a caller never loads half of a file it should have quarantined. Any
other problem is confined to its message or OBX and reported as a ``Rejected`` whose reason names
the segment and field but never repeats a value that could be PHI.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from functools import lru_cache
from typing import BinaryIO

from custody.labs.model import (
    FormatMismatchError,
    LabResult,
    Rejected,
    ResultStatus,
    SourceRef,
    derived_id,
)

__all__ = ["parse_hl7", "parse_hl7_stream"]

_Item = LabResult | Rejected
_Value = tuple[Decimal | None, str | None, str | None]  # numeric, comparator, text
_NO_VALUE: _Value = (None, None, None)

_ENVELOPE = frozenset({"FHS", "BHS", "BTS", "FTS"})
# Unsolicited laboratory observations (specimen-, container- or order-centred) carry OBX
# exactly as ORU does; ORU^R30 (point of care) and other ORU triggers are accepted as ORU.
_OUL_TRIGGERS = frozenset({"R21", "R22", "R23", "R24"})
# OBX-11 codes under which an empty OBX-5 is what the sender means: no result was obtained
# (X), none was asked (N), deleted (D, W), or still to come (I, O). Any other, e.g. F, with
# no value is quarantined: a "final" result without a value is not a result.
_NO_VALUE_STATUSES = frozenset({"X", "N", "D", "W", "I", "O"})
_MLLP_TO_CR = str.maketrans({"\x0b": "\r", "\x1c": "\r"})
_OBX_FIELDS = 24  # OBX-23 is the last field read; shorter segments are padded to spare checks
_LEADING_BLANKS = " \t\f\ufeff"

# HL7 table 0085 onto FHIR Observation.status. R (not verified) is still preliminary and W
# (posted wrongly) is entered-in-error; O/N/S/U are mapped so they do not fall to 'unknown'.
_STATUS = {
    "F": ResultStatus.FINAL,
    "P": ResultStatus.PRELIMINARY,
    "R": ResultStatus.PRELIMINARY,
    "S": ResultStatus.PRELIMINARY,
    "C": ResultStatus.CORRECTED,
    "A": ResultStatus.AMENDED,
    "X": ResultStatus.CANCELLED,
    "N": ResultStatus.CANCELLED,
    "D": ResultStatus.ENTERED_IN_ERROR,
    "W": ResultStatus.ENTERED_IN_ERROR,
    "I": ResultStatus.REGISTERED,
    "O": ResultStatus.REGISTERED,
    "U": ResultStatus.FINAL,
}
_LOINC_SYSTEMS = frozenset({"LN", "LNC", "LOINC", "2.16.840.1.113883.6.1", "HTTP://LOINC.ORG"})
_NUMERIC_TYPES = frozenset({"NM", "SN"})
_CODED_TYPES = frozenset({"CE", "CWE", "CNE", "CF", "CD"})
_FIRST_COMPONENT_TYPES = frozenset({"CX", "RP", "EI", "HD"})
_COMPARATORS = {"<": "<", ">": ">", "<=": "<=", ">=": ">=", "≤": "<=", "≥": ">="}
_BELOW = frozenset({"<", "<="})
_SN_SEPARATORS = frozenset({":", "/", "-", "+", "."})

_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"  # ASCII digits only, unlike \d
_BOUND_RE = re.compile(rf"\s*(<=|>=|<|>|≤|≥)\s*({_NUMBER})\s*([^\s\d=:<>][^\s]{{0,19}})?\s*")
_RANGE_RE = re.compile(
    rf"\s*({_NUMBER})\s*(?:-|\u2013|_|to|TO|\.\.)\s*({_NUMBER})\s*([^\s\d=:<>][^\s]{{0,19}})?\s*"
)
_TIMESTAMP_RE = re.compile(
    r"([0-9]{4,14})(?:\.([0-9]{1,6}))?(?:([+-])([0-9]{2}):?([0-9]{2})?)?"  # -0400 or -04:00
)
_SHOWABLE_TIMESTAMP_RE = re.compile(r"[0-9.+:\-]{1,30}")
_SAFE_TYPE_RE = re.compile(r"[^A-Za-z0-9_^]")
_CHARSET_8859_RE = re.compile(r"(?:ISO)?[-_ ]?8859[-/_ ]?(\d{1,2})")
_LATIN1_ALIASES = frozenset(
    {"LATIN1", "LATIN-1", "ISOIR100", "ISO IR100", "CP1252", "WINDOWS-1252"}
)


@dataclass(frozen=True, slots=True, eq=False)
class _Encoding:
    """The separators one MSH declares; they hold for that message only.

    Instances are interned (see ``_interned_encoding``) and hash by identity, which keeps the
    per-field caches keyed on (text, encoding) cheap.
    """

    field: str
    component: str
    repetition: str
    escape: str | None
    subcomponent: str | None


@dataclass(slots=True)
class _Message:
    """What the OBX of one message inherit from its MSH, PID and current OBR."""

    number: int
    control_id: str
    facility: str
    enc: _Encoding
    status_required: bool
    sender: str | None = None  # MSH-4 first component: the key of a per-sender zone
    msh_offset: tzinfo | None = None  # MSH-7's own offset: the sender's, for naive times
    patient_ref: str | None = None
    obr_number: int = 0  # 0: no OBR seen since the MSH or the last PID
    obr_count: int = 0
    obx_number: int = 0
    orphan_obx: int = 0
    order_ref: str | None = None
    obr_collected: datetime | None = None
    obr_resulted: datetime | None = None
    obr_collected_problem: str | None = None  # OBR-7 present but unreadable
    obr_resulted_problem: str | None = None  # OBR-22 present but unreadable
    specimen_collected: datetime | None = None  # SPM-17.1 (OUL^R22, ORU with SPM)
    occurrences: dict[tuple[str | None, str, str], int] = field(default_factory=dict)


class _BadTimestampError(ValueError):
    """A timestamp field that is present but cannot be a date; the reason names the field."""


def parse_hl7(data: bytes, file: str) -> Iterator[LabResult | Rejected]:
    """Every OBX of every ORU message in the file, as a result or a rejection with a reason.

    The whole-file checks run eagerly, so a file that is not HL7 v2 raises before the caller
    gets the iterator and nothing of it can be half-loaded.

    Args:
        data: The raw file: plain, MLLP-framed or FHS/BHS-batched HL7 v2 messages.
        file: Object key or relative path, recorded in every ``SourceRef``.

    Returns:
        A lazy iterator over one ``LabResult`` or ``Rejected`` per OBX, plus one ``Rejected``
        per message that cannot be read at all (not ORU, broken MSH).

    Raises:
        FormatMismatchError: the file is empty, binary, undecodable or not HL7 v2.
    """
    segments = _split_segments(_decode(data))
    _check_shape(segments)
    return _parse_segments(segments, file)


def parse_hl7_stream(stream: BinaryIO, file: str, chunk_bytes: int = 2 << 20) -> Iterator[_Item]:
    """Like ``parse_hl7``, over a file read piece by piece: memory stays flat with its size.

    The file is cut only in front of an MSH, so every message is parsed whole and numbered as
    in ``parse_hl7``. The whole-file checks run on the first piece before anything is yielded;
    a later piece that is not HL7 text raises ``FormatMismatchError`` when it is reached, and
    the caller (one transaction per file) then lands nothing of the file.
    """
    pieces = _message_pieces(stream, chunk_bytes)
    first = next(pieces, b"")
    segments = _split_segments(_decode(first))
    _check_shape(segments, whole=False)
    return _parse_pieces(segments, pieces, file)


def _parse_pieces(first: list[str], rest: Iterator[bytes], file: str) -> Iterator[_Item]:
    numbers = [0, 0]  # messages and segments seen so far
    yield from _parse_segments(first, file, numbers)
    for piece in rest:
        if piece.strip(b" \t\r\n\x0b\x1c\x0c"):
            yield from _parse_segments(_split_segments(_decode(piece)), file, numbers)
    if numbers[0] == 0:
        raise FormatMismatchError("not HL7 v2: the file holds no MSH segment")


_MSH_START = re.compile(rb"[\r\n\x0b\x1c]MSH")


def _message_pieces(stream: BinaryIO, chunk_bytes: int) -> Iterator[bytes]:
    """The file in pieces of about ``chunk_bytes``, each ending just before an MSH."""
    buffer = b""
    while True:
        block = stream.read(chunk_bytes)
        if not block:
            break
        buffer += block
        if len(buffer) < chunk_bytes:
            continue
        cut = None
        for match in _MSH_START.finditer(buffer, max(0, len(buffer) - chunk_bytes)):
            cut = match.start() + 1
        if cut is None or cut <= 1:
            continue  # one message longer than a piece: keep reading
        yield buffer[:cut]
        buffer = buffer[cut:]
    yield buffer


# --- whole file ----------------------------------------------------------------------------


def _decode(data: bytes) -> str:
    """UTF-8 first; a declared ISO 8859 charset is trusted only when UTF-8 fails."""
    if not data.strip(b" \t\r\n\x0b\x1c\x0c"):
        raise FormatMismatchError("not HL7 v2: the file is empty")
    if b"\x00" in data:
        raise FormatMismatchError("not HL7 v2: the file holds NUL bytes (binary or UTF-16)")
    body = data[len(codecs.BOM_UTF8) :] if data.startswith(codecs.BOM_UTF8) else data
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        codec = _declared_codec(body)
        if codec is None:
            raise FormatMismatchError(
                f"not HL7 v2 text: invalid UTF-8 at byte {exc.start} and no MSH-18 declares "
                "an ISO 8859 character set"
            ) from None
        try:
            return body.decode(codec)
        except UnicodeDecodeError as exc2:
            raise FormatMismatchError(
                f"not HL7 v2 text: byte {exc2.start} is invalid in the MSH-18 character set"
            ) from None


def _declared_codec(body: bytes) -> str | None:
    """The Python codec for the first MSH-18 that names an ISO 8859 charset, if any."""
    text = body.decode("latin-1")
    for match in re.finditer(r"MSH(.)", text):
        separator = match.group(1)
        line = text[match.start() : _line_end(text, match.start())]
        fields = line.split(separator)
        if len(fields) > 17:
            codec = _codec_for(re.split(r"[\^~]", fields[17], maxsplit=1)[0])
            if codec is not None:
                return codec
    return None


def _line_end(text: str, start: int) -> int:
    """Index of the first segment terminator at or after start (or the end of the text)."""
    ends = [i for i in (text.find("\r", start), text.find("\n", start)) if i >= 0]
    return min(ends) if ends else len(text)


def _codec_for(charset: str) -> str | None:
    """HL7 table 0211 names (8859/1 ... 8859/15) and common aliases onto Python codecs."""
    name = charset.strip().upper()
    if name in _LATIN1_ALIASES:
        return "cp1252" if "1252" in name else "latin-1"
    match = _CHARSET_8859_RE.fullmatch(name)
    if match is None:
        return None
    codec = f"iso8859_{int(match.group(1))}"
    try:
        codecs.lookup(codec)
    except LookupError:
        return None
    return codec


def _split_segments(text: str) -> list[str]:
    """Segments on CR, LF or CRLF; MLLP start/end bytes are just more terminators."""
    if "\x0b" in text or "\x1c" in text:
        text = text.translate(_MLLP_TO_CR)
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    return text.split("\r")


def _check_shape(segments: list[str], whole: bool = True) -> None:
    """Refuse a file whose first segment is not an HL7 header or that has no MSH at all."""
    first = next((s.lstrip(_LEADING_BLANKS) for s in segments if s.strip()), "")
    if first[:3] not in ("MSH", "FHS", "BHS"):
        before = next(
            (i for i, s in enumerate(segments) if s.lstrip(_LEADING_BLANKS)[:3] == "MSH"), None
        )
        if before is not None:
            lines = sum(1 for s in segments[:before] if s.strip())
            raise FormatMismatchError(
                f"not HL7 v2: {lines} line(s) before the first MSH (comment or header lines "
                "are not HL7; an HL7 v2 file starts with MSH, FHS or BHS)"
            )
        raise FormatMismatchError("not HL7 v2: the file does not start with MSH, FHS or BHS")
    if whole and not any(s.lstrip(_LEADING_BLANKS)[:3] == "MSH" for s in segments):
        raise FormatMismatchError("not HL7 v2: the file holds no MSH segment")


# --- segment stream ------------------------------------------------------------------------


def _parse_segments(
    segments: list[str], file: str, numbers: list[int] | None = None
) -> Iterator[_Item]:
    """One pass over the segments, tracking the message, patient and order each OBX is in.

    ``numbers`` (messages, segments) carries the count on from earlier pieces of one file.
    """
    msg: _Message | None = None
    skipping = False  # inside a refused message: its segments were already accounted for
    counts = numbers if numbers is not None else [0, 0]
    messages, first = counts
    counts[1] += len(segments)
    for index, raw in enumerate(segments, first + 1):
        seg = raw.lstrip(_LEADING_BLANKS) if raw[:1] in _LEADING_BLANKS else raw
        if not seg:
            continue
        head = seg[:3]
        if head == "MSH":
            messages += 1
            counts[0] = messages
            msg, rejection = _start_message(seg, messages, file)
            skipping = msg is None
            if rejection is not None:
                yield rejection
        elif head in _ENVELOPE:
            msg, skipping = None, False
        elif msg is None:
            if head == "OBX" and not skipping:
                yield Rejected(
                    source=SourceRef(file=file, position=f"segment {index}"),
                    reason="OBX outside any message: no MSH before it",
                )
        elif seg[3:4] in ("", msg.enc.field):
            item = _segment(head, seg, msg, file)
            if item is not None:
                yield item


def _segment(head: str, seg: str, msg: _Message, file: str) -> _Item | None:
    """Dispatch one segment of an accepted message; a parser fault only costs that segment."""
    try:
        if head == "OBX":
            return _observation(seg, msg, file)
        if head == "OBR":
            _enter_order(seg, msg)
        elif head == "PID":
            _enter_patient(seg, msg)
        elif head == "SPM":
            _enter_specimen(seg, msg)
    except Exception as exc:  # the contract: nothing but FormatMismatchError escapes
        source = SourceRef(file=file, message_id=msg.control_id, position=f"message {msg.number}")
        return Rejected(
            source=source, reason=f"{head}: internal parser error ({type(exc).__name__})"
        )
    return None


# --- MSH -----------------------------------------------------------------------------------


def _start_message(seg: str, number: int, file: str) -> tuple[_Message | None, Rejected | None]:
    """Read an MSH; a message we cannot or should not read is one rejection, then skipped."""
    try:
        return _read_header(seg, number, file)
    except Exception as exc:  # the contract: nothing but FormatMismatchError escapes
        source = SourceRef(file=file, position=f"message {number}")
        reason = f"MSH: internal parser error ({type(exc).__name__})"
        return None, Rejected(source=source, reason=reason)


def _read_header(seg: str, number: int, file: str) -> tuple[_Message | None, Rejected | None]:
    """The message context from MSH, or the rejection that stands for the whole message."""
    position = f"message {number}"
    enc = _encoding(seg)
    if isinstance(enc, str):
        return None, Rejected(source=SourceRef(file=file, position=position), reason=enc)
    fields = seg.split(enc.field)
    fields.extend([""] * (12 - len(fields)))
    control_id = fields[9].strip()
    reason = _msh_problem(fields, enc)
    if reason is not None:
        source = SourceRef(file=file, message_id=control_id or None, position=position)
        return None, Rejected(source=source, reason=reason)
    msg = _Message(
        number=number,
        control_id=control_id,
        facility=fields[3],
        enc=enc,
        status_required=_version(fields[11].split(enc.component)[0]) >= (2, 3),
        sender=_first_component(fields[3], enc),
        msh_offset=_header_offset(fields[6], enc),
    )
    return msg, None


def _header_offset(raw: str, enc: _Encoding) -> tzinfo | None:
    """MSH-7's offset, which is the sender's own for the times it wrote without one."""
    text = raw.split(enc.component, 1)[0].strip()
    value = _timestamp(text) if text else None
    return None if value is None else value.tzinfo


def _encoding(seg: str) -> _Encoding | str:
    """Separators from MSH-1 and MSH-2, or the reason they are unusable.

    MSH-2 may hold 2-5 characters. Three characters ending in '&' are read as component,
    repetition and subcomponent with no escape character, as ELR senders use '^~&' that way.
    """
    if len(seg) < 4:
        return "MSH truncated: no MSH-1 field separator"
    separator = seg[3]
    chars = seg[4:].split(separator, 1)[0]
    if not 2 <= len(chars) <= 5:
        return "MSH-2 must hold 2 to 5 encoding characters"
    every = separator + chars
    if len(set(every)) != len(every) or any(c.isalnum() or c.isspace() for c in every):
        return "MSH-1/MSH-2 separators must be distinct punctuation characters"
    if len(chars) == 3 and chars[2] == "&":
        return _interned_encoding(separator, chars[0], chars[1], None, "&")
    escape = chars[2] if len(chars) >= 3 else None
    subcomponent = chars[3] if len(chars) >= 4 else None
    return _interned_encoding(separator, chars[0], chars[1], escape, subcomponent)


@lru_cache(maxsize=64)
def _interned_encoding(
    separator: str, component: str, repetition: str, escape: str | None, sub: str | None
) -> _Encoding:
    """One shared instance per separator set, so identity hashing is also equality."""
    return _Encoding(separator, component, repetition, escape, sub)


def _msh_problem(fields: list[str], enc: _Encoding) -> str | None:
    """Why a message cannot be read as an ORU, or None when it can."""
    message_type = fields[8].strip()
    if not message_type:
        return "MSH-9 (message type) missing"
    if not fields[9].strip():
        return "MSH-10 (message control id) missing"
    kind = message_type.split(enc.component)
    family = kind[0].strip().upper()
    trigger = kind[1].strip().upper() if len(kind) > 1 else ""
    if family != "ORU" and not (family == "OUL" and trigger in _OUL_TRIGGERS):
        shown = _SAFE_TYPE_RE.sub("", "^".join(kind[:2]))
        return f"MSH-9 is {shown[:20]}, not ORU (R01, R30...) or OUL^R21-R24"
    return None


def _version(text: str) -> tuple[int, ...]:
    """MSH-12 as a comparable tuple; unreadable versions count as old (lenient) ones."""
    try:
        return tuple(int(part) for part in text.strip().split("."))
    except ValueError:
        return (0,)


# --- PID / OBR -----------------------------------------------------------------------------


def _enter_patient(seg: str, msg: _Message) -> None:
    """A PID opens a new patient group: OBX after it belong to no OBR until one comes."""
    fields = seg.split(msg.enc.field)
    msg.patient_ref = _patient_ref(fields[3] if len(fields) > 3 else "", msg.enc)
    msg.obr_number = 0
    msg.order_ref = None
    msg.obr_collected = msg.obr_resulted = msg.specimen_collected = None
    msg.obr_collected_problem = msg.obr_resulted_problem = None


def _enter_specimen(seg: str, msg: _Message) -> None:
    """An SPM gives the specimen's collection time (SPM-17.1), the fallback after OBR-7."""
    fields = seg.split(msg.enc.field)
    raw = fields[17] if len(fields) > 17 else ""
    text = raw.split(msg.enc.repetition, 1)[0].split(msg.enc.component, 1)[0].strip()
    msg.specimen_collected = _timestamp(text) if text else None


def _patient_ref(raw: str, enc: _Encoding) -> str | None:
    """PID-3 first repetition as 'authority|id', the authority being HD.2 (OID) or HD.1."""
    comps = raw.split(enc.repetition, 1)[0].split(enc.component)
    ident = _unescape(comps[0], enc).strip()
    if not ident:
        return None
    authority = comps[3] if len(comps) > 3 else ""
    if enc.subcomponent is not None and enc.subcomponent in authority:
        parts = authority.split(enc.subcomponent)
        authority = parts[1] if len(parts) > 1 and parts[1].strip() else parts[0]
    authority = _unescape(authority, enc).strip()
    return f"{authority}|{ident}" if authority else ident


def _enter_order(seg: str, msg: _Message) -> None:
    """An OBR sets the order number and the fallback times for the OBX under it."""
    fields = seg.split(msg.enc.field)
    fields.extend([""] * (23 - len(fields)))
    msg.obr_count += 1
    msg.obr_number = msg.obr_count
    msg.obx_number = 0
    filler = _first_component(fields[3], msg.enc)
    msg.order_ref = filler or _first_component(fields[2], msg.enc)
    # One rule for every time a result is dated by (OBX-14, OBX-19, OBR-7, OBR-22): present
    # but unreadable quarantines the result, with the field named in the reason.
    problems: list[str] = []
    msg.obr_collected = _dating(fields[7], msg.enc, "OBR-7", problems)
    msg.obr_collected_problem = problems.pop() if problems else None
    msg.obr_resulted = _dating(fields[22], msg.enc, "OBR-22", problems)
    msg.obr_resulted_problem = problems.pop() if problems else None


# --- OBX -----------------------------------------------------------------------------------


def _observation(seg: str, msg: _Message, file: str) -> _Item:
    """One OBX, with its OBR and message context, as a result or a reasoned rejection."""
    enc = msg.enc
    fields = seg.split(enc.field)
    if len(fields) < _OBX_FIELDS:
        fields.extend([""] * (_OBX_FIELDS - len(fields)))
    source = {"file": file, "message_id": msg.control_id, "position": _obx_position(msg)}
    ident = _identifier(fields[3], enc)
    if isinstance(ident, str):
        return Rejected(source=SourceRef(**source), reason=ident)
    code, system, loinc, display = ident
    sub_id = fields[4].strip()
    occurrence = _occurrence(msg, code, sub_id)
    status_code = _status_code(fields[11], enc)
    if not status_code and (msg.status_required or not fields[5].strip()):
        return Rejected(source=SourceRef(**source), reason=_missing_status_reason(fields, enc))
    bad_times: list[str] = []
    collected = _dated_by(fields[14], "OBX-14", msg.obr_collected, msg.obr_collected_problem,
                          enc, bad_times) or msg.specimen_collected  # fmt: skip
    resulted = _dated_by(fields[19], "OBX-19", msg.obr_resulted, msg.obr_resulted_problem,
                         enc, bad_times)  # fmt: skip
    zone_source = None
    if msg.msh_offset is not None and (_naive(collected) or _naive(resulted)):
        collected, resulted = _placed(collected, msg.msh_offset), _placed(resulted, msg.msh_offset)
        zone_source = "msh7"
    order_key = msg.order_ref or msg.control_id
    record = _observed_values(fields, enc)
    record.update(
        result_id=derived_id("hl7", msg.facility, order_key, code, sub_id, str(occurrence)),
        patient_ref=msg.patient_ref,
        order_ref=msg.order_ref,
        code=code,
        code_system=system,
        loinc_code=loinc,
        display=display,
        status=_STATUS.get(status_code, ResultStatus.UNKNOWN),
        collected_at=collected,
        resulted_at=resulted,
        sender=msg.sender,
        time_zone_source=zone_source,
        source=source,
    )
    # model_validate on a dict: a third faster than keyword construction, same validation.
    result = LabResult.model_validate(record)
    if bad_times:  # quarantined, but what was read still goes to the critical check
        return Rejected(source=SourceRef(**source), reason="; ".join(bad_times), result=result)
    no_value = result.value_numeric is None and result.value_text is None
    if no_value and status_code not in _NO_VALUE_STATUSES:
        reason = (
            f"OBX-5 (value) empty with OBX-11 result status {status_code or 'missing'}: only "
            "X, N, D, W, I or O may come without a value"
        )
        return Rejected(source=SourceRef(**source), reason=reason, result=result)
    return result


def _dated_by(
    raw: str,
    name: str,
    fallback: datetime | None,
    fallback_problem: str | None,
    enc: _Encoding,
    problems: list[str],
) -> datetime | None:
    """The OBX's own time, else its OBR's: whichever dates the result must be readable.

    One rule for OBX-14/OBR-7 and OBX-19/OBR-22: a time that is present but unreadable
    quarantines the result it dates, with the field named in the reason.
    """
    if raw.strip():
        return _dating(raw, enc, name, problems)
    if fallback_problem is not None:
        problems.append(fallback_problem)
    return fallback


def _dating(raw: str, enc: _Encoding, name: str, problems: list[str]) -> datetime | None:
    """A strict timestamp, or None with the reason added to ``problems`` when unreadable."""
    try:
        return _strict_timestamp(raw, enc, name)
    except _BadTimestampError as exc:
        problems.append(str(exc))
        return None


def _occurrence(msg: _Message, code: str, sub_id: str) -> int:
    """How many times this (order, code, sub-id) has now been seen in the message.

    Counted per order across the whole message, not per OBR: some senders repeat a panel
    under a second OBR with the same order number, and those OBX must not share an id.
    """
    key = (msg.order_ref, code, sub_id)
    occurrence = msg.occurrences.get(key, 0) + 1
    msg.occurrences[key] = occurrence
    return occurrence


def _status_code(raw: str, enc: _Encoding) -> str:
    """OBX-11 as an upper-case table 0085 code; CWE-style 'F^Final^HL70085' is tolerated."""
    if raw in _STATUS:
        return raw
    return raw.split(enc.component, 1)[0].strip().upper()


def _observed_values(fields: list[str], enc: _Encoding) -> dict[str, object]:
    """The LabResult fields an OBX carries by itself: value, units, range, flag, who and where."""
    numeric, comparator, text = _value(fields[2], fields[5], enc)
    low, high, range_text = _reference_range(fields[7], enc)
    return {
        "value_numeric": numeric,
        "comparator": comparator,
        "value_text": text,
        "unit": _units(fields[6], enc),
        "reference_low": low,
        "reference_high": high,
        "reference_text": range_text,
        "abnormal_flag": _abnormal_flag(fields[8], enc),
        "performing_lab": _performing_lab(fields[23], fields[15], enc),
        "technician": _technician(fields[16], enc),
    }


def _obx_position(msg: _Message) -> str:
    """'message 2/OBR 1/OBX 3': OBX counted within their OBR, or within the message before one."""
    if msg.obr_number:
        msg.obx_number += 1
        return f"message {msg.number}/OBR {msg.obr_number}/OBX {msg.obx_number}"
    msg.orphan_obx += 1
    return f"message {msg.number}/OBX {msg.orphan_obx}"


def _missing_status_reason(fields: list[str], enc: _Encoding) -> str:
    """Say whether OBX-11 is merely empty or the fields after OBX-4 look shifted.

    A result without a status cannot be told apart from a preliminary one, and a shifted OBX
    would put the units where the flags go: neither is safe to load.
    """
    for shift in (1, 2):
        moved = fields[11 + shift].split(enc.component, 1)[0].strip().upper()
        if moved in _STATUS and not fields[5].strip() and fields[5 + shift].strip():
            return (
                f"OBX-11 (result status) empty and OBX-5 empty: fields after OBX-4 look "
                f"shifted by {shift} (value in OBX-{5 + shift}, status in OBX-{11 + shift})"
            )
    if not fields[5].strip():
        return "OBX-11 (result status) and OBX-5 (value) both empty: nothing to record"
    return "OBX-11 (result status) missing, required from HL7 v2.3 (truncated segment?)"


@lru_cache(maxsize=4096)
def _identifier(raw: str, enc: _Encoding) -> tuple[str, str | None, str | None, str | None] | str:
    """OBX-3 as (code, system, LOINC code, display), or the reason it cannot identify a test.

    When the primary triplet is empty the alternate one (components 4-6) is the identifier;
    a LOINC code is taken from whichever triplet is marked LN.
    """
    if not raw.strip():
        return "OBX-3 missing: no observation identifier"
    comps = raw.split(enc.repetition, 1)[0].split(enc.component)
    comps.extend([""] * (9 - len(comps)))
    code, text, system = comps[0].strip(), comps[1].strip(), comps[2].strip()
    alt_code, alt_text, alt_system = comps[3].strip(), comps[4].strip(), comps[5].strip()
    loinc = None
    if code and system.upper() in _LOINC_SYSTEMS:
        loinc = code
    elif alt_code and alt_system.upper() in _LOINC_SYSTEMS:
        loinc = alt_code
    if not code:
        if not alt_code:
            return "OBX-3 has no identifier code (text only)"
        code, system = alt_code, alt_system
    display = text or alt_text or comps[8].strip()
    return (
        _unescape(code, enc),
        system or None,
        _unescape(loinc, enc) if loinc else None,
        _unescape(display, enc) if display else None,
    )


# --- values --------------------------------------------------------------------------------


def _value(value_type: str, raw: str, enc: _Encoding) -> _Value:
    """OBX-5 read according to OBX-2; repetitions of a text value are joined with '; '."""
    raw = raw.strip()
    if not raw:
        return _NO_VALUE
    if value_type == "NM":  # the bulk of lab results: skip the generic path
        number = _decimal(raw)
        if number is not None:
            return number, None, None
    kind = value_type.split(enc.component, 1)[0].strip().upper()
    repetitions = raw.split(enc.repetition)
    if kind in _NUMERIC_TYPES:
        if len(repetitions) == 1:
            return _numeric(raw, enc)
        texts = [_numeric_text(_numeric(r, enc)) for r in repetitions]
    elif kind in _CODED_TYPES:
        texts = [_coded_text(r, enc) for r in repetitions]
    elif kind in _FIRST_COMPONENT_TYPES:
        texts = [_unescape(r.split(enc.component, 1)[0], enc).strip() for r in repetitions]
    else:
        texts = [_unescape(r, enc).strip() for r in repetitions]
    text = "; ".join(t for t in texts if t)
    return (None, None, text) if text else _NO_VALUE


def _numeric(raw: str, enc: _Encoding) -> _Value:
    """An NM or SN value; a number in the wrong shape is kept as text rather than lost."""
    raw = raw.strip()
    if enc.component in raw:
        return _structured_numeric(raw.split(enc.component), enc)
    number = _decimal(raw)
    if number is not None:
        return number, None, None
    bound = _BOUND_RE.fullmatch(raw)
    if bound is not None and bound.group(3) is None:
        return _decimal(bound.group(2)), _COMPARATORS[bound.group(1)], None
    text = _unescape(raw, enc).strip()
    return (None, None, text) if text else _NO_VALUE


def _structured_numeric(comps: list[str], enc: _Encoding) -> _Value:
    """SN: comparator ^ num1 ^ separator ^ num2, e.g. '>^11.0', '^182', '=^1^:^640'."""
    comps = [c.strip() for c in comps]
    comps.extend([""] * (4 - len(comps)))
    sign, first, separator, second = comps[:4]
    comparator = _COMPARATORS.get(sign)
    if (comparator is not None or sign in ("", "=")) and not any(comps[4:]):
        if not separator and not second:
            number = _decimal(first)
            if number is not None:
                return number, comparator, None
        elif separator in _SN_SEPARATORS and _decimal(first) is not None:
            return None, comparator, f"{first}{separator}{second}"
    text = " ".join(_unescape(c, enc) for c in comps if c)
    return (None, None, text) if text else _NO_VALUE


def _numeric_text(value: _Value) -> str:
    """One repetition of a repeated numeric value, as text, so no repetition is dropped."""
    number, comparator, text = value
    if number is None:
        return text or ""
    return f"{comparator or ''}{number}"


def _coded_text(raw: str, enc: _Encoding) -> str:
    """CE/CWE value: the text the lab wrote, else the code."""
    comps = raw.split(enc.component)
    comps.extend([""] * (9 - len(comps)))
    for index in (1, 4, 8, 0, 3):
        if comps[index].strip():
            return _unescape(comps[index], enc).strip()
    return ""


def _decimal(text: str) -> Decimal | None:
    """An HL7 NM: sign, ASCII digits and one point only, so '70_105' or 'NaN' is never a number.

    Checked with str methods rather than a regex: this runs for most OBX and ranges.
    """
    text = text.strip()
    body = text[1:] if text[:1] in ("+", "-") else text
    if not (body.isascii() and body.replace(".", "", 1).isdigit()):
        return None
    return Decimal(text[1:] if text[0] == "+" else text)


@lru_cache(maxsize=4096)
def _units(raw: str, enc: _Encoding) -> str | None:
    """OBX-6 CE: the unit code (UCUM when the lab uses it), else its text."""
    comps = raw.split(enc.repetition, 1)[0].split(enc.component)
    unit = comps[0].strip() or (comps[1].strip() if len(comps) > 1 else "")
    return _unescape(unit, enc) if unit else None


@lru_cache(maxsize=4096)
def _reference_range(raw: str, enc: _Encoding) -> tuple[Decimal | None, Decimal | None, str | None]:
    """OBX-7 as (low, high, text); the text is always kept so '<85' keeps its strictness."""
    text = _unescape(raw, enc).strip()
    if not text:
        return None, None, None
    if enc.component not in raw:
        bounded = _RANGE_RE.fullmatch(text)
        if bounded is not None:
            low, high = _decimal(bounded.group(1)), _decimal(bounded.group(2))
            if low is not None and high is not None and low <= high:
                return low, high, text
        bound = _BOUND_RE.fullmatch(text)
        if bound is not None:
            limit = _decimal(bound.group(2))
            if _COMPARATORS[bound.group(1)] in _BELOW:
                return None, limit, text
            return limit, None, text
    return None, None, text


@lru_cache(maxsize=4096)
def _abnormal_flag(raw: str, enc: _Encoding) -> str | None:
    """OBX-8: the first non-empty flag; of a CWE flag ('A^Abnormal^HL70078') its code."""
    for repetition in raw.split(enc.repetition):
        comps = repetition.split(enc.component)
        flag = comps[0].strip() or (comps[1].strip() if len(comps) > 1 else "")
        if flag:
            return _unescape(flag, enc)
    return None


@lru_cache(maxsize=4096)
def _performing_lab(organization: str, producer: str, enc: _Encoding) -> str | None:
    """OBX-23 organization name (v2.5), else the OBX-15 producer's name or id."""
    name = _first_component(organization, enc)
    if name:
        return name
    comps = producer.split(enc.repetition, 1)[0].split(enc.component)
    text = comps[1].strip() if len(comps) > 1 else ""
    chosen = text or comps[0].strip()
    return _unescape(chosen, enc) if chosen else None


@lru_cache(maxsize=4096)
def _technician(raw: str, enc: _Encoding) -> str | None:
    """OBX-16 XCN: the observer's id, else the family name (first subcomponent)."""
    comps = raw.split(enc.repetition, 1)[0].split(enc.component)
    ident = comps[0].strip()
    if not ident and len(comps) > 1:
        family = comps[1]
        if enc.subcomponent is not None:
            family = family.split(enc.subcomponent, 1)[0]
        ident = family.strip()
    return _unescape(ident, enc) if ident else None


def _first_component(raw: str, enc: _Encoding) -> str | None:
    """First component of the first repetition, unescaped, or None when empty."""
    value = raw.split(enc.repetition, 1)[0].split(enc.component, 1)[0].strip()
    return _unescape(value, enc) if value else None


# --- timestamps ----------------------------------------------------------------------------


def _strict_timestamp(raw: str, enc: _Encoding, name: str) -> datetime | None:
    """A timestamp the result is dated by: present but unreadable rejects the OBX."""
    if not raw:
        return None
    value = _timestamp(raw)  # the common, plain case straight from the cache
    if value is not None:
        return value
    text = raw.split(enc.component, 1)[0].strip()
    if not text:
        return None
    value = _timestamp(text)
    if value is None:
        raise _BadTimestampError(f"{name}: bad timestamp {_showable(text)}")
    return value


def _showable(text: str) -> str:
    """The timestamp for a reason, unless it does not even look like one (could be PHI)."""
    if _SHOWABLE_TIMESTAMP_RE.fullmatch(text):
        return repr(text)
    return f"({len(text)} characters, not a timestamp)"


@lru_cache(maxsize=4096)
def _timestamp(text: str) -> datetime | None:
    """YYYY[MM[DD[HH[MM[SS[.S+]]]]]][+/-ZZZZ]; aware only when an offset is given.

    Cached: a message repeats the same few timestamps on every OBX.
    """
    match = _TIMESTAMP_RE.fullmatch(text)
    if match is None:
        return None
    digits, fraction, sign, tz_hours, tz_minutes = match.groups()
    if len(digits) % 2 or (fraction and len(digits) != 14):
        return None
    values = [int(digits[i : i + 2]) for i in range(4, len(digits), 2)]
    month, day, hour, minute, second = values + [1, 1, 0, 0, 0][len(values) :]
    micro = int(fraction.ljust(6, "0")) if fraction else 0
    try:
        tz = _offset(sign, tz_hours, tz_minutes) if sign else None
        return datetime(int(digits[:4]), month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError:
        return None


def _naive(value: datetime | None) -> bool:
    return value is not None and value.tzinfo is None


def _placed(value: datetime | None, zone: tzinfo) -> datetime | None:
    """A naive time given the sender's offset from MSH-7; aware ones keep their own."""
    return value.replace(tzinfo=zone) if value is not None and value.tzinfo is None else value


def _offset(sign: str, hours: str, minutes: str | None) -> timezone:
    """A fixed UTC offset; HL7 allows -1200 to +1400."""
    delta = timedelta(hours=int(hours), minutes=int(minutes or 0))
    if delta > timedelta(hours=14) or int(minutes or 0) >= 60:
        raise ValueError("offset out of range")
    return timezone(-delta if sign == "-" else delta)


# --- escapes -------------------------------------------------------------------------------


def _unescape(value: str, enc: _Encoding) -> str:
    """Decode HL7 escape sequences; an unterminated one is kept literally."""
    escape = enc.escape
    if escape is None or escape not in value:
        return value
    parts = value.split(escape)
    out = [parts[0]]
    last = len(parts) - 1
    for i in range(1, len(parts), 2):
        if i == last:
            out.append(escape + parts[i])
            break
        out.append(_escape_sequence(parts[i], enc))
        out.append(parts[i + 1])
    return "".join(out)


def _escape_sequence(sequence: str, enc: _Encoding) -> str:
    """One sequence between escape characters; formatting other than line breaks is dropped."""
    simple = {
        "F": enc.field,
        "S": enc.component,
        "R": enc.repetition,
        "E": enc.escape or "",
        "T": enc.subcomponent or "",
    }
    if sequence in simple:
        return simple[sequence]
    if sequence == ".br" or sequence.startswith(".sp"):
        return "\n"
    if sequence[:1] == "X" and len(sequence) > 1:
        return _hex_text(sequence[1:])
    return ""


def _hex_text(hex_digits: str) -> str:
    """A hex escape (X then hex digits) as UTF-8, else latin-1; CRLF normalised, NUL dropped."""
    try:
        data = bytes.fromhex(hex_digits)
    except ValueError:
        return ""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
