"""A small hospital: patients, encounters, lab results with LOINC codes, and PHI access events.

Everything is drawn from a seeded random generator, so a seed always gives the same data.
Names, MRNs and addresses are made up but look real, so the PHI rules are exercised for real.
The hospital's tables end at a fixed date (``ANCHOR``), so a rebuilt hospital is row for row the
one before, and a fixed cutoff always makes the same rows old enough to archive.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Column,
    Date,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    insert,
)

from custody.audit import AuditEvent, AuditStatus, DataClassification
from custody.db import UTCDateTime

metadata = MetaData()

ANCHOR = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
"""The synthetic hospital's "now": its encounters fall in the year before, its access log in the
two years before."""

patients = Table(
    "patients",
    metadata,
    Column("patient_id", Integer, primary_key=True, autoincrement=False),
    Column("mrn", String(16), nullable=False, unique=True),
    Column("given_name", Text, nullable=False),
    Column("family_name", Text, nullable=False),
    Column("birth_date", Date, nullable=False),
    Column("sex", String(1), nullable=False),
    Column("address", Text, nullable=False),
    Column("city", Text, nullable=False),
    Column("postal_code", String(10), nullable=False),
    Column("phone", String(20)),
)

encounters = Table(
    "encounters",
    metadata,
    Column("encounter_id", BigInteger, primary_key=True, autoincrement=False),
    Column("patient_id", Integer, ForeignKey("patients.patient_id"), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("encounter_class", String(16), nullable=False),
    Column("department", Text, nullable=False),
)

lab_results = Table(
    "lab_results",
    metadata,
    Column("result_id", BigInteger, primary_key=True, autoincrement=False),
    Column("patient_id", Integer, ForeignKey("patients.patient_id"), nullable=False),
    Column("encounter_id", BigInteger, ForeignKey("encounters.encounter_id"), nullable=False),
    Column("loinc_code", String(10), nullable=False),
    Column("loinc_display", Text, nullable=False),
    Column("value_numeric", Numeric(12, 4)),
    Column("unit", String(20), nullable=False),
    Column("ref_low", Numeric(12, 4)),
    Column("ref_high", Numeric(12, 4)),
    Column("abnormal_flag", String(2)),
    Column("status", String(12), nullable=False),
    Column("collected_at", UTCDateTime, nullable=False),
    Column("resulted_at", UTCDateTime, nullable=False),
    Column("performing_lab", Text, nullable=False),
)


# The EHR application's own log of who opened which chart: the table a retention policy archives.
access_log = Table(
    "access_log",
    metadata,
    Column("access_id", BigInteger, primary_key=True, autoincrement=False),
    Column("patient_id", Integer, ForeignKey("patients.patient_id"), nullable=False),
    Column("user_name", String(32), nullable=False),
    Column("action", String(16), nullable=False),
    Column("workstation", String(16), nullable=False),
    Column("accessed_at", UTCDateTime, nullable=False),
)


@dataclass(frozen=True)
class Lab:
    """A common lab test with its UCUM unit and an adult reference range."""

    loinc: str
    display: str
    unit: str
    low: float
    high: float
    decimals: int


LABS = (
    Lab("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.5, 5.1, 1),
    Lab("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 136, 145, 0),
    Lab("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 99, 0),
    Lab("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 17.5, 1),
    Lab("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 4.5, 11.0, 1),
    Lab("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 150, 400, 0),
    Lab("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.3, 2),
    Lab("6301-6", "INR in Platelet poor plasma by Coagulation assay", "{INR}", 0.8, 1.2, 1),
    Lab("10839-9", "Troponin I.cardiac [Mass/volume] in Serum or Plasma", "ng/mL", 0.0, 0.04, 3),
    Lab(
        "1742-6",
        "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
        "U/L",
        7,
        56,
        0,
    ),
)

_GIVEN = [
    "Amara",
    "Wen",
    "Jonas",
    "Ilse",
    "Mateo",
    "Priya",
    "Tomasz",
    "Lena",
    "Kofi",
    "Rosa",
    "Henrik",
    "Yuki",
    "Omar",
    "Greta",
    "Dmitri",
    "Nia",
    "Pablo",
    "Saoirse",
    "Ravi",
    "Ingrid",
    "Tariq",
    "Elena",
    "Bruno",
    "Chioma",
]
_FAMILY = [
    "Okafor",
    "Lindqvist",
    "Marchetti",
    "Haddad",
    "Novak",
    "Ferreira",
    "Tanaka",
    "Brennan",
    "Kowalski",
    "Achebe",
    "Moreau",
    "Castellanos",
    "Ivanova",
    "Fitzgerald",
    "Nakamura",
    "Oyelaran",
    "Schultz",
    "Duarte",
]
_STREETS = ("Maple Ave", "Harbor St", "Linden Rd", "Quarry Ln", "Orchard Way", "Mill Ct")
_CITIES = ("Riverton", "Ashford", "Millbrook", "Eastvale", "Granite Falls")
_DEPARTMENTS = ("Emergency", "Cardiology", "Oncology", "Internal Medicine", "Pediatrics")
_LABS_SITES = ("Riverton General Core Lab", "Ashford Reference Laboratory")


@dataclass(frozen=True)
class SynthCounts:
    """How many rows of each kind were written."""

    patients: int
    encounters: int
    lab_results: int
    access_log: int = 0


def create_ehr_tables(engine: Engine) -> None:
    """Create the EHR tables if they do not exist."""
    metadata.create_all(engine)


def drop_tables(engine: Engine, names: list[str]) -> list[str]:
    """Drop those of the synthetic hospital's tables that exist (a demo warehouse's reset).

    Only tables this module defines can be named, so nothing else is ever dropped.

    Raises:
        ValueError: a name is not one of the synthetic hospital's tables.
    """
    unknown = sorted(set(names) - set(metadata.tables))
    if unknown:
        raise ValueError(f"not tables of the synthetic hospital: {unknown}")
    tables = [metadata.tables[n] for n in names]
    metadata.drop_all(engine, tables=tables, checkfirst=True)
    return names


def write_ehr(
    engine: Engine,
    patients_n: int = 200,
    results_per_patient: int = 20,
    seed: int = 7,
    accesses_per_patient: int = 10,
) -> SynthCounts:
    """Create the tables and write a seeded synthetic hospital into them (replacing rows)."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not security
    create_ehr_tables(engine)
    now = ANCHOR
    people, visits, results = [], [], []
    result_id = 0
    for pid in range(1, patients_n + 1):
        born = dt.date(1930, 1, 1) + dt.timedelta(days=rng.randrange(0, 33_000))
        people.append(
            {
                "patient_id": pid,
                "mrn": f"MRN{pid:07d}",
                "given_name": rng.choice(_GIVEN),
                "family_name": rng.choice(_FAMILY),
                "birth_date": born,
                "sex": rng.choice("FM"),
                "address": f"{rng.randrange(1, 999)} {rng.choice(_STREETS)}",
                "city": rng.choice(_CITIES),
                "postal_code": f"{rng.randrange(10000, 99999)}",
                "phone": f"555-{rng.randrange(100, 999)}-{rng.randrange(1000, 9999)}",
            }
        )
        for visit in range(max(1, results_per_patient // 10)):
            eid = pid * 100 + visit
            started = now - dt.timedelta(minutes=rng.randrange(0, 60 * 24 * 365))
            visits.append(
                {
                    "encounter_id": eid,
                    "patient_id": pid,
                    "started_at": started,
                    "encounter_class": rng.choice(("ambulatory", "emergency", "inpatient")),
                    "department": rng.choice(_DEPARTMENTS),
                }
            )
            for _ in range(10 if results_per_patient >= 10 else results_per_patient):
                result_id += 1
                results.append(_result(rng, result_id, pid, eid, started))
    log = _access_log(rng, patients_n, accesses_per_patient)
    with engine.begin() as connection:
        for table in (access_log, lab_results, encounters, patients):
            connection.execute(table.delete())
        for table, rows in (
            (patients, people), (encounters, visits), (lab_results, results), (access_log, log)
        ):  # fmt: skip
            for i in range(0, len(rows), 5_000):
                connection.execute(insert(table), rows[i : i + 5_000])
    return SynthCounts(len(people), len(visits), len(results), len(log))


def _access_log(rng: random.Random, patients_n: int, per_patient: int) -> list[dict[str, object]]:
    """Chart openings over the two years before ``ANCHOR``, keyed in time order like a log."""
    span = 2 * 365 * 24 * 3600
    times = sorted(
        (ANCHOR - dt.timedelta(seconds=rng.randrange(span), microseconds=rng.randrange(10**6)),
         rng.randrange(1, patients_n + 1))
        for _ in range(patients_n * per_patient)
    )  # fmt: skip
    return [
        {
            "access_id": n,
            "patient_id": pid,
            "user_name": f"clinician{rng.randrange(25):03d}",
            "action": rng.choice(("view",) * 8 + ("update", "print")),
            "workstation": f"ws-{rng.randrange(40):02d}",
            "accessed_at": at,
        }
        for n, (at, pid) in enumerate(times, start=1)
    ]


def _result(
    rng: random.Random, result_id: int, pid: int, eid: int, started: dt.datetime
) -> dict[str, object]:
    lab = rng.choice(LABS)
    spread = (lab.high - lab.low) or lab.high or 1.0
    value = rng.gauss((lab.low + lab.high) / 2, spread / 2.5)
    value = max(value, 0.0)
    flag = "H" if value > lab.high else "L" if value < lab.low else "N"
    collected = started + dt.timedelta(minutes=rng.randrange(5, 240))
    quant = Decimal(1).scaleb(-lab.decimals)
    return {
        "result_id": result_id,
        "patient_id": pid,
        "encounter_id": eid,
        "loinc_code": lab.loinc,
        "loinc_display": lab.display,
        "value_numeric": Decimal(str(value)).quantize(quant),
        "unit": lab.unit,
        "ref_low": Decimal(str(lab.low)),
        "ref_high": Decimal(str(lab.high)),
        "abnormal_flag": flag,
        "status": rng.choice(("final",) * 9 + ("corrected",)),
        "collected_at": collected,
        "resulted_at": collected + dt.timedelta(minutes=rng.randrange(20, 600)),
        "performing_lab": rng.choice(_LABS_SITES),
    }


def access_events(
    count: int,
    patients_n: int = 200,
    principals: int = 25,
    seed: int = 11,
    end: dt.datetime | None = None,
) -> Iterator[AuditEvent]:
    """PHI access events as an EHR application would log them, over the 30 days before ``end``.

    Mostly reads during working hours; a few after-hours reads, break-the-glass emergency
    accesses and denied attempts, as a real trail has.
    """
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not security
    end = end or dt.datetime.now(dt.UTC)
    for _ in range(count):
        day = end - dt.timedelta(days=rng.randrange(0, 30))
        hour = rng.choice(range(7, 19)) if rng.random() < 0.95 else rng.choice((0, 2, 3, 22, 23))
        occurred = day.replace(hour=hour, minute=rng.randrange(60), second=rng.randrange(60))
        occurred = min(occurred, end)
        roll = rng.random()
        action, status, details = "phi.access.read", AuditStatus.SUCCESS, {"reason": "treatment"}
        if roll < 0.01:
            action, details = "phi.access.emergency", {"reason": "break_the_glass"}
        elif roll < 0.03:
            status, details = AuditStatus.DENIED, {"reason": "not_on_care_team"}
        elif roll < 0.10:
            action = "phi.access.update"
        yield AuditEvent(
            occurred_at=occurred,
            principal=f"clinician{rng.randrange(principals):03d}",
            action=action,
            status=status,
            resource_type="patient",
            resource_id=f"MRN{rng.randrange(1, patients_n + 1):07d}",
            regulation="HIPAA",
            data_classification=DataClassification.PHI,
            retention_days=2190,
            details={**details, "workstation": f"ws-{rng.randrange(40):02d}"},
        )
