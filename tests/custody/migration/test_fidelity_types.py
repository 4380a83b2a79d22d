"""Fidelity matrix: types, names, encodings and collations, each migrated, compared, mutated.

Every case builds a small table in its own schema of a source database, migrates it with the
same task functions the migrate-tables flow composes (describe, pre-data, plan, chunk copy with
verification, post-data), in chunks of two rows, then:

1. compares source and target without the product (``tests.support.pgcompare``: count and
   SHA-256 of the sorted row text per relation and per column, read as UTF-8);
2. changes one value in the target and re-runs the product's own chunk verification over the
   ledger's chunks: exactly one chunk must now be reported as mismatched.

Cases that must be refused say so, with the reason the product gives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine

from custody.chunks import JobSpec
from custody.settings import reset_settings_cache
from tasks.migration import (
    chunk_work,
    describe_source_tables,
    finalize_target_schema,
    plan_migration,
    plan_table_ranges,
    prepare_target_schema,
)
from tasks.runtime import reset_runtime
from tests.support.env import custody_env
from tests.support.pgcompare import differences, mutate_one, reverify

LATIN1 = "ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
ICU = "LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8' TEMPLATE template0"


@dataclasses.dataclass(frozen=True)
class Case:
    """A table ``t`` (id int primary key, v <type>) with one row per value, or custom SQL."""

    id: str
    type: str = ""
    values: tuple[str, ...] = ()
    new: str | None = None  # SQL expression for v in the row the mutation picks
    where: str = "id = 1"
    setup: str = ""  # SQL run in the case's schema before the table (types, domains, ...)
    table_sql: str = ""  # instead of the generated table
    table: str = "t"
    column: str = "v"
    mutate_sql: str = ""  # instead of mutate_one
    pair: tuple[str, str] = ("src", "dst")
    note: str = ""  # expected in the table's notes


def _values(case: Case) -> str:
    rows = ", ".join(f"({i}, {v})" for i, v in enumerate(case.values, 1))
    return f"CREATE TABLE t (id int PRIMARY KEY, v {case.type});\nINSERT INTO t VALUES {rows};"


TEN_MB = 10 * 1024 * 1024

TYPES = [
    Case(
        "numeric_specials",
        "numeric",
        ("1.50", "'NaN'", "'Infinity'", "'-Infinity'", "0.000", "-12345678901234567890.123456789"),
        new="1.500",
    ),  # same value, other scale
    Case("numeric_typmod", "numeric(12,4)", ("1.5", "-0.0001", "NULL"), new="1.5001"),
    Case(
        "float8_specials",
        "float8",
        ("'NaN'", "'Infinity'", "'-Infinity'", "'-0'", "0.1", "1e-300", "1.7976931348623157e308"),
        new="'0'",
        where="v = 0",
    ),  # -0 becomes 0
    Case(
        "float4_specials",
        "float4",
        ("'NaN'", "'-Infinity'", "'-0'", "3.4028235e38"),
        new="'0'",
        where="v = 0",
    ),
    Case(
        "timestamptz_infinity_bc",
        "timestamptz",
        (
            "'infinity'",
            "'-infinity'",
            "'0044-03-15 12:00:00+00 BC'",
            "'2026-12-07 10:00:00.123456+05:30'",
            "'epoch'",
        ),
        new="v + interval '1 microsecond'",
        where="id = 4",
    ),
    Case(
        "timestamp_date_bc",
        "timestamp",
        ("'infinity'", "'4713-01-01 00:00:00 BC'", "'294276-12-31 23:59:59'"),
        new="v - interval '1 second'",
        where="id = 2",
    ),
    Case(
        "date_infinity_bc",
        "date",
        ("'infinity'", "'-infinity'", "'0001-01-01 BC'", "'2024-02-29'"),
        new="v + 1",
        where="id = 4",
    ),
    Case(
        "time_timetz",
        "timetz",
        ("'24:00:00+00'", "'12:00:00.5+05:30'", "'00:00-14'"),
        new="'12:00:00.5+05:00'",
        where="id = 2",
    ),
    Case(
        "interval_months",
        "interval",
        ("'1 mon'", "'30 days'", "'-1 year 2 mons 3 days 04:05:06.789'", "'720 hours'"),
        new="'30 days'",
    ),  # equal as intervals, not as data
    Case("ranges", "int4range", ("'[1,5)'", "'empty'", "'(,3]'", "'[2,)'"), new="'[1,6)'"),
    Case(
        "tstzrange_numrange",
        "tstzrange",
        ("'[2026-01-01,infinity)'", "'(,)'", "'[2026-01-01 00:00+00,2026-01-02 00:00+00]'"),
        new="'[2026-01-01,2027-01-01)'",
    ),
    Case(
        "multiranges",
        "int4multirange",
        ("'{[1,3), [5,7)}'", "'{}'", "'{(,0]}'"),
        new="'{[1,3), [5,8)}'",
    ),
    Case("money", "money", ("12.34", "-0.01", "92233720368547758.07"), new="v + 0.01::money"),
    Case("bit", "bit(8)", ("B'10100101'", "B'00000000'"), new="B'10100100'"),
    Case("varbit", "varbit", ("B'1'", "B''", "B'101010101010101010101'"), new="B'0'"),
    Case(
        "network",
        "inet",
        ("'192.168.0.1/24'", "'::1'", "'10.0.0.0/8'", "'2001:db8::/32'"),
        new="'192.168.0.1/25'",
    ),
    Case(
        "cidr_macaddr",
        "macaddr",
        ("'08:00:2b:01:02:03'", "'00:00:00:00:00:00'"),
        new="'08:00:2b:01:02:04'",
    ),
    Case(
        "geometric_point",
        "point",
        ("'(1,2)'", "'(-0,NaN)'", "'(1e300,-1e-300)'"),
        new="'(1,2.0000001)'",
    ),
    Case(
        "geometric_polygon",
        "polygon",
        ("'((0,0),(1,0),(1,1))'", "'((0,0))'"),
        new="'((0,0),(1,0),(1,2))'",
    ),
    Case(
        "geometric_box_circle_path",
        "circle",
        ("'<(0,0),1>'", "'<(1.5,-2),0.25>'"),
        new="'<(0,0),2>'",
    ),
    Case(
        "xml",
        "xml",
        ("'<a>café</a>'", '\'<?xml version="1.0"?><r x="1"/>\'', "'text only'"),
        new="'<a>cafe</a>'",
    ),
    Case(
        "json_whitespace",
        "json",
        ('\'{"b": 1,  "a": [1, 2.50]}\'', "'null'", "'\"é\"'"),
        new='\'{"b":1,"a":[1,2.50]}\'',
    ),  # same JSON, other text
    Case(
        "jsonb_numeric_scale",
        "jsonb",
        ('\'{"a": 1.0, "b": [null, true]}\'', "'[]'"),
        new='\'{"a": 1.00, "b": [null, true]}\'',
    ),  # jsonb says equal; the data differ
    Case("tsvector", "tsvector", ("'a:1A fat:2B cat:3'", "''", "'é:1'"), new="'a:1 fat:2B cat:3'"),
    Case(
        "arrays",
        "int[][]",
        ("'{{1,2},{3,NULL}}'", "'[0:1]={7,8}'", "'{}'"),
        new="'{7,8}'",
        where="id = 2",
    ),  # same elements, other lower bound
    Case(
        "text_arrays",
        "text[]",
        ('\'{"a b",NULL,"NULL","\\\\\\\\","x,y"}\'', "'{é}'"),
        new='\'{"a b",NULL,NULL,"\\\\\\\\","x,y"}\'',
    ),
    Case(
        "enum",
        "mood",
        ("'sad'", "'ok'", "'happy'", "NULL"),
        setup="CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');",
        new="'ok'",
    ),
    Case(
        "enum_array",
        "mood[]",
        ("'{sad,happy}'", "'{}'"),
        setup="CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');",
        new="'{sad,ok}'",
    ),
    Case(
        "composite",
        "pair",
        ("ROW('a b', 1.5)::pair", "ROW(NULL, '-0')::pair"),
        setup="CREATE TYPE pair AS (label text, x float8);",
        new="ROW('a b', 1.25)::pair",
    ),
    Case(
        "composite_array",
        "pair[]",
        ("ARRAY[ROW('x', 1)::pair, NULL]",),
        setup="CREATE TYPE pair AS (label text, x float8);",
        new="ARRAY[ROW('x', 2)::pair]",
    ),
    Case(
        "domain_numeric",
        "price",
        ("1.50", "0"),
        setup="CREATE DOMAIN price AS numeric(10,2) CHECK (VALUE >= 0);",
        new="1.51",
    ),
    Case(
        "domain_array",
        "ints",
        ("'{1,2}'", "NULL"),
        setup="CREATE DOMAIN ints AS int[];",
        new="'{1,3}'",
    ),
    Case(
        "reg_types",
        "regclass",
        ("'pg_catalog.pg_class'", "'other'", "NULL"),
        setup="CREATE TABLE other (x int); CREATE TABLE other2 (x int);",
        new="'other2'",
        where="id = 2",
        note="regclass compared by schema-qualified name",
    ),
    Case(
        "regtype_regproc",
        "regtype",
        ("'integer'", "'mood'", "'text[]'"),
        setup="CREATE TYPE mood AS ENUM ('sad');",
        new="'bigint'",
        note="regtype compared by schema-qualified name",
    ),
    Case(
        "regrole_regconfig",
        "regconfig",
        ("'english'", "'simple'"),
        new="'german'",
        note="regconfig compared by schema-qualified name",
    ),
    Case(
        "large_text",
        "text",
        (f"repeat('é', {TEN_MB // 2})", "'small'"),
        new=f"overlay(v placing 'e' from {TEN_MB // 4})",
    ),  # one character of ~10 MB
    Case(
        "large_bytea",
        "bytea",
        (f"decode(repeat('ab', {TEN_MB}), 'hex')", "'\\x00'"),
        new=f"set_byte(v, {TEN_MB - 1}, 0)",
    ),  # the last of 10 MB
    Case(
        "misc_scalars",
        "uuid",
        ("'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", "gen_random_uuid()"),
        new="'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12'",
    ),
    Case(
        "text_specials",
        "text",
        ("E'tab\\there\\nnewline \\\\ back'", "''", "NULL", "'Ω 🩺'"),
        new="E'tab\\there\\nnewline \\\\ back '",
    ),
    Case("char_name_lsn", "char(5)", ("'ab'", "''"), new="'ab c'"),
    Case("pg_lsn", "pg_lsn", ("'0/16B3748'", "'FFFFFFFF/FFFFFFFF'"), new="'0/16B3749'"),
    Case(
        "generated_column",
        table_sql="CREATE TABLE t (id int PRIMARY KEY, a int, "
        "g int GENERATED ALWAYS AS (a * 2) STORED); INSERT INTO t (id, a) VALUES (1, 1), "
        "(2, 2), (3, NULL);",
        # the target's own expression is replaced: only a fingerprint over g sees it
        mutate_sql="ALTER TABLE {t} ALTER COLUMN g DROP EXPRESSION; "
        "UPDATE {t} SET g = 5 WHERE id = 2",
    ),
    Case(
        "no_primary_key",
        table_sql="CREATE TABLE t (a text, b int); INSERT INTO t "
        "VALUES ('x', 1), ('x', 1), (NULL, NULL);",
        column="b",
        new="2",
        where="b = 1",
    ),
]

NAMES = [
    Case(
        "column_named_t",
        table_sql="CREATE TABLE t (id int PRIMARY KEY, t int, v text); "
        "INSERT INTO t VALUES (1, 1, 'a'), (2, 2, 'b'), (3, 3, 'c');",
        new="'z'",
    ),
    Case(
        "column_named_like_alias",
        table_sql="CREATE TABLE t (id int PRIMARY KEY, "
        "custody_fp_row int, v text); INSERT INTO t VALUES (1, 1, 'a'), (2, 2, 'b');",
        new="'z'",
    ),
    Case(
        "mixed_case",
        table_sql='CREATE TABLE "ClinicData" ("Id" int PRIMARY KEY, '
        "\"PatientName\" text); INSERT INTO \"ClinicData\" VALUES (1, 'a'), (2, 'b');",
        table="ClinicData",
        column="PatientName",
        new="'z'",
        where='"Id" = 1',
    ),
    Case(
        "spaces_unicode",
        table_sql='CREATE TABLE "lab results ü" ("patient id" int PRIMARY '
        "KEY, \"wert €\" text); INSERT INTO \"lab results ü\" VALUES (1, 'a'), (2, 'b');",
        table="lab results ü",
        column="wert €",
        new="'z'",
        where='"patient id" = 2',
    ),
    Case(
        "reserved_words",
        table_sql='CREATE TABLE "select" ("from" int PRIMARY KEY, "user" '
        "text, \"order\" int); INSERT INTO \"select\" VALUES (1, 'a', 1), (2, 'b', 2);",
        table="select",
        column="order",
        new="3",
        where='"from" = 1',
    ),
    Case(
        "max_length_63_bytes",
        table_sql=f'CREATE TABLE "{"x" * 63}" (id int PRIMARY KEY, '
        f"\"{'ä' * 31}y\" text); INSERT INTO \"{'x' * 63}\" VALUES (1, 'a'), (2, 'b');",
        table="x" * 63,
        column="ä" * 31 + "y",
        new="'z'",
    ),
    Case(
        "dollar",
        table_sql='CREATE TABLE a$b (id int PRIMARY KEY, "c$" text, "$d" int); '
        "INSERT INTO a$b VALUES (1, 'a', 1), (2, 'b', 2);",
        table="a$b",
        column="$d",
        new="7",
    ),
]

KEYS = "('a'), ('B'), ('_'), ('ä'), ('Z'), ('b'), ('1'), ('ab'), ('A'), ('é'), ('z'), (' ')"
TEXT_KEY = (
    "CREATE TABLE t (k text PRIMARY KEY, v text); "
    f"INSERT INTO t SELECT k, k || '!' FROM (VALUES {KEYS}) s(k);"
)

ENCODINGS = [
    Case(
        "utf8_to_latin1",
        "text",
        ("'café'", "'Ünïcödé ÿ'", "'plain'"),
        new="'cafÃ©'",
        pair=("src", "dst_latin1"),
    ),  # the garbling once seen, now caught
    Case("latin1_to_utf8", "text", ("'café'", "'ß ü ÿ'"), new="'cafe'", pair=("src_latin1", "dst")),
    Case(
        "latin1_text_key_to_utf8",
        table_sql=TEXT_KEY.replace(", ('é')", ""),
        column="v",
        new="'x'",
        where="k = 'ä'",
        pair=("src_latin1", "dst"),
    ),
    Case(
        "utf8_enum_to_latin1",
        "mood",
        ("'süß'", "'sauer'"),
        new="'sauer'",
        setup="CREATE TYPE mood AS ENUM ('süß', 'sauer');",
        pair=("src", "dst_latin1"),
    ),
]

COLLATIONS = [
    Case(
        "text_key_c_to_icu",
        table_sql=TEXT_KEY,
        column="v",
        new="'x'",
        where="k = '_'",
        pair=("src", "dst_icu"),
    ),
    Case(
        "text_key_icu_to_c",
        table_sql=TEXT_KEY,
        column="v",
        new="'x'",
        where="k = 'ä'",
        pair=("src_icu", "dst"),
    ),
    Case(
        "varchar_key_column_collation",
        table_sql="CREATE TABLE t (k varchar(5) COLLATE "
        '"de-x-icu" PRIMARY KEY, v int); INSERT INTO t SELECT k, 1 FROM (VALUES '
        f"{KEYS}) s(k);",
        new="2",
        where="k = 'B'",
    ),
    Case(
        "text_key_icu_both",
        table_sql=TEXT_KEY,
        column="v",
        new="'x'",
        where="k = 'Z'",
        pair=("src_icu", "dst_icu"),
    ),
]

CASES = TYPES + NAMES + ENCODINGS + COLLATIONS


@pytest.fixture(scope="module")
def databases(pg_databases, pg_store: Engine) -> Iterator[dict[str, str]]:  # type: ignore[no-untyped-def]
    """One database of each kind for the module; custody's settings name them."""
    urls = {"src": pg_databases.create("fsrc"), "dst": pg_databases.create("fdst")}
    base = pg_databases.admin_url.rsplit("/", 1)[0]
    with psycopg.connect(pg_databases.admin_url, autocommit=True) as conn:
        for name, options in (("src_latin1", LATIN1), ("dst_latin1", LATIN1),
                              ("src_icu", ICU), ("dst_icu", ICU)):  # fmt: skip
            db = f"custody_test_f{name}_{id(urls) % 100000}"
            conn.execute(f'CREATE DATABASE "{db}" {options}')
            pg_databases.created.append(db)
            urls[name] = f"{base}/{db}"
    env = custody_env(pg_store.url.render_as_string(hide_password=False), urls)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        reset_settings_cache()
        reset_runtime()
        yield urls
    reset_settings_cache()
    reset_runtime()


