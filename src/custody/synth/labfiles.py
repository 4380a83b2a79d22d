"""A lab's delivery of results as files: HL7 v2 ORU^R01, a FHIR R4 Bundle and CSV, all synthetic.

One delivery is what the demo's inbox receives on each run: mostly normal results, one critical
potassium (so the critical-value path fires), one CSV row with a number but no unit (so a record
is quarantined) and one file that is not lab results at all (a scanned requisition dropped into
the folder, so a whole file is rejected). Ids and message control ids carry the delivery's stamp,
so every delivery is new content; the values come from a seeded generator.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from custody.synth.ehr import _FAMILY, _GIVEN, LABS, Lab

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
CRITICAL_POTASSIUM = "6.8"
_FACILITY = "RIVERTON CORE LAB"
# Analytes whose normal values cannot reach a critical limit of the default rule set.
_PANEL = [lab for lab in LABS if lab.loinc in ("2823-3", "2951-2", "2345-7", "718-7", "2160-0")]


@dataclass(frozen=True)
class LabDelivery:
    """What a delivery holds, for the demo's summary and the tests (counts and paths only)."""

    directory: str
    files: int
    results: int
    bad_records: int
    bad_files: int
    critical: int


def write_lab_delivery(
    directory: Path,
    stamp: str,
    *,
    patients_n: int,
    now: dt.datetime,
    messages: int = 20,
    observations: int = 30,
    csv_rows: int = 30,
    seed: int = 13,
) -> LabDelivery:
    """Write one delivery's four files under ``directory`` (created); returns what they hold."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test data, not security
    directory.mkdir(parents=True, exist_ok=True)
    hl7 = _hl7_batch(rng, stamp, patients_n, now, messages)
    (directory / f"{stamp}-oru.hl7").write_bytes(hl7)
    bundle = _fhir_bundle(rng, stamp, patients_n, now, observations)
    (directory / f"{stamp}-observations.json").write_text(json.dumps(bundle, indent=1))
    (directory / f"{stamp}-results.csv").write_text(_csv(rng, stamp, patients_n, now, csv_rows))
    # Not a lab file: a scanned page saved under a results name. Rejected whole, with a reason.
    scan = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n\x00\x01 requisition " + stamp.encode()
    (directory / f"{stamp}-requisition.hl7").write_bytes(scan)
    return LabDelivery(
        directory=str(directory),
        files=4,
        results=messages * len(_HL7_PANEL) + observations + csv_rows,
        bad_records=1,
        bad_files=1,
        critical=1,
    )


def _patient(rng: random.Random, patients_n: int) -> str:
    return f"MRN{rng.randrange(1, patients_n + 1):07d}"


def _normal(rng: random.Random, lab: Lab) -> str:
    low, high = lab.low + (lab.high - lab.low) * 0.1, lab.high - (lab.high - lab.low) * 0.1
    return f"{rng.uniform(low, high):.{lab.decimals}f}"


def _times(rng: random.Random, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    collected = now - dt.timedelta(minutes=rng.randrange(60, 300))
    return collected, collected + dt.timedelta(minutes=rng.randrange(10, 50))


def _hl7_time(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S+0000")


_HL7_PANEL = _PANEL[:3]  # potassium, sodium, glucose: a basic metabolic panel's first three


def _hl7_batch(
    rng: random.Random, stamp: str, patients_n: int, now: dt.datetime, messages: int
) -> bytes:
    """ORU^R01 messages, one order of three results each; the first potassium is critical."""
    segments: list[str] = []
    for n in range(1, messages + 1):
        collected, resulted = _times(rng, now)
        mrn = _patient(rng, patients_n)
        name = f"{rng.choice(_FAMILY).upper()}^{rng.choice(_GIVEN).upper()}"
        born = f"{rng.randrange(1935, 2005)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}"
        segments += [
            f"MSH|^~\\&|LIS|{_FACILITY}|EHR|RIVERTON GENERAL|{_hl7_time(resulted)}||ORU^R01|"
            f"{stamp}-{n:04d}|P|2.5.1",
            f"PID|1||{mrn}^^^RGH^MR||{name}||{born}|{rng.choice('FM')}",
            f"OBR|1|ORD{stamp}-{n:04d}|ACC{stamp}-{n:04d}|24321-2^Basic metabolic panel^LN|||"
            f"{_hl7_time(collected)}|||||||||||||||{_hl7_time(resulted)}|||F",
        ]
        for i, lab in enumerate(_HL7_PANEL, start=1):
            critical = n == 1 and lab.loinc == "2823-3"
            value = CRITICAL_POTASSIUM if critical else _normal(rng, lab)
            flag = "HH" if critical else "N"
            segments.append(
                f"OBX|{i}|NM|{lab.loinc}^{lab.display}^LN||{value}|{lab.unit}|"
                f"{lab.low}-{lab.high}|{flag}|||F|||{_hl7_time(collected)}"
            )
    return ("\r".join(segments) + "\r").encode()


def _fhir_bundle(
    rng: random.Random, stamp: str, patients_n: int, now: dt.datetime, observations: int
) -> dict[str, object]:
    """A collection Bundle of final Observations with UCUM quantities and reference ranges."""
    entries = []
    for n in range(1, observations + 1):
        lab = rng.choice(_PANEL)
        collected, resulted = _times(rng, now)
        value = _normal(rng, lab)
        ident = f"{stamp}-obs-{n:04d}"
        entries.append(
            {
                "fullUrl": f"urn:uuid:{ident}",
                "resource": {
                    "resourceType": "Observation",
                    "id": ident,
                    "status": "final",
                    "code": {"coding": [{"system": LOINC, "code": lab.loinc,
                                         "display": lab.display}]},
                    "subject": {"reference": f"Patient/{_patient(rng, patients_n)}"},
                    "effectiveDateTime": collected.isoformat(),
                    "issued": resulted.isoformat(),
                    "performer": [{"display": "Ashford Reference Laboratory"}],
                    "valueQuantity": {"value": float(value), "unit": lab.unit, "system": UCUM,
                                      "code": lab.unit},
                    "referenceRange": [{"low": {"value": lab.low, "unit": lab.unit},
                                        "high": {"value": lab.high, "unit": lab.unit}}],
                },
            }
        )  # fmt: skip
    return {"resourceType": "Bundle", "id": f"{stamp}-bundle", "type": "collection",
            "entry": entries}  # fmt: skip


def _csv(rng: random.Random, stamp: str, patients_n: int, now: dt.datetime, rows: int) -> str:
    """Custody's default CSV layout; the last row has a number but no unit (quarantined)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["result_id", "patient_ref", "order_ref", "loinc_code", "display", "value",
                     "unit", "reference_low", "reference_high", "abnormal_flag", "status",
                     "collected_at", "resulted_at", "performing_lab", "technician"])  # fmt: skip
    for n in range(1, rows + 2):
        lab = rng.choice(_PANEL)
        collected, resulted = _times(rng, now)
        unit = lab.unit if n <= rows else ""
        writer.writerow([f"{stamp}-r{n:04d}", _patient(rng, patients_n), f"ORD{stamp}-c{n:04d}",
                         lab.loinc, lab.display, _normal(rng, lab), unit, lab.low, lab.high, "N",
                         "final", collected.isoformat(), resulted.isoformat(),
                         "Riverton General Core Lab", f"tech{rng.randrange(10):02d}"])  # fmt: skip
    return out.getvalue()
