from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from custody.db import get_engine
from custody.identifiers import reflect_table
from custody.transfer.generic import copy_range, ensure_target_table, fingerprint_range
from tests.support.tables import make_items


@pytest.fixture(params=["pg->pg", "sqlite->sqlite", "sqlite->pg"])
def pair(request: pytest.FixtureRequest, tmp_path) -> tuple[Engine, Engine]:  # type: ignore[no-untyped-def]
    src_kind, dst_kind = request.param.split("->")

    def engine(kind: str, name: str) -> Engine:
        if kind == "pg":
            return get_engine(request.getfixturevalue("pg_databases").create(name))
        return get_engine(f"sqlite:///{tmp_path / (name + '.db')}")

    return engine(src_kind, "src"), engine(dst_kind, "dst")


def test_copy_range_is_verified_and_idempotent(pair: tuple[Engine, Engine]) -> None:
    source, target = pair
    make_items(source, 3_000)
    ensure_target_table(reflect_table(source, "items"), target)
    first = copy_range(source, target, "items", "id", 1000, 2000)
    assert first.verified and first.source_count == 1000
    again = copy_range(source, target, "items", "id", 1000, 2000)  # a re-run after a crash
    assert again == first
    with target.connect() as c:
        assert c.execute(
            text("SELECT count(*), count(DISTINCT id), min(id), max(id) FROM items")
        ).one() == (1000, 1000, 1001, 2000)


def test_a_silent_difference_fails_verification(pg_databases) -> None:  # type: ignore[no-untyped-def]
    source, target = get_engine(pg_databases.create("src")), get_engine(pg_databases.create("dst"))
    make_items(source, 100)
    ensure_target_table(reflect_table(source, "items"), target)
    copy_range(source, target, "items", "id", None, None)
    with target.begin() as c:
        c.execute(text("UPDATE items SET label = 'changed' WHERE id = 50"))
    src = fingerprint_range(source, reflect_table(source, "items"), "id", None, None)
    dst = fingerprint_range(target, reflect_table(target, "items"), "id", None, None)
    assert src.count == dst.count and src.hexdigest != dst.hexdigest
