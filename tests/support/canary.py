"""PHI canaries: unique values in every PHI field, the data that carries them, and a scanner.

One test run draws one random token. Every text canary (MRNs, names, address, free-text notes,
text results, a disclosure's description) embeds it behind a field marker, e.g.
``Cnryfamily3fa9c0d2b71e``, so a hit says which field leaked. Result values and the birth date
are drawn at random too. Nothing else in the run (job ids, bucket, request id, file names) may
contain the token: it stands for PHI only.

The scanner looks for the token, and so for every text canary at once, in the forms a value
takes on its way into a store: as-is and case-folded, JSON-, HTML- or URL-escaped (the token
is plain lowercase hex, which none of these change), UTF-16 and base64 at each of the three
alignments (pickled or encoded results). Numbers and the date are looked for as the text a
serialiser writes, bounded by non-digits.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Engine, insert

from custody.audit import AuditEvent, AuditLog, DataClassification, Keyring
from custody.reports.tables import disclosure_requests

PATIENTS = 5  # rows of ``patients``; 3 of them dated before ARCHIVE_CUTOFF
LAB_ROWS = 10  # rows of ``lab_results``; 7 of them dated before ARCHIVE_CUTOFF
ARCHIVE_CUTOFF = date(2024, 1, 1)
LAB_COLUMNS = (
    "result_id,patient_ref,order_ref,loinc_code,display,value,unit,reference_low,"
    "reference_high,abnormal_flag,status,collected_at,resulted_at,performing_lab,technician"
)


def _value(rnd: secrets.SystemRandom) -> Decimal:
    """A result value no serialiser pads or shortens: 5 digits, 4 decimals, last not 0."""
    return Decimal(f"{rnd.randint(10_000, 99_999)}.{rnd.randint(0, 999):03d}{rnd.randint(1, 9)}")


@dataclass(frozen=True)
class Canaries:
    """The canary values of one run."""

    token: str
    birth_date: date
    values: dict[str, Decimal]  # by where the value is planted: pg, hl7, fhir, csv, overflow

    @classmethod
    def fresh(cls) -> Canaries:
        """New random canaries (12 hex digits of token: no chance meeting in a store)."""
        rnd = secrets.SystemRandom()
        birth = date(rnd.randint(1901, 1939), rnd.randint(1, 12), rnd.randint(1, 28))
        values = {k: _value(rnd) for k in ("pg", "hl7", "fhir", "csv")}
        # Past what a database column can hold: the server's error would quote it.
        values["overflow"] = Decimal(f"{_value(rnd)}E+131100")
        return cls(secrets.token_hex(6), birth, values)

    def text(self, name: str) -> str:
        """The canary of one text field, e.g. ``Cnrynote3fa9c0d2b71e``."""
        return f"Cnry{name}{self.token}"

    def mrn(self, patient: int = 0) -> str:
        """Medical record number of canary patient ``patient``."""
        return f"MRN-{self.text('mrn')}-{patient:02d}"

    @property
    def family(self) -> str:
        """Family name."""
        return self.text("family")

    @property
    def given(self) -> str:
        """Given name, with a letter outside ASCII (escaped differently by each serialiser)."""
        return f"Zoë{self.text('given')}"

    @property
    def address(self) -> str:
        """Street address (street and city)."""
        return f"12 {self.text('street')} Ave, {self.text('city')}"

    @property
    def note(self) -> str:
        """A free-text clinical note."""
        return f"{self.text('note')}: lives alone, anxious about needles"

    @property
    def result_text(self) -> str:
        """A text result."""
        return f"{self.text('result')} organisms seen"

    @property
    def disclosure(self) -> str:
        """What a disclosure of this patient's records said."""
        return f"{self.text('disclosure')} lab history sent"


# --------------------------------------------------------------------------- the scanner


