"""The cast rules applied to described tables: mapping, options, overrides, refusals."""

from __future__ import annotations

import pytest

from custody.migration.mysql.casts import CastRules
from custody.migration.mysql.catalog import MyColumn, MyIndex, MyTable
from custody.migration.mysql.plan import CastRefusedError, create_statements, plan_table


def col(name: str, column_type: str, *, nullable: bool = True, default: str | None = None,
        extra: str = "", collation: str | None = None) -> MyColumn:  # fmt: skip
    data_type = column_type.split("(")[0].split(" ")[0]
    precision = scale = None
    if data_type == "decimal":
        precision, scale = (int(x) for x in column_type[8:-1].split(","))
    return MyColumn(
        name=name, data_type=data_type, column_type=column_type, nullable=nullable,
        default=default, extra=extra, charset=None, collation=collation, precision=precision,
        scale=scale, datetime_precision=0, max_length=20, is_json=False,
    )  # fmt: skip


def table(*columns: MyColumn, indexes: tuple[MyIndex, ...] = ()) -> MyTable:
    return MyTable(
        name="visits", engine="InnoDB", columns=columns, indexes=indexes, foreign_keys=(),
        auto_increment=None, estimated_rows=0,
    )  # fmt: skip


def mapping(t: MyTable, rules: CastRules | None = None, facts: dict[str, int] | None = None):  # type: ignore[no-untyped-def]
    plan = plan_table(t, "public", rules or CastRules(), facts or {}, {"visits"})
    return plan, {c.name: c.pg_type for c in plan.columns}


def test_the_default_rules_widen_unsigned_and_check_tinyint1() -> None:
    t = table(
        col("a", "int(10) unsigned"), col("b", "bigint(20) unsigned"), col("ok", "tinyint(1)"),
        col("two", "tinyint(1)"), col("y", "year(4)"), col("s", "set('x','y')"),
        col("n", "varchar(20)", collation="utf8mb4_bin"),
    )  # fmt: skip
    _, types = mapping(t, facts={"nonbool:two": 3})
    assert types == {"a": "bigint", "b": "numeric(20)", "ok": "boolean", "two": "smallint",
                     "y": "smallint", "s": "text[]", "n": 'varchar(20) COLLATE "C"'}  # fmt: skip


def test_enums_keep_the_empty_value_as_a_type_or_a_check() -> None:
    t = table(col("e", "enum('A','it''s')", default="'A'"))
    plan, types = mapping(t)
    assert plan.enum_types == {"visits_e": ("", "A", "it's")}
    assert "DEFAULT 'A'" in create_statements(plan)[-1]
    plan, types = mapping(t, CastRules(enums="check"))
    assert types == {"e": "text"} and plan.checks == ("""CHECK ("e" IN ('', 'A', 'it''s'))""",)


def test_zero_dates_become_null_or_refuse_the_table() -> None:
    t = table(col("born", "date", nullable=False))
    plan, _ = mapping(t, facts={"zero:born": 4})
    [born] = plan.columns
    assert born.nullable and born.zero_dates == 4 and plan.zero_dates == {"born": 4}
    with pytest.raises(CastRefusedError, match="'visits' column 'born': 4 zero"):
        mapping(t, CastRules(zero_dates="fail"), {"zero:born": 4})


def test_time_over_a_day_becomes_interval_and_overrides_win() -> None:
    t = table(col("span", "time"), col("at", "time"), col("flags", "bit(3)"))
    _, types = mapping(t, CastRules(overrides={"visits.flags": "text"}), {"time24:span": 1})
    assert types == {"span": "interval", "at": "time(0)", "flags": "text"}


def test_defaults_are_translated_or_listed() -> None:
    t = table(
        col("at", "timestamp", default="now()", extra="on update current_timestamp()"),
        col("day", "date", default="curdate()"), col("n", "int(11)", default="7"),
        col("odd", "varchar(20)", default="uuid()"),
    )  # fmt: skip
    plan, _ = mapping(t)
    assert [c.default_sql for c in plan.columns] == ["CURRENT_TIMESTAMP", "CURRENT_DATE", "7", None]
    assert "column odd: default expression not translated" in plan.not_migrated
    assert any("ON UPDATE CURRENT_TIMESTAMP" in n for n in plan.not_migrated)


def test_chunk_key_is_an_integer_primary_or_unique_not_null_key() -> None:
    pk = MyIndex(name="PRIMARY", unique=True, kind="BTREE", columns=("id",), prefix=False)
    uq = MyIndex(name="uq", unique=True, kind="BTREE", columns=("code",), prefix=False)
    ft = MyIndex(name="ft", unique=False, kind="FULLTEXT", columns=("txt",), prefix=False)
    plan, _ = mapping(table(col("id", "int(11)", nullable=False), indexes=(pk,)))
    assert plan.key_column == "id"
    plan, _ = mapping(table(col("code", "int(11)", nullable=False), indexes=(uq,)))
    assert plan.key_column == "code"
    plan, _ = mapping(table(col("txt", "text"), indexes=(ft,)), CastRules(fulltext="skip"))
    assert plan.key_column is None and "FULLTEXT index ft" in plan.not_migrated
    plan, _ = mapping(table(col("txt", "text"), indexes=(ft,)))
    assert "USING gin (to_tsvector('simple'::regconfig" in plan.post_data[0]


def test_the_ordered_stream_hash_does_not_depend_on_batching() -> None:
    import datetime as dt
    from decimal import Decimal

    from custody.migration.mysql.copy import StreamHash

    rows = [
        [i, f"r{i}", Decimal("1.50"), dt.datetime(2020, 1, 1, 0, 0, i), b"\x00"] for i in range(9)
    ]
    one, two, changed = StreamHash(), StreamHash(), StreamHash()
    one.add_all(rows)
    for start in range(0, 9, 4):
        two.add_all(rows[start : start + 4])
    changed.add_all([*rows[:8], [8, "r8", Decimal("1.51"), rows[8][3], b"\x00"]])
    assert (one.count, one.hexdigest) == (two.count, two.hexdigest) == (9, two.hexdigest)
    assert changed.hexdigest != one.hexdigest
