"""Fidelity of migrate-tables on schema objects: each case migrates, then compares both sides.

Every comparison here is the test's own SQL (rows, ``pg_dump --schema-only``, sequence states,
grants), never the product's fingerprint; every case with rows then changes one target value and
checks that the product's own chunk verification reports the mismatch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import orjson
import psycopg
import pytest
from sqlalchemy import Engine, select

from custody.chunks import Chunk
from custody.db import get_engine
from custody.migration.catalog import describe_table
from custody.migration.compat import check_target_columns
from custody.migration.names import table_job_id
from custody.migration.pgcopy import verify_range
from custody.migration.report import MigrationResult
from custody.migration.scope import Extension, SchemaScope
from custody.store import upgrade
from custody.store.tables import job_chunks
from flows.migrate import MigrateParams, migrate_tables
from tasks.migration import MigrationRefusedError, refuse_missing_extensions
from tests.support.env import set_custody_env
from tests.support.pgcompare import differences, mutate_one, relation_digest, reverify
from tests.support.pgcompare_schema import grants, schema_ddl, sequence_states
from tests.support.postgres import DatabaseFactory

LONG = "l" * 63  # the longest name PostgreSQL keeps


@pytest.fixture
def dbs(
    prefect_api: str,
    pg_store: Engine,
    pg_databases: DatabaseFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[str, str]:
    """Fresh source and target databases, named src and dst in custody's settings."""
    src, dst = pg_databases.create("fsrc"), pg_databases.create("fdst")
    set_custody_env(
        monkeypatch,
        store_url=pg_store.url.render_as_string(hide_password=False),
        connections={"src": src, "dst": dst},
    )
    return src, dst


