"""The canonical lab result every parser produces, and the record of one that was refused.

Both carry a ``SourceRef`` so that every stored result, and every quarantined one, can be
traced to the file, message and segment or resource it came from. These objects hold PHI: they
live in the ingesting process and custody's database, never in Prefect.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class ResultStatus(StrEnum):
    """FHIR Observation.status values; HL7 v2 OBX-11 codes map onto them."""

    REGISTERED = "registered"
    PRELIMINARY = "preliminary"
    FINAL = "final"
    AMENDED = "amended"
    CORRECTED = "corrected"
    CANCELLED = "cancelled"
    ENTERED_IN_ERROR = "entered-in-error"
    UNKNOWN = "unknown"


class SourceRef(BaseModel):
    """Where a result came from: file (or object key), message, and position inside it."""

    model_config = ConfigDict(frozen=True)

    file: str = Field(description="Object key, path relative to the ingested root, or inline:<sha>")
    message_id: str | None = Field(
        default=None, description="HL7 MSH-10 control id, or the FHIR resource / Bundle id"
    )
    position: str = Field(description="e.g. 'message 2/OBR 1/OBX 3', 'entry 4', 'line 17'")

    def key(self) -> str:
        """Stable text form, used to derive ids when the source gives none."""
        return f"{self.file}|{self.message_id or ''}|{self.position}"


class LabResult(BaseModel):
    """One observation of one analyte for one patient, as every format is normalised to."""

    model_config = ConfigDict(frozen=True)

    result_id: str = Field(max_length=200, description="Stable id: re-ingesting upserts on it")
    patient_ref: str | None = None
    order_ref: str | None = Field(default=None, description="Accession / filler order number")
    code: str | None = Field(default=None, description="Observation code as sent")
    code_system: str | None = Field(default=None, description="e.g. LN, http://loinc.org, L")
    loinc_code: str | None = Field(default=None, description="The LOINC code, when one is given")
    display: str | None = None
    value_numeric: Decimal | None = None
    comparator: str | None = Field(default=None, description="<, <=, >, >= of a bounded value")
    value_text: str | None = None
    unit: str | None = Field(default=None, description="UCUM where the sender used it")
    reference_low: Decimal | None = None
    reference_high: Decimal | None = None
    reference_text: str | None = None
    abnormal_flag: str | None = Field(default=None, description="HL7 0078 / FHIR interpretation")
    status: ResultStatus = ResultStatus.UNKNOWN
    collected_at: datetime | None = Field(default=None, description="Time zone aware when sent")
    resulted_at: datetime | None = None
    performing_lab: str | None = None
    technician: str | None = None
    sender: str | None = Field(default=None, description="HL7 MSH-4 sending facility")
    time_zone_source: str | None = Field(
        default=None,
        description="Which rule placed times sent without an offset (custody.labs.zones)",
    )
    source: SourceRef


class Rejected(BaseModel):
    """A record a parser could not turn into a result: where it was and why (no content)."""

    model_config = ConfigDict(frozen=True)

    source: SourceRef
    reason: str = Field(description="What is wrong, naming the segment/field or JSON path")
    result: LabResult | None = Field(
        default=None,
        description="What could still be read (the bad field left out): a result that is "
        "critical by rule or by the sender's flag must alert even when it is quarantined",
    )


class NotAResult(BaseModel):
    """An item of a file that is deliberately not a result, counted so that nothing vanishes.

    E.g. a FHIR component carrying only ``dataAbsentReason`` ("not performed"): there is no
    value to store and nothing wrong to quarantine, but the file's summary still counts it.
    """

    model_config = ConfigDict(frozen=True)

    source: SourceRef
    reason: str


class FormatMismatchError(ValueError):
    """The whole file is not what it claims to be (wrong format, binary, empty, bad encoding).

    Nothing from such a file is loaded; the file is quarantined as a whole with this reason.
    """


def derived_id(prefix: str, *parts: str | None) -> str:
    """A stable result id from the parts that identify a result in its source."""
    text = "\x1f".join(p or "" for p in parts)
    return f"{prefix}:{hashlib.sha256(text.encode()).hexdigest()[:32]}"
