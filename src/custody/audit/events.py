"""The audit event: who did what to which resource, when, under which rules."""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable
from decimal import Decimal
from enum import Enum, StrEnum
from typing import Any
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from custody.db import utc_now
from custody.errors import CustodyError

_ACTION = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)+$")
_MAX_SAFE_INT = 2**53


class FutureEventError(CustodyError, ValueError):
    """An event dated further ahead than the allowed clock skew: refused before it is queued.

    A future-dated event would sit in a month no partition covers yet and, once its month's
    partition is created, be where PostgreSQL's checks trip over it (issue 15 item 8).
    """


def check_not_future(
    events: Iterable[AuditEvent], max_skew: dt.timedelta, now: dt.datetime | None = None
) -> None:
    """Refuse any event whose ``occurred_at`` lies more than ``max_skew`` ahead of ``now``.

    Raises:
        FutureEventError: naming the event id and how far ahead it is (never its content).
    """
    limit = (now or utc_now()) + max_skew
    for event in events:
        if event.occurred_at > limit:
            ahead = (event.occurred_at - limit + max_skew).total_seconds()
            raise FutureEventError(
                f"audit event {event.event_id}: occurred_at is {ahead:.0f} s in the future, "
                f"more than the allowed clock skew of {max_skew.total_seconds():.0f} s "
                "(CUSTODY_AUDIT_MAX_CLOCK_SKEW_SECONDS); fix the producer's clock or timestamp"
            )


class AuditStatus(StrEnum):
    """Outcome of the audited action."""

    SUCCESS = "success"
    FAILED = "failed"
    PARTIAL_FAILURE = "partial_failure"
    DENIED = "denied"
    STARTED = "started"


class Severity(StrEnum):
    """Critical events take the immediate path and are announced to Prefect."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class DataClassification(StrEnum):
    """Sensitivity of the data the action touched (PHI rows get their own partial index)."""

    PUBLIC = "public"
    INTERNAL = "internal"
    CONFIDENTIAL = "confidential"
    PHI = "phi"


class AuditEvent(BaseModel):
    """One audited action, before it is chained and signed.

    ``details`` is normalised to plain JSON at construction (decimals and timestamps become
    strings, integral floats become integers) so that what is hashed now is exactly what a
    verifier reads back from PostgreSQL's jsonb or SQLite's text years later.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: UUID = Field(default_factory=uuid4)
    occurred_at: AwareDatetime = Field(default_factory=utc_now)
    principal: str = Field(min_length=1, max_length=256)
    action: str = Field(max_length=128, description="Dotted name, e.g. phi.access.read")
    status: AuditStatus = AuditStatus.SUCCESS
    severity: Severity = Severity.INFO
    resource_type: str = Field(min_length=1, max_length=128)
    resource_id: str | None = Field(default=None, max_length=512)
    correlation_id: str | None = Field(default=None, max_length=128)
    regulation: str | None = Field(default=None, max_length=64)
    data_classification: DataClassification = DataClassification.INTERNAL
    retention_days: int | None = Field(
        default=None, gt=0, le=36_600, description="At most 100 years"
    )
    details: dict[str, Any] = Field(default_factory=dict)

    @field_validator("action")
    @classmethod
    def _check_action(cls, value: str) -> str:
        if not _ACTION.fullmatch(value):
            raise ValueError(
                f"action {value!r} must be dotted lowercase words, e.g. 'phi.access.read'"
            )
        return value

    @field_validator("occurred_at")
    @classmethod
    def _to_utc(cls, value: dt.datetime) -> dt.datetime:
        return value.astimezone(dt.UTC)

    @field_validator("principal", "resource_type", "resource_id", "correlation_id", "regulation")
    @classmethod
    def _no_nul(cls, value: str | None) -> str | None:
        if value is not None:
            _check_text(value, "value")
        return value

    @field_validator("details")
    @classmethod
    def _plain_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        normalised = normalise_json(value, "details")
        assert isinstance(normalised, dict)
        return normalised


def _check_text(value: str, path: str) -> str:
    """Text must be storable in PostgreSQL and encodable as UTF-8 (no NUL, no lone surrogate)."""
    if "\x00" in value:
        raise ValueError(f"{path}: NUL characters cannot be stored")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{path}: text is not valid Unicode (lone surrogate)") from None
    return value


def normalise_json(value: Any, path: str) -> Any:
    """Turn ``value`` into JSON that survives a jsonb round trip unchanged.

    Raises:
        ValueError: naming the path of a value that has no faithful JSON form.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _check_text(value, path)
    if isinstance(value, int):
        if abs(value) >= 2**63:
            raise ValueError(f"{path}: integer out of 64-bit range; pass it as a string")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{path}: {value} has no JSON form")
        if value.is_integer():
            if abs(value) >= _MAX_SAFE_INT:
                raise ValueError(f"{path}: float {value!r} is too large; pass it as a string")
            return int(value)
        return value
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError(f"{path}: naive datetime; give it a time zone")
        return value.astimezone(dt.UTC).isoformat()
    if isinstance(value, dt.date | dt.time | UUID):
        return value.isoformat() if not isinstance(value, UUID) else str(value)
    if isinstance(value, Enum):
        return normalise_json(value.value, path)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{path}: keys must be strings, got {type(key).__name__}")
            out[normalise_json(key, path)] = normalise_json(item, f"{path}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [normalise_json(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise ValueError(f"{path}: {type(value).__name__} has no JSON form")