def run_sql(url: str, script: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(script)


def migrate(**kwargs: object):  # type: ignore[no-untyped-def]
    kwargs.setdefault("chunk_size", 3)
    params = MigrateParams(source="src", target="dst", **kwargs)  # type: ignore[arg-type]
    state = migrate_tables(params, return_state=True)
    return state, state.result(raise_on_failure=False)


def assert_mutation_found(
    dst: str, store: Engine, job_id: str, schema: str, table: str, column: str
) -> None:
    """Every chunk verifies; one changed target value makes exactly one chunk mismatch."""
    job = table_job_id(job_id, table)
    assert reverify("src", "dst", schema, table, store=store, job_id=job) == []
    mutate_one(dst, schema, table, column)
    assert len(reverify("src", "dst", schema, table, store=store, job_id=job)) == 1


NAMES = [
    "Clinic Data",
    "ClinicData",
    "résumé_é",
    "price$",
    "select",
    LONG,
    'quote"d',
    "a.b*?[x]",
]


def test_any_legal_name_migrates_and_keeps_its_real_name(
    dbs: tuple[str, str], pg_store: Engine
) -> None:
    src, dst = dbs
    schema = "Sch é.ma*"
    ddl = [f'CREATE SCHEMA "{schema}"']
    for i, name in enumerate(NAMES):
        q = name.replace('"', '""')
        # The key is "id": GX's uniqueness check cannot take a key column with a double quote
        # in its name yet (reported); every other step gets the odd name as a column too.
        ddl.append(
            f'CREATE TABLE "{schema}"."{q}" (id int PRIMARY KEY, "{q}" int, "Value Col" text, '
            '"order" int)'
        )
        ddl.append(
            f'INSERT INTO "{schema}"."{q}" SELECT g, g, \'v\' || g, {i} '
            "FROM generate_series(1, 7) g"
        )
    run_sql(src, ";".join(ddl))
    _, result = migrate(schema_name=schema, job_id="names-1", chunk_size=4)
    assert result.status == "success", _failures(result)
    assert sorted(t.table for t in result.tables) == sorted(NAMES)
    assert len({t.job_id for t in result.tables}) == len(NAMES)
    assert differences(src, dst, schema) == []
    assert schema_ddl(src, schema) == schema_ddl(dst, schema)
    assert_mutation_found(dst, pg_store, "names-1", schema, "Clinic Data", "Value Col")


# ---------------------------------------------------------------------------------------------
# Schema objects. Every case's objects carry its own prefix ({p}) so that all cases share one
# source, one target and one migration run (a flow run per case would cost seconds each); each
# case is then checked on its own: rows and columns of each of its relations, pg_dump DDL of its
# relations, its sequences' options and states, its grants, and one mutation.
# ---------------------------------------------------------------------------------------------

ROWS = "generate_series(1, 7) g"


@dataclass(frozen=True)
class Case:
    """SQL with ``{p}`` for the case's prefix, its migrated tables, and the mutation to try."""

    sql: str
    tables: tuple[str, ...] = ("t",)
    # (table to re-verify, column, table to change if another (a partition), new value SQL)
    mutate: tuple[str, str, str | None, str | None] | None = ("t", "v", None, None)
    ddl: bool = True
    absent: tuple[str, ...] = ()  # source relations the case deliberately does not migrate


OBJECT_CASES = {
    "ident": Case(
        "CREATE TABLE {p}t (id bigint GENERATED ALWAYS AS IDENTITY (START 100 INCREMENT 5) "
        "PRIMARY KEY, v text); INSERT INTO {p}t (v) SELECT 'v' || g FROM " + ROWS
    ),
    "ident_unused": Case(
        "CREATE TABLE {p}t (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v text)",
        mutate=None,
    ),
    "generated": Case(
        "CREATE TABLE {p}t (id int PRIMARY KEY, v int, w int GENERATED ALWAYS AS (v * 2) "
        "STORED); INSERT INTO {p}t (id, v) SELECT g, g FROM " + ROWS
    ),
    "restarted": Case(
        "CREATE TABLE {p}t (id serial PRIMARY KEY, v text); "
        "INSERT INTO {p}t (v) SELECT 'x' || g FROM " + ROWS + "; "
        "ALTER SEQUENCE {p}t_id_seq RESTART WITH 50"
    ),
    "seq_options": Case(
        "CREATE SEQUENCE {p}s AS integer INCREMENT BY -3 MINVALUE -100 MAXVALUE 20 START 11 "
        "CACHE 4 CYCLE; CREATE TABLE {p}t (id int PRIMARY KEY DEFAULT nextval('{p}s'), v text); "
        "INSERT INTO {p}t (v) SELECT 'x' || g FROM " + ROWS
    ),
    "seq_not_called": Case(
        "CREATE TABLE {p}t (id int PRIMARY KEY, v text); CREATE SEQUENCE {p}s OWNED BY {p}t.id; "
        "SELECT setval('{p}s', 42, false); INSERT INTO {p}t SELECT g, 'v' || g FROM " + ROWS
    ),
    "partitioned": Case(
        "CREATE TABLE {p}t (id int, v text, PRIMARY KEY (id)) PARTITION BY RANGE (id); "
        "CREATE TABLE {p}t_lo PARTITION OF {p}t FOR VALUES FROM (1) TO (4); "
        "CREATE TABLE {p}t_def PARTITION OF {p}t DEFAULT; CREATE INDEX ON {p}t (v); "
        "INSERT INTO {p}t SELECT g, 'v' || g FROM " + ROWS,
        mutate=("t", "v", "t_lo", None),
    ),
    "inherit_both": Case(
        "CREATE TABLE {p}t (id int PRIMARY KEY, v text); "
        "CREATE TABLE {p}kid (extra int) INHERITS ({p}t); "
        "INSERT INTO {p}t SELECT g, 'p' || g FROM " + ROWS + "; "
        "INSERT INTO {p}kid SELECT g, 'k' || g, g FROM generate_series(100, 104) g",
        tables=("t", "kid"),
    ),
    "inherit_parent": Case(
        "CREATE TABLE {p}t (id int PRIMARY KEY, v text); CREATE TABLE {p}kid () INHERITS ({p}t); "
        "INSERT INTO {p}t SELECT g, 'p' || g FROM " + ROWS + "; "
        "INSERT INTO {p}kid VALUES (900, 'k')",
        absent=("kid",),
    ),
    "matview": Case(
        "CREATE TABLE {p}t (id int PRIMARY KEY, v text); "
        "INSERT INTO {p}t SELECT g, 'v' || (g % 3) FROM " + ROWS + "; "
        "CREATE MATERIALIZED VIEW {p}mv AS SELECT v, count(*) AS n FROM {p}t GROUP BY v; "
        "CREATE UNIQUE INDEX {p}mv_v ON {p}mv (v); CREATE VIEW {p}plain AS SELECT id FROM {p}t; "
        "CREATE MATERIALIZED VIEW {p}empty AS SELECT count(*) FROM {p}t WITH NO DATA",
    ),
    "grants": Case(
        "CREATE TABLE {p}t (id serial PRIMARY KEY, v text, secret text); "
        "GRANT SELECT ON {p}t TO PUBLIC; "
        "GRANT SELECT (id, v), UPDATE (v) ON {p}t TO custody_reader; "
        "GRANT INSERT ON {p}t TO custody_reader WITH GRANT OPTION; "
        "GRANT USAGE ON SEQUENCE {p}t_id_seq TO custody_reader; "
        "INSERT INTO {p}t (v) SELECT 'v' || g FROM " + ROWS
    ),
    "comments": Case(
        "CREATE DOMAIN {p}d AS text; COMMENT ON DOMAIN {p}d IS 'a domain'; "
        "CREATE TABLE {p}t (id int CONSTRAINT {p}key PRIMARY KEY, v {p}d, "
        "CONSTRAINT {p}short CHECK (length(v) < 9)); COMMENT ON TABLE {p}t IS 'the table'; "
        "COMMENT ON COLUMN {p}t.v IS 'a column'; COMMENT ON CONSTRAINT {p}key ON {p}t IS 'key'; "
        "COMMENT ON CONSTRAINT {p}short ON {p}t IS 'check'; "
        "CREATE INDEX {p}t_v ON {p}t (v); COMMENT ON INDEX {p}t_v IS 'an index'; "
        "INSERT INTO {p}t SELECT g, 'v' || g FROM " + ROWS
    ),
    "cross_schema": Case(
        'CREATE SCHEMA "{p}Types"; CREATE DOMAIN "{p}Types".pos AS int CHECK (VALUE > 0); '
        'CREATE DOMAIN "{p}Types".code AS varchar(9) COLLATE "C"; '
        "CREATE TYPE \"{p}Types\".mood AS ENUM ('sad', 'ok'); "
        'CREATE TYPE "{p}Types".pair AS (a "{p}Types".pos, m "{p}Types".mood); '
        'CREATE TABLE {p}t (id int PRIMARY KEY, v "{p}Types".pos, c "{p}Types".code, '
        'm "{p}Types".mood, ms "{p}Types".mood[], p "{p}Types".pair); '
        "INSERT INTO {p}t SELECT g, g, 'c' || g, 'ok', ARRAY['sad', 'ok']::\"{p}Types\".mood[], "
        "ROW(g, 'sad')::\"{p}Types\".pair FROM " + ROWS
    ),
    "hstore": Case(
        "CREATE SCHEMA {p}ext; CREATE EXTENSION IF NOT EXISTS hstore WITH SCHEMA {p}ext; "
        "CREATE TABLE {p}t (id int PRIMARY KEY, v text, h {p}ext.hstore); "
        "INSERT INTO {p}t SELECT g, 'v' || g, {p}ext.hstore('k', g::text) FROM " + ROWS
    ),
    "citext": Case(
        "CREATE EXTENSION IF NOT EXISTS citext; "
        "CREATE TABLE {p}t (id int PRIMARY KEY, v text, c citext UNIQUE); "
        "INSERT INTO {p}t SELECT g, 'v', 'Mixed' || g FROM " + ROWS
    ),
    "fk_subset": Case(
        "CREATE TABLE {p}other (id int PRIMARY KEY); INSERT INTO {p}other VALUES (1); "
        "CREATE TABLE {p}parent (id int PRIMARY KEY); "
        "INSERT INTO {p}parent SELECT g FROM " + ROWS + "; "
        "CREATE TABLE {p}t (id int PRIMARY KEY, v text, "
        "parent int REFERENCES {p}parent, other int CONSTRAINT {p}to_other REFERENCES {p}other); "
        "INSERT INTO {p}t SELECT g, 'v' || g, g, 1 FROM " + ROWS + "; "
        "CREATE VIEW {p}reads_other AS SELECT id FROM {p}other",
        tables=("t", "parent"),
        ddl=False,
        absent=("other", "reads_other"),
    ),
    "unique_keys": Case(
        "CREATE TABLE {p}t (id int PRIMARY KEY, v text, u text UNIQUE); "
        "CREATE INDEX {p}expr ON {p}t (lower(v)); "
        "INSERT INTO {p}t SELECT g, 'v' || g, 'u' || g FROM " + ROWS
    ),
}

# Indexes and keys of a table the migration does not touch: post-data must still be applied.
TARGET_NOISE = (
    "CREATE TABLE unrelated (a int PRIMARY KEY, b int UNIQUE, c int); "
    "CREATE INDEX u1 ON unrelated (c); CREATE INDEX u2 ON unrelated (c, b); "
    "CREATE INDEX u3 ON unrelated (b, c); CREATE INDEX u4 ON unrelated (a, c)"
)


@dataclass
class SharedRun:
    src: str
    dst: str
    store: Engine
    result: MigrationResult


@pytest.fixture(scope="module")
def objects_run(prefect_api: str, pg_databases: DatabaseFactory) -> Iterator[SharedRun]:
    """Every object case in one source, migrated in one run (tables named by each case)."""
    src, dst = pg_databases.create("osrc"), pg_databases.create("odst")
    store = get_engine(pg_databases.create("ostore"))
    upgrade(store)
    run_sql(
        src,
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'custody_reader') "
        "THEN CREATE ROLE custody_reader; END IF; END $$",
    )
    tables = []
    for key, c in OBJECT_CASES.items():
        run_sql(src, c.sql.replace("{p}", f"{key}_"))
        tables += [f"{key}_{t}" for t in c.tables]
    run_sql(dst, TARGET_NOISE)
    with pytest.MonkeyPatch.context() as mp:
        set_custody_env(
            mp,
            store_url=store.url.render_as_string(hide_password=False),
            connections={"src": src, "dst": dst},
        )
        _, result = migrate(tables=tables, job_id="objects", chunk_size=4)
        yield SharedRun(src, dst, store, result)


