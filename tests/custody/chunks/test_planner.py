from __future__ import annotations

import pytest
from sqlalchemy import Engine, Integer, bindparam, event, text

from custody.chunks import plan_key_ranges
from custody.db import get_engine
from custody.errors import InvalidIdentifierError
from custody.identifiers import reflect_table
from tests.support.tables import make_items


@pytest.fixture(params=["postgresql", "sqlite"])
def source(request: pytest.FixtureRequest, tmp_path) -> Engine:  # type: ignore[no-untyped-def]
    if request.param == "postgresql":
        return get_engine(request.getfixturevalue("pg_url"))
    return get_engine(f"sqlite:///{tmp_path / 'src.db'}")


def covered(engine: Engine, ranges: list[tuple[object, object]]) -> list[int]:
    keys: list[int] = []
    with engine.connect() as c:
        for lo, hi in ranges:
            keys += (
                c.execute(
                    text(
                        "SELECT id FROM items WHERE id > COALESCE(:lo, -1) AND id <= :hi ORDER BY 1"
                    ).bindparams(bindparam("lo", type_=Integer)),
                    {"lo": lo, "hi": hi},
                )
                .scalars()
                .all()
            )
    return keys


@pytest.mark.parametrize(
    "rows, size, chunks", [(10_000, 1_000, 10), (10_001, 1_000, 11), (999, 1_000, 1), (1, 5, 1)]
)
def test_ranges_cover_every_key_exactly_once(
    source: Engine, rows: int, size: int, chunks: int
) -> None:
    make_items(source, rows, step=3)  # gaps between keys, as real ids have
    statements: list[str] = []
    event.listen(source, "before_cursor_execute", lambda *a: statements.append(a[2]))
    ranges = plan_key_ranges(source, reflect_table(source, "items"), "id", size)
    assert len(ranges) == chunks
    assert ranges[0][0] is None
    with source.connect() as c:
        all_keys = c.execute(text("SELECT id FROM items ORDER BY id")).scalars().all()
    assert covered(source, ranges) == all_keys
    # Keyset seeks along the index: each step starts after the previous boundary, so the
    # whole plan reads every key once (no OFFSET paging from the start of the table).
    seeks = [s for s in statements if "OFFSET" in s.upper()]
    assert len(seeks) == chunks + (rows % size == 0)
    assert all(">" in s for s in seeks[1:])


def test_unindexed_key_is_planned_in_one_numbered_pass(source: Engine) -> None:
    with source.begin() as c:
        c.execute(text("CREATE TABLE loose (n integer)"))
        c.execute(text("INSERT INTO loose (n) VALUES " + ", ".join(f"({i})" for i in range(95))))
    statements: list[str] = []
    event.listen(source, "before_cursor_execute", lambda *a: statements.append(a[2]))
    ranges = plan_key_ranges(source, reflect_table(source, "loose"), "n", 10)
    assert [r[1] for r in ranges] == [*range(9, 95, 10), 94]
    assert any("row_number" in s.lower() for s in statements)
    assert not any("OFFSET" in s.upper() for s in statements)


def test_empty_table_has_no_chunks(source: Engine) -> None:
    make_items(source, 0)
    assert plan_key_ranges(source, reflect_table(source, "items"), "id", 10) == []


@pytest.mark.parametrize("bad", ["id; DROP TABLE items", 'id"', "\uff49d", "missing"])
def test_key_column_is_checked_against_the_schema(source: Engine, bad: str) -> None:
    make_items(source, 5)
    with pytest.raises(InvalidIdentifierError):
        plan_key_ranges(source, reflect_table(source, "items"), bad, 10)


@pytest.mark.parametrize("bad", ["items; --", "public.items", "no_such_table"])
def test_table_is_checked(source: Engine, bad: str) -> None:
    make_items(source, 5)
    with pytest.raises(InvalidIdentifierError):
        reflect_table(source, bad)