@dataclass(frozen=True)
class Hit:
    """One canary found in one place, with the bytes around it (it is test data, not PHI)."""

    place: str
    needle: str
    excerpt: str

    def __str__(self) -> str:
        return f"{self.place}: {self.needle} in …{self.excerpt}…"


@dataclass(frozen=True)
class _Needle:
    name: str
    pattern: bytes
    folded: bool = False  # search the ASCII-lowercased haystack
    apart: bytes = b""  # characters the match must not touch (for numbers and dates)


def _base64_forms(token: bytes) -> list[bytes]:
    """The base64 text of ``token`` at each alignment, without the edge characters."""
    forms = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + token)
        start = 4 if shift else 0
        end = len(encoded) - (4 if (shift + len(token)) % 3 else 0)
        forms.append(encoded[start:end])
    return forms


_DIGITS = b"0123456789"
_ALNUM = _DIGITS + b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _touches(haystack: bytes, start: int, end: int, chars: bytes) -> bool:
    """Whether the match at ``[start, end)`` has one of ``chars`` right before or after it."""
    sides = (haystack[start - 1 : start], haystack[end : end + 1])
    return any(side and side in chars for side in sides)


@dataclass
class Scanner:
    """Finds a run's canaries in bytes, text, files and directory trees."""

    canaries: Canaries
    bytes_scanned: int = 0
    files_scanned: int = 0
    server_files: int = 0
    paths: list[str] = field(default_factory=list)
    needles: list[_Needle] = field(init=False)

    def __post_init__(self) -> None:
        c = self.canaries
        token = c.token.encode()
        needles = [
            _Needle("token", token, folded=True),
            _Needle("token (UTF-16)", c.token.encode("utf-16-le"), folded=True),
        ]
        for form in _base64_forms(token):
            needles.append(_Needle("token (base64)", form))
            urlsafe = form.replace(b"+", b"-").replace(b"/", b"_")
            if urlsafe != form:
                needles.append(_Needle("token (base64url)", urlsafe))
        for where, value in c.values.items():
            needles.append(_Needle(f"{where} result value", str(value).encode(), apart=_DIGITS))
        born = c.birth_date
        for text in (born.isoformat(), f"{born:%m/%d/%Y}"):
            needles.append(_Needle("birth date", text.encode(), apart=_DIGITS))
        # Eight bare digits also occur inside hex ids: the compact form must stand alone.
        needles.append(_Needle("birth date", f"{born:%Y%m%d}".encode(), apart=_ALNUM))
        self.needles = needles

    def scan_bytes(self, data: bytes, place: str) -> list[Hit]:
        """Every needle in ``data``."""
        self.bytes_scanned += len(data)
        folded = data.lower()
        hits = []
        for needle in self.needles:
            haystack = folded if needle.folded else data
            start = haystack.find(needle.pattern)
            while start >= 0:
                end = start + len(needle.pattern)
                if not _touches(haystack, start, end, needle.apart):
                    excerpt = data[max(0, start - 60) : end + 30]
                    hits.append(Hit(place, needle.name, excerpt.decode("utf-8", "replace")))
                start = haystack.find(needle.pattern, end)
        return hits

    def scan_text(self, text: str, place: str) -> list[Hit]:
        """Every needle in ``text`` (UTF-8)."""
        return self.scan_bytes(text.encode("utf-8", "surrogatepass"), place)

    def scan_json(self, value: Any, place: str) -> list[Hit]:
        """Every needle in ``value`` as JSON, once escaped (\\u00eb) and once as UTF-8."""
        dumped = json.dumps(value, default=str, sort_keys=True)
        hits = self.scan_text(dumped, place)
        hits += self.scan_text(json.dumps(value, default=str, ensure_ascii=False), place)
        return hits

    def scan_file(self, path: Path, place: str | None = None) -> list[Hit]:
        """Every needle in the file's raw bytes."""
        self.files_scanned += 1
        self.paths.append(str(path))
        return self.scan_bytes(path.read_bytes(), place or str(path))

    def scan_tree(self, root: Path) -> list[Hit]:
        """Every regular file under ``root`` (files that vanish while walking are skipped)."""
        hits: list[Hit] = []
        for folder, _, names in os.walk(root):
            for name in names:
                path = Path(folder) / name
                try:
                    if not stat.S_ISREG(path.lstat().st_mode):
                        continue
                    hits += self.scan_file(path)
                except FileNotFoundError:
                    continue
        return hits