def _failures(result: MigrationResult) -> list[str]:
    return [
        f"{t.table}: {t.failures[:1]} {t.quality.failed if t.quality else ''}"
        for t in result.tables
        if t.failed_chunks or (t.quality is not None and not t.quality.success)
    ]


def _case_relations(url: str, prefix: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'm', 'v') "
                "AND starts_with(c.relname, %s) ORDER BY 1",
                (prefix,),
            )
        ]


def _populated(url: str, relation: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT relispopulated FROM pg_class WHERE oid = to_regclass(%s)", (relation,)
        ).fetchone()
    assert row is not None
    return bool(row[0])


@pytest.mark.parametrize("key", list(OBJECT_CASES))
def test_schema_object_migrates_exactly(objects_run: SharedRun, key: str) -> None:
    run, case, p = objects_run, OBJECT_CASES[key], f"{key}_"
    assert run.result.status == "success", _failures(run.result)
    migrated = [p + t for t in case.tables]
    on_target = _case_relations(run.dst, p)
    expected = [r for r in _case_relations(run.src, p) if r[len(p) :] not in case.absent]
    assert on_target == expected
    for rel in on_target:
        if _populated(run.src, rel) if rel.endswith("mv") or rel.endswith("empty") else True:
            assert relation_digest(run.src, "public", rel) == relation_digest(
                run.dst, "public", rel
            ), rel
        else:  # WITH NO DATA on the source: left unpopulated on the target too
            assert not _populated(run.dst, rel)
    if case.ddl:
        assert schema_ddl(run.src, "public", on_target) == schema_ddl(run.dst, "public", on_target)
    ours = {k: v for k, v in sequence_states(run.src, "public").items() if k.startswith(p)}
    assert ours == {k: v for k, v in sequence_states(run.dst, "public").items() if k.startswith(p)}
    grants_src = {g for g in grants(run.src, "public") if g[0].startswith(p)}
    assert grants_src == {g for g in grants(run.dst, "public") if g[0].startswith(p)}
    if key == "fk_subset":
        _check_foreign_keys(run, p, migrated)
    if case.mutate is not None:
        table, column, changed, value = case.mutate
        job = table_job_id("objects", p + table)
        assert reverify("src", "dst", "public", p + table, store=run.store, job_id=job) == []
        mutate_one(run.dst, "public", p + (changed or table), column, value)
        bad = reverify("src", "dst", "public", p + table, store=run.store, job_id=job)
        assert len(bad) == 1, bad


