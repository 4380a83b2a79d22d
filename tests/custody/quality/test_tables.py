"""The table gate on tables this project did not write: quoted names, types GX cannot describe."""

from __future__ import annotations

import logging

import psycopg
import pytest

from custody.quality.tables import check_table

TABLE = """
CREATE SCHEMA "Clinic Data";
CREATE TYPE "Clinic Data".pair AS (a int, b text);
CREATE TABLE "Clinic Data"."PatientRecords" (spare xml,
    "Record Id" int PRIMARY KEY, loc point NOT NULL, doc xml NOT NULL, lsn pg_lsn NOT NULL,
    c "Clinic Data".pair NOT NULL, r regclass NOT NULL, "Name" text NOT NULL);
INSERT INTO "Clinic Data"."PatientRecords" VALUES
    (NULL, 1, '(1,2)', '<a/>', '0/1', ROW(1, 'x'), 'pg_class', 'a'),
    (NULL, 2, '(1,2)', '<b/>', '0/2', ROW(2, 'y'), 'pg_type', 'b');
"""
NN = "expect_column_values_to_not_be_null"
NOT_NULL = ("loc", "doc", "lsn", "c", "r", "Name")
OPAQUE = ("loc", "doc", "lsn", "c")
QUALIFIED = '"Clinic Data"."PatientRecords"'


def _gx(url: str, expected_rows: int = 2, unique: tuple[str, ...] = ("Record Id",)):  # type: ignore[no-untyped-def]
    sa_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    return check_table(
        sa_url, "Clinic Data", "PatientRecords", expected_rows=expected_rows,
        unique_key=unique, not_null=NOT_NULL,
    )  # fmt: skip


def test_quoted_names_and_types_gx_cannot_describe_pass_and_are_named(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(TABLE)  # type: ignore[arg-type]
        for column in OPAQUE:  # no constraint proves them: GX checks them, as text
            conn.execute(f'ALTER TABLE {QUALIFIED} ALTER "{column}" DROP NOT NULL')  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO):
        result = _gx(pg_url)
    assert result.success and result.failed == [] and result.evaluated == 9
    assert result.by_constraint == [
        "expect_column_values_to_be_unique(Record Id)", f"{NN}(Record Id)", f"{NN}(r)",
        f"{NN}(Name)",
    ]  # fmt: skip
    assert sorted(n.split(":")[0] for n in result.notes) == ["c", "doc", "loc", "lsn"]
    assert all("checked as text" in n for n in result.notes)
    assert not [r for r in caplog.records if "ephemeral docs site" in r.getMessage()]