# --------------------------------------------------------------------------- the source database

SOURCE_DDL = """
CREATE TABLE patients (
    mrn text PRIMARY KEY, family_name text NOT NULL, given_name text NOT NULL,
    birth_date date NOT NULL, address text NOT NULL, note text,
    updated_at timestamptz NOT NULL);
CREATE TABLE lab_results (
    result_id bigint PRIMARY KEY, mrn text NOT NULL, loinc_code text NOT NULL,
    value_numeric numeric, value_text text, unit text, note text,
    collected_at timestamptz NOT NULL);
CREATE TABLE allergies (
    allergy_id integer PRIMARY KEY, mrn text NOT NULL REFERENCES patients (mrn),
    substance text NOT NULL, note text);
"""
ALLERGIES = 2  # of the two most recent patients: no archival touches them


def _when(row: int, old: int) -> datetime:
    """Rows before ``old`` are dated 2020 (past the archive cutoff), later ones 2026."""
    year = 2020 if row < old else 2026
    return datetime(year, 1 + row % 12, 1 + row, 8, tzinfo=UTC)


def create_source(url: str, c: Canaries) -> dict[str, int]:
    """The hospital database: canary patients (keyed by MRN), their lab results and allergies.

    Returns:
        Rows per table dated before ``ARCHIVE_CUTOFF`` (what an archival takes).
    """
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SOURCE_DDL)
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO patients VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [
                    (c.mrn(i), c.family, c.given, c.birth_date, c.address, c.note, _when(i, 3))
                    for i in range(PATIENTS)
                ],
            )
            cur.executemany(
                "INSERT INTO lab_results VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                [
                    (
                        i + 1, c.mrn(i % PATIENTS), "2823-3",
                        None if i % 3 == 2 else c.values["pg"],
                        c.result_text if i % 3 == 2 else None, "mmol/L", c.note, _when(i, 7),
                    )
                    for i in range(LAB_ROWS)
                ],
            )  # fmt: skip
            cur.executemany(
                "INSERT INTO allergies VALUES (%s, %s, %s, %s)",
                [(i, c.mrn(PATIENTS - 1 - i), "penicillin", c.note) for i in range(ALLERGIES)],
            )
    return {"patients": 3, "lab_results": 7}


def create_refusing_target(url: str, c: Canaries, refused: int) -> None:
    """A target whose ``patients`` refuses one canary row: its error quotes the whole row."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SOURCE_DDL)
        conn.execute(refuse_patient(c.mrn(refused), "refused_patient"))


def refuse_patient(mrn: str, constraint: str) -> sql.Composed:
    """DDL: ``patients`` turns down the row of one MRN (rows already there are not checked)."""
    return sql.SQL("ALTER TABLE patients ADD CONSTRAINT {} CHECK (mrn <> {}) NOT VALID").format(
        sql.Identifier(constraint), sql.Literal(mrn)
    )


def count_rows(url: str, table: str, where: str = "true") -> int:
    """Rows of a table (names come from this module, never from input)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table} WHERE {where}".encode()).fetchone()
    assert row is not None
    return int(row[0])


# --------------------------------------------------------------------------- lab files


@dataclass(frozen=True)
class LabDelivery:
    """What ``write_lab_files`` delivered and what ingesting it must give."""

    files: int
    ingested: int
    rejected: int
    results: int
    quarantined: int
    critical: int