def _check_foreign_keys(run: SharedRun, p: str, migrated: list[str]) -> None:
    """The key between migrated tables holds on the target; the one to a table not asked for
    is listed in the report, as is the view reading that table."""
    with psycopg.connect(run.dst) as conn:
        fks = conn.execute(
            "SELECT conname, confrelid::regclass::text FROM pg_constraint "
            "WHERE contype = 'f' AND conrelid = to_regclass(%s)",
            (p + "t",),
        ).fetchall()
    assert fks == [(f"{p}t_parent_fkey", f"{p}parent")]
    assert f"foreign key {p}to_other on {p}t -> {p}other: not migrated " in " ".join(
        run.result.notes
    )
    assert any(n.startswith(f"view {p}reads_other: not migrated") for n in run.result.notes)


def test_the_grants_case_grants_something(objects_run: SharedRun) -> None:
    """The grants case compares non-empty sets (a copy without grants would also be equal)."""
    assert len({g for g in grants(objects_run.dst, "public") if g[0] == "grants_t"}) == 5
    with psycopg.connect(objects_run.dst) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_description WHERE objoid IN "
            "(to_regclass('comments_t'), to_regclass('comments_t_v'))"
        ).fetchone() == (3,)


# ---------------------------------------------------------------------------------------------
# Pre-created targets: same types, the target's own primary key, and wider types (allowed).
# ---------------------------------------------------------------------------------------------

