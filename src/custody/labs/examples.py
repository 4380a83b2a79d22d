"""Synthetic lab messages for trying custody out: no real patient, a new message each time."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime


def critical_potassium() -> bytes:
    """An HL7 v2 ORU^R01 with a serum potassium of 6.8 mmol/L (critical high, flag HH).

    The control id, accession and times are new on every call, so a run ingests it (a file seen
    before is skipped) and raises ``custody.lab.critical_result.detected``.
    """
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
    tag = secrets.token_hex(4).upper()
    return (
        f"MSH|^~\\&|LIS|CUSTODY EXAMPLE|EHR|HOSP|{now}||ORU^R01|EX-{tag}|P|2.5.1\r"
        f"PID|1||MRN-EXAMPLE-{tag}^^^HOSP^MR||EXAMPLE^TEST||19700101|F\r"
        f"OBR|1|ORD-{tag}|ACC-{tag}|2823-3^Potassium^LN|||{now}|||||||||||||||{now}|||F\r"
        f"OBX|1|NM|2823-3^Potassium [Moles/volume] in Serum or Plasma^LN||6.8|mmol/L|3.5-5.1|HH|||F"
        f"|||{now}\r"
    ).encode()