@pytest.mark.parametrize(
    ("change", "failed"),
    [
        ("UPDATE {t} SET loc = NULL WHERE id = 1", f"{NN}(loc)"),
        ("UPDATE {t} SET c = NULL WHERE id = 2", f"{NN}(c)"),
        ("UPDATE {t} SET \"Name\" = NULL WHERE id = 2", f"{NN}(Name)"),
        ("INSERT INTO {t} VALUES (NULL, 3, '(0,0)', '<c/>', '0/3', ROW(3, 'z'), 'pg_proc', 'c')",
         "expect_table_row_count_to_equal()"),
    ],
)  # fmt: skip
def test_a_changed_value_fails_the_gate(pg_url: str, change: str, failed: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(TABLE)  # type: ignore[arg-type]
        table = '"Clinic Data"."PatientRecords"'
        for column in ("loc", "c", "Name"):
            conn.execute(f'ALTER TABLE {table} ALTER "{column}" DROP NOT NULL')  # type: ignore[arg-type]
        conn.execute(change.format(t=table).replace("id =", '"Record Id" ='))  # type: ignore[arg-type]
    result = _gx(pg_url)
    assert not result.success and result.failed == [failed]


def test_a_duplicate_key_of_an_indescribable_type_fails_the_gate(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(TABLE)  # type: ignore[arg-type]
    result = _gx(pg_url, unique=("loc",))  # both rows hold (1,2)
    assert not result.success
    assert result.failed == ["expect_column_values_to_be_unique(loc)"]


def test_mixed_case_table_and_column_names_are_found(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            'CREATE SCHEMA "Ward B"; CREATE TABLE "Ward B"."PatientRecords" ("Id" int PRIMARY '
            'KEY, "Name" text NOT NULL); '
            'INSERT INTO "Ward B"."PatientRecords" VALUES (1, \'a\')'
        )
    sa_url = pg_url.replace("postgresql://", "postgresql+psycopg://", 1)
    good = check_table(sa_url, "Ward B", "PatientRecords", expected_rows=1, unique_key=("Id",),
                       not_null=("Name",))  # fmt: skip
    bad = check_table(sa_url, "Ward B", "PatientRecords", expected_rows=2, unique_key=("Id",),
                      not_null=("Name",))  # fmt: skip
    assert (good.success, good.evaluated, good.notes) == (True, 4, [])
    assert bad.failed == ["expect_table_row_count_to_equal()"]


def test_what_constraints_enforce_is_read_from_the_catalog_not_scanned_by_gx(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(TABLE)  # type: ignore[arg-type]
    import custody.quality.tables as tables

    def no_gx() -> None:
        raise AssertionError("GX ran although every check but the count is proven")

    monkeypatch.setattr(tables, "ephemeral_context", no_gx)
    good, bad = _gx(pg_url), _gx(pg_url, expected_rows=3)
    assert (good.success, good.evaluated, good.failed) == (True, 9, [])
    assert good.by_constraint == [
        "expect_column_values_to_be_unique(Record Id)",
        *[f"{NN}({c})" for c in ("Record Id", *NOT_NULL)],
    ]
    assert (bad.success, bad.failed) == (False, ["expect_table_row_count_to_equal()"])


# Unique indexes that do not prove the key unique: each lets a duplicate key in, and GX, not
# the catalog, must find it.
WEAK_UNIQUE = [
    "CREATE UNIQUE INDEX weak ON ward (id) WHERE id > 10",  # partial
    "CREATE UNIQUE INDEX weak ON ward ((id * 0 + n))",  # an expression
    "CREATE UNIQUE INDEX weak ON ward (id, n)",  # more columns than the key
]


@pytest.mark.parametrize("index", WEAK_UNIQUE)
def test_a_unique_index_that_does_not_hold_for_the_key_proves_nothing(
    pg_url: str, index: str
) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE ward (id int NOT NULL, n int NOT NULL)")
        conn.execute(index)  # type: ignore[arg-type]
        conn.execute("INSERT INTO ward VALUES (1, 1), (1, 2)")
    result = _ward(pg_url, ("id",))
    assert result.by_constraint == [f"{NN}(id)"]
    assert result.failed == ["expect_column_values_to_be_unique(id)"]


def test_an_inheritance_parents_unique_index_proves_nothing_for_its_children(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE ward (id int PRIMARY KEY, n int NOT NULL)")
        conn.execute("CREATE TABLE ward_child () INHERITS (ward)")
        conn.execute("INSERT INTO ward VALUES (1, 1); INSERT INTO ward_child VALUES (1, 2)")
    result = _ward(pg_url, ("id",))
    assert result.failed == ["expect_column_values_to_be_unique(id)"]


def test_a_partitioned_tables_unique_index_covers_its_partitions(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE ward (id int PRIMARY KEY, n int NOT NULL) PARTITION BY RANGE (id)"
        )
        conn.execute("CREATE TABLE ward_1 PARTITION OF ward FOR VALUES FROM (0) TO (10)")
        conn.execute("INSERT INTO ward VALUES (1, 1), (2, 2)")
    result = _ward(pg_url, ("id",))
    assert result.success
    assert result.by_constraint == ["expect_column_values_to_be_unique(id)", f"{NN}(id)"]


def test_a_deferrable_unique_constraint_is_left_to_gx(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE ward (id int NOT NULL UNIQUE DEFERRABLE, n int NOT NULL)")
        conn.execute("INSERT INTO ward VALUES (1, 1), (2, 2)")
    result = _ward(pg_url, ("id",))
    assert result.success and result.by_constraint == [f"{NN}(id)"]


def test_an_invalid_unique_index_proves_nothing(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE ward (id int NOT NULL, n int NOT NULL)")
        conn.execute("INSERT INTO ward VALUES (1, 1), (1, 2)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY weak ON ward (id)")
        # The failed build leaves the index behind, marked invalid.
        assert conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone() == (1,)
    result = _ward(pg_url, ("id",))
    assert result.failed == ["expect_column_values_to_be_unique(id)"]


def test_a_unique_key_with_a_nullable_column_is_checked_by_gx(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE ward (id int NOT NULL, n int UNIQUE)")
        conn.execute("INSERT INTO ward VALUES (1, NULL), (1, NULL)")
    result = _ward(pg_url, ("n",))
    assert result.by_constraint == [f"{NN}(id)"]
    assert result.failed == [f"{NN}(n)"]


def test_a_unique_index_on_part_of_a_compound_key_proves_it(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE ward (id int PRIMARY KEY, n int NOT NULL)")
        conn.execute("INSERT INTO ward VALUES (1, 1), (2, 1)")
    result = _ward(pg_url, ("id", "n"))
    assert result.success and result.evaluated == 4
    assert result.by_constraint[0] == "expect_compound_columns_to_be_unique()"


def _ward(url: str, key: tuple[str, ...]):  # type: ignore[no-untyped-def]
    sa_url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    return check_table(sa_url, "public", "ward", expected_rows=2, unique_key=key,
                       not_null=("id",))  # fmt: skip