PRECREATED = {
    "same": (
        "CREATE TABLE same_t (id int PRIMARY KEY, v varchar(20))",
        "CREATE TABLE same_t (id int, v varchar(20))",
    ),
    "key": (
        "CREATE TABLE key_t (id int PRIMARY KEY, v text, UNIQUE (v))",
        "CREATE TABLE key_t (id int CONSTRAINT my_own_key PRIMARY KEY, v text)",
    ),
    "wide": (
        "CREATE TABLE wide_t (id int PRIMARY KEY, v varchar(5), n smallint, w varchar(3))",
        "CREATE TABLE wide_t (id bigint PRIMARY KEY, v text, n integer, w varchar(10))",
    ),
}


def test_precreated_targets_same_own_key_and_wider(dbs: tuple[str, str], pg_store: Engine) -> None:
    src, dst = dbs
    for key, (source, target) in PRECREATED.items():
        run_sql(src, source)
        cols = "id, v" + (", n, w" if key == "wide" else "")
        values = "g, 'v' || g" + (", g, 'w'" if key == "wide" else "")
        run_sql(src, f"INSERT INTO {key}_t ({cols}) SELECT {values} FROM {ROWS}")
        run_sql(dst, target)
    types_before = _column_types(dst)
    _, result = migrate(
        tables=[f"{k}_t" for k in PRECREATED],
        job_id="pre",
        create_schema=False,
        allow_widening=True,
    )
    assert result.status == "success", _failures(result)
    for key in PRECREATED:
        assert relation_digest(src, "public", f"{key}_t") == relation_digest(
            dst, "public", f"{key}_t"
        )
    assert _column_types(dst) == types_before  # the user's tables keep their types
    with psycopg.connect(dst) as conn:
        keys = conn.execute(
            "SELECT conrelid::regclass::text, conname FROM pg_constraint WHERE contype = 'p' "
            "AND connamespace = 'public'::regnamespace ORDER BY 1"
        ).fetchall()
    # The bare table got the source's key after the data; the keyed one kept its own only.
    assert keys == [("key_t", "my_own_key"), ("same_t", "same_t_pkey"), ("wide_t", "wide_t_pkey")]
    for key in PRECREATED:
        bad = _reverify_widened(src, dst, pg_store, f"{key}_t")
        assert bad == []
        mutate_one(dst, "public", f"{key}_t", "v")
        assert len(_reverify_widened(src, dst, pg_store, f"{key}_t")) == 1


def _column_types(url: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT table_name::text, column_name::text, data_type::text "
            "FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2"
        ).fetchall()


def _reverify_widened(src: str, dst: str, store: Engine, table: str) -> list[int]:
    """The product's chunk verification as the run did it (a widened table compares text)."""
    info = check_target_columns(
        get_engine(src),
        get_engine(dst),
        describe_table(get_engine(src), "public", table),
        allow_widening=True,
    )
    with store.connect() as c:
        rows = c.execute(
            select(job_chunks.c.chunk_no, job_chunks.c.lower_key, job_chunks.c.upper_key).where(
                job_chunks.c.job_id == table_job_id("pre", table)
            )
        ).all()
    assert rows
    chunks = [
        Chunk(
            job_id="pre",
            chunk_no=r.chunk_no,
            lower=None if r.lower_key is None else orjson.loads(r.lower_key),
            upper=None if r.upper_key is None else orjson.loads(r.upper_key),
        )
        for r in rows
    ]
    return [c.chunk_no for c in chunks if not verify_range("src", "dst", info, c).verified]


# ---------------------------------------------------------------------------------------------
# Refused up front: the message names the object and the reason, and nothing is written.
# ---------------------------------------------------------------------------------------------