def _hl7(c: Canaries) -> bytes:
    """One ORU^R01: patient identity in PID, notes in NTE, a critical potassium, a text result,
    and an OBX with an unreadable time (quarantined)."""
    pid = (
        f"PID|1||{c.mrn()}^^^HOSP^MR||{c.family}^{c.given}||{c.birth_date:%Y%m%d}|F|||"
        f"12 {c.text('street')} Ave^^{c.text('city')}^OH^44101"
    )
    segments = [
        "MSH|^~\\&|LIS|CUSTODY LAB|EHR|HOSP|20261123101500-0500||ORU^R01|LAB-0001|P|2.5.1",
        pid,
        f"NTE|1||{c.note}",
        "OBR|1|ORD-1|ACC-1|2823-3^Potassium^LN|||20261123100000-0500|||||||||||||||"
        "20261123101000-0500|||F",
        f"OBX|1|NM|2823-3^Potassium [Moles/volume] in Serum or Plasma^LN||{c.values['hl7']}|"
        "mmol/L|3.5-5.1|HH|||F|||20261123100000-0500",
        f"NTE|1||{c.note}",
        f"OBX|2|ST|630-4^Bacteria identified in Urine by Culture^LN||{c.result_text}||||||F|||"
        "20261123100000-0500",
        f"OBX|3|NM|2951-2^Sodium^LN||{c.values['hl7']}|mmol/L|||||F|||{c.text('when')}",
    ]
    return ("\r".join(segments) + "\r").encode()


def _fhir(c: Canaries) -> bytes:
    """A Bundle: the Patient (skipped), a DiagnosticReport, two Observations and one without a
    status (quarantined), each naming the patient."""
    subject = {
        "reference": f"Patient/{c.mrn()}",
        "display": f"{c.given} {c.family}",
        "identifier": {"system": "urn:oid:2.16.840.1.113883.19.5", "value": c.mrn()},
    }
    code = {"coding": [{"system": "http://loinc.org", "code": "2823-3", "display": "Potassium"}]}
    observations: list[dict[str, Any]] = [
        {
            "resourceType": "Observation", "id": "obs-1", "status": "final", "code": code,
            "subject": subject, "effectiveDateTime": "2026-11-23T10:00:00Z",
            "valueQuantity": {"value": float(c.values["fhir"]), "unit": "mmol/L",
                              "system": "http://unitsofmeasure.org", "code": "mmol/L"},
            "note": [{"text": c.note}],
        },
        {
            "resourceType": "Observation", "id": "obs-2", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "630-4"}]},
            "subject": subject, "effectiveDateTime": "2026-11-23T10:00:00Z",
            "valueString": c.result_text, "note": [{"text": c.note}],
        },
        {
            "resourceType": "Observation", "id": "obs-3", "code": code, "subject": subject,
            "valueQuantity": {"value": float(c.values["fhir"]), "unit": "mmol/L"},
            "note": [{"text": c.note}],
        },
    ]  # fmt: skip
    patient = {
        "resourceType": "Patient", "id": "pat-1",
        "identifier": [{"value": c.mrn()}], "name": [{"family": c.family, "given": [c.given]}],
        "birthDate": c.birth_date.isoformat(),
        "address": [{"line": [f"12 {c.text('street')} Ave"], "city": c.text("city")}],
    }  # fmt: skip
    report = {
        "resourceType": "DiagnosticReport", "id": "rep-1", "status": "final", "code": code,
        "identifier": [{"value": "ACC-2"}], "subject": subject, "conclusion": c.note,
        "result": [{"reference": "Observation/obs-1"}, {"reference": "Observation/obs-2"}],
    }  # fmt: skip
    entries = [{"fullUrl": f"urn:uuid:{i}", "resource": r}
               for i, r in enumerate([patient, report, *observations])]  # fmt: skip
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    return json.dumps(bundle, default=str).encode()