@pytest.fixture(scope="module")
def pg_store(pg_databases) -> Engine:  # type: ignore[no-untyped-def]
    """One store for the module (the ledger the matrix's jobs share)."""
    from custody.db import get_engine
    from custody.store import upgrade

    engine = get_engine(pg_databases.create("fstore"))
    upgrade(engine)
    return engine


def migrate(source: str, target: str, schema: str, job: str) -> dict[str, str]:
    """The flow's task functions in its order; returns the job id of each table."""
    infos = describe_source_tables.fn(source, schema, [])
    specs = [
        JobSpec(
            job_id=f"{job}.{n}",
            kind="migration",
            subject=f"{source}->{target}.{schema}.{n}",
            key_column=info.key_column or "-",
            chunk_size=2,
            audit_prefix="data.migration",
        )
        for n, info in enumerate(infos)
    ]
    # Planned before the target is prepared, as the flow does (text keys plan after it).
    ranges = [
        plan_table_ranges.fn(spec, source, target, info, False)
        for spec, info in zip(specs, infos, strict=True)
    ]
    prepare_target_schema.fn(source, target, schema, infos, True)
    jobs = {}
    for info, spec, found in zip(infos, specs, ranges, strict=True):
        plan = plan_migration.fn(spec, source, target, info, False, found)
        work = chunk_work(source, target, info, "hash", False)
        for chunk in plan.pending:
            outcome = work(chunk.model_copy(update={"attempt": 1}))
            assert outcome.verified, (info.name, chunk.chunk_no, outcome)
        jobs[info.name] = spec.job_id
    finalize_target_schema.fn(source, target, schema)
    return jobs


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_migrates_exactly_and_a_changed_value_is_caught(
    case: Case, databases: dict[str, str], pg_store: Engine
) -> None:
    source, target = case.pair
    schema = f"fid_{case.id}"
    with psycopg.connect(databases[source], autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'SET search_path = "{schema}", public')
        conn.execute(case.setup + (case.table_sql or _values(case)))  # type: ignore[arg-type]

    job = migrate(source, target, schema, f"fid-{case.id.replace('_', '-')}")[case.table]

    assert differences(databases[source], databases[target], schema) == []
    if case.note:
        from custody.db import get_engine
        from custody.migration.catalog import describe_table

        info = describe_table(get_engine(databases[source]), schema, case.table)
        assert any(case.note in n for n in info.notes), info.notes
    assert reverify(source, target, schema, case.table, store=pg_store, job_id=job) == []

    if case.mutate_sql:
        with psycopg.connect(databases[target], autocommit=True) as conn:
            table = psycopg.sql.Identifier(schema, case.table).as_string(conn)
            conn.execute(case.mutate_sql.format(t=table))  # type: ignore[arg-type]
    else:
        mutate_one(databases[target], schema, case.table, case.column, case.new, case.where)
    assert differences(databases[source], databases[target], schema) != []
    mismatched = reverify(source, target, schema, case.table, store=pg_store, job_id=job)
    assert len(mismatched) == 1, mismatched


def test_text_the_target_encoding_cannot_hold_fails_its_chunk_and_writes_nothing(
    databases: dict[str, str], pg_store: Engine
) -> None:
    """'€' has no LATIN1 form: the chunk fails saying so, and the target keeps no row of it."""
    schema = "fid_refused_euro"
    with psycopg.connect(databases["src"], autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(
            f"CREATE TABLE {schema}.t (id int PRIMARY KEY, v text); "
            f"INSERT INTO {schema}.t VALUES (1, 'café'), (2, '5 €')"
        )
    with pytest.raises(psycopg.errors.UntranslatableCharacter, match="LATIN1"):
        migrate("src", "dst_latin1", schema, "fid-refused-euro")
    with psycopg.connect(databases["dst_latin1"]) as conn:
        assert conn.execute(f"SELECT count(*) FROM {schema}.t").fetchone() == (0,)
