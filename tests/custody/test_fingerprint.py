import datetime as dt
from decimal import Decimal

from custody.fingerprint import Fingerprint

ROWS = [
    (1, "a", Decimal("1.50"), None),
    (2, "b", Decimal("2"), b"\x00\x01"),
    (3, "ü", None, dt.date(2026, 1, 1)),
]


def digest(rows: list[tuple[object, ...]]) -> tuple[int, str]:
    fp = Fingerprint()
    fp.add_all(rows)
    return fp.count, fp.hexdigest


def test_order_does_not_matter_but_content_does() -> None:
    assert digest(ROWS) == digest(list(reversed(ROWS)))
    assert digest(ROWS) != digest([*ROWS[:2], (3, "u", None, dt.date(2026, 1, 1))])


def test_duplicates_do_not_cancel_out() -> None:
    assert digest([*ROWS, ROWS[0], ROWS[0]]) != digest(ROWS)
    assert digest([ROWS[0], ROWS[0]])[1] != digest([])[1]


def test_equal_values_hash_equal_across_representations() -> None:
    utc = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
    plus2 = utc.astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert digest([(Decimal("1.50"), utc)]) == digest([(Decimal("1.5"), plus2)])
    assert digest([(1,)]) != digest([("1",)])


def test_float_specials_differ_from_null_and_from_each_other() -> None:
    specials = [float("nan"), float("inf"), float("-inf"), -0.0, 0.0, None]
    assert len({digest([(v,)]) for v in specials}) == len(specials)