REFUSALS = [
    pytest.param(
        "CREATE TABLE t (id int PRIMARY KEY, v varchar(5)); INSERT INTO t VALUES (1, 'a')",
        "CREATE TABLE t (id bigint PRIMARY KEY, v varchar(5))",
        {"create_schema": False},
        "table public.t column id: source type integer, target type bigint (a widening",
        id="wider-without-permission",
    ),
    pytest.param(
        "CREATE TABLE t (id bigint PRIMARY KEY, v text, at bigint); "
        "INSERT INTO t VALUES (1, 'a', 5)",
        "CREATE TABLE t (id bigint PRIMARY KEY, v bytea, at timestamp)",
        {"allow_widening": True},
        "table public.t column v: source type text, target type bytea; table public.t column "
        "at: source type bigint, target type timestamp without time zone",
        id="drifted-types",
    ),
    pytest.param(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')",
        "CREATE TABLE t (id int PRIMARY KEY, v text, must int NOT NULL)",
        {},
        "table public.t column must: NOT NULL on the target without a default",
        id="target-needs-a-column",
    ),
    pytest.param(
        "CREATE TABLE t (id int PRIMARY KEY, doc oid); "
        "INSERT INTO t VALUES (1, lo_from_bytea(0, 'hello'))",
        "",
        {},
        "large objects are not migrated, and these columns may reference them: t.doc",
        id="large-object-column",
    ),
]


@pytest.mark.parametrize(("source", "target", "params", "message"), REFUSALS)
def test_refused_before_anything_is_written(
    dbs: tuple[str, str],
    pg_store: Engine,
    source: str,
    target: str,
    params: dict[str, object],
    message: str,
) -> None:
    src, dst = dbs
    run_sql(src, source)
    if target:
        run_sql(dst, target)
    before = schema_ddl(dst, "public"), differences(src, dst)
    state, _ = migrate(tables=["t"], job_id="refused", **params)
    assert state.is_failed() and message in (state.message or ""), state.message
    assert (schema_ddl(dst, "public"), differences(src, dst)) == before
    with pg_store.connect() as c:
        assert c.execute(select(job_chunks.c.job_id)).first() is None


def test_an_extension_the_target_cannot_install_is_refused_naming_it(pg_url: str) -> None:
    scope = SchemaScope(schema="public", tables=[])
    scope.extensions["no_such_ext"] = Extension("no_such_ext", "public", "public.t.col")
    with pytest.raises(
        MigrationRefusedError,
        match=r"extension no_such_ext \(needed by "
        r"public\.t\.col\) is not installed on the target and not available",
    ):
        refuse_missing_extensions(get_engine(pg_url), scope)


# ---------------------------------------------------------------------------------------------
# Re-run into a migrated target with replace_existing after rows were deleted at the source.
# ---------------------------------------------------------------------------------------------


def test_rerun_with_replace_existing_after_source_deletes(
    dbs: tuple[str, str], pg_store: Engine
) -> None:
    src, dst = dbs
    run_sql(
        src,
        "CREATE TABLE t (id int PRIMARY KEY, v text); "
        "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 12) g; "
        "CREATE TABLE emptied (id int PRIMARY KEY); INSERT INTO emptied VALUES (1), (2)",
    )
    _, first = migrate(tables=["t", "emptied"], job_id="again-1")
    assert first.status == "success"
    run_sql(src, "DELETE FROM t WHERE id IN (1, 5, 11, 12); UPDATE t SET v = 'new' WHERE id = 7")
    run_sql(src, "DELETE FROM emptied")  # rows above the largest key, and a table with none
    _, second = migrate(tables=["t", "emptied"], job_id="again-2", replace_existing=True)
    assert second.status == "success", _failures(second)
    assert differences(src, dst) == []
    assert_mutation_found(dst, pg_store, "again-2", "public", "t", "v")


def test_grants_are_left_out_when_copy_grants_is_off(dbs: tuple[str, str]) -> None:
    src, dst = dbs
    run_sql(
        src,
        "CREATE TABLE t (id int PRIMARY KEY, v text); GRANT SELECT, UPDATE (v) ON t TO PUBLIC; "
        "INSERT INTO t VALUES (1, 'a')",
    )
    _, result = migrate(tables=["t"], job_id="no-grants", copy_grants=False)
    assert result.status == "success", _failures(result)
    assert differences(src, dst) == []
    assert len(grants(src, "public")) == 2 and grants(dst, "public") == set()
