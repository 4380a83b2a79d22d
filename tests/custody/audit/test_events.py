import datetime as dt
from decimal import Decimal

import pytest
from pydantic import ValidationError

from custody.audit import AuditEvent


def make(**kwargs: object) -> AuditEvent:
    base: dict[str, object] = {
        "principal": "u",
        "action": "phi.access.read",
        "resource_type": "patient",
    }
    return AuditEvent(**(base | kwargs))


def test_details_are_normalised_to_json_that_survives_jsonb() -> None:
    event = make(
        details={
            "d": Decimal("1.10"),
            "f": 2.0,
            "g": 0.5,
            "t": (1, 2),
            "at": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
        }
    )
    assert event.details == {
        "d": "1.10",
        "f": 2,
        "g": 0.5,
        "t": [1, 2],
        "at": "2026-01-02T03:04:05+00:00",
    }


@pytest.mark.parametrize(
    "details, fragment",
    [
        ({"x": float("nan")}, "details.x"),
        ({"x": "a\x00b"}, "NUL"),
        ({"x": dt.datetime(2026, 1, 1)}, "naive"),
        ({"x": 2**70}, "64-bit"),
        ({"x": object()}, "no JSON form"),
    ],
)
def test_unstorable_details_are_refused_with_the_path(
    details: dict[str, object], fragment: str
) -> None:
    with pytest.raises(ValidationError, match=fragment):
        make(details=details)


@pytest.mark.parametrize("action", ["PHI.read", "phi", "phi..read", "phi.read;drop", ""])
def test_action_must_be_dotted_lowercase(action: str) -> None:
    with pytest.raises(ValidationError, match="action"):
        make(action=action)


def test_occurred_at_is_stored_in_utc() -> None:
    local = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert make(occurred_at=local).occurred_at == dt.datetime(2026, 5, 1, 10, 0, tzinfo=dt.UTC)
    with pytest.raises(ValidationError):
        make(occurred_at=dt.datetime(2026, 5, 1, 12, 0))


def test_values_that_would_not_survive_storage_are_refused() -> None:
    with pytest.raises(ValidationError, match="retention_days"):
        make(retention_days=2**31)  # binary COPY into int4 would wrap it silently
    with pytest.raises(ValidationError, match="lone surrogate"):
        make(details={"note": "bad \ud800 text"})
    with pytest.raises(ValidationError, match="unicode"):
        make(principal="x\udfff")  # pydantic's own str check