def _csv(c: Canaries) -> bytes:
    """Custody's CSV columns: a critical number, a text result, a row with an unreadable time,
    and a number too large for any database column (quarantined)."""
    who = f"{c.mrn()},ORD-3"
    rows = [
        LAB_COLUMNS,
        f"R1,{who},2823-3,Potassium,{c.values['csv']},mmol/L,3.5,5.1,HH,final,"
        "2026-11-23T10:00:00Z,2026-11-23T10:10:00Z,,",
        f"R2,{who},630-4,Culture,{c.result_text},,,,,final,2026-11-23T10:00:00Z,,,",
        f"R3,{who},2823-3,Potassium,{c.values['csv']},mmol/L,,,,final,{c.text('when')},,,",
        f"R4,{who},2823-3,Potassium,{c.values['overflow']},mmol/L,,,,final,2026-11-23T10:00:00Z,,,",
    ]
    return ("\n".join(rows) + "\n").encode()


def phi_file_name(c: Canaries, analyte: str = "potassium") -> str:
    """An inbox file named after the patient, as some senders do (issue 15 item 5)."""
    return f"{c.family}_{c.given}_{c.mrn()}_{analyte}.hl7"


def write_lab_files(directory: Path, c: Canaries) -> LabDelivery:
    """One file per format, two that are not what they claim (rejected whole), and a symlink.

    The HL7 file and the symlink are named after the patient: names must never reach Prefect
    (issue 15 item 5). The symlink leads out of the inbox and is refused, never read.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / phi_file_name(c)).write_bytes(_hl7(c))
    outside = directory.parent / f"outside-{directory.name}.hl7"
    outside.write_bytes(_hl7(c).replace(b"LAB-0001", b"LAB-0002"))
    (directory / phi_file_name(c, "sodium")).symlink_to(outside)
    (directory / "feed-b.json").write_bytes(_fhir(c))
    (directory / "feed-c.csv").write_bytes(_csv(c))
    # Patient data without an MSH: read as CSV (auto), refused for its missing columns.
    (directory / "feed-d.hl7").write_bytes(
        f"PID|1||{c.mrn()}||{c.family}^{c.given}||{c.birth_date:%Y%m%d}\rNTE|1||{c.note}\r".encode()
    )
    # FHIR cut off mid-way: not JSON at all.
    (directory / "feed-e.json").write_bytes(
        f'{{"resourceType": "Observation", "subject": {{"display": "{c.family}"}}, '
        f'"note": [{{"text": "{c.note}"'.encode()
    )
    # critical: the quarantined HL7 sodium (unreadable time) and CSV potassium (too large to
    # store) are critical too, and alert although quarantined (issue 16 item 3).
    return LabDelivery(files=6, ingested=3, rejected=3, results=6, quarantined=4, critical=5)


# --------------------------------------------------------------------------- application events


def plant_app_events(store: Engine, keyring: Keyring, c: Canaries, request_id: str) -> int:
    """What applications write through ``custody.audit``: PHI accesses and disclosures.

    These events must name the patient (``resource_id``) and may describe a disclosure; the
    disclosure request resolves ``request_id`` to the canary MRN inside the database.

    Returns:
        The number of disclosures the accounting for ``request_id`` must list.
    """
    now = datetime.now(UTC).replace(microsecond=0)
    with store.begin() as conn:
        conn.execute(
            insert(disclosure_requests).values(
                request_id=request_id, patient_ref=c.mrn(), requested_by="him01", requested_at=now
            )
        )
    common: dict[str, Any] = {
        "resource_type": "patient", "resource_id": c.mrn(), "regulation": "HIPAA",
        "data_classification": DataClassification.PHI,
    }  # fmt: skip
    events = [
        AuditEvent(principal="clin01", action="phi.access.read", details={"reason": "treatment"},
                   **common)
        for _ in range(3)
    ] + [
        AuditEvent(principal="him01", action="phi.disclosure.made", **common,
                   details={"recipient": "State registry", "purpose": "public_health",
                            "description": c.disclosure})
        for _ in range(2)
    ]  # fmt: skip
    AuditLog(store, keyring).log_batch(events)
    return 2
