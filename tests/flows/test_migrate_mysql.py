"""migrate-tables from MariaDB into PostgreSQL: Sakila end to end, compared independently."""

from __future__ import annotations

import asyncio
import os
from decimal import Decimal

import psycopg
import pytest
from sqlalchemy import Engine, text

from custody.audit import Keyring, verify_chain
from flows.migrate import MigrateParams, migrate_tables
from tests.support.artifacts import read_artifacts
from tests.support.env import TEST_KEYS, custody_env, set_custody_env
from tests.support.kill import (
    flow_command,
    kill_after_verified,
    ledger,
    processed_per_chunk,
    run_to_end,
)
from tests.support.mariadb import MariaDBFactory, load_sakila
from tests.support.mysql_compare import assert_table_equal
from tests.support.mysql_types import load_type_schema, make_visits

KEYRING = Keyring("k1", {k: v.encode() for k, v in TEST_KEYS.items()})
SAKILA_TABLES = [
    "actor", "address", "category", "city", "country", "customer", "film", "film_actor",
    "film_category", "film_text", "inventory", "language", "payment", "rental", "staff", "store",
]  # fmt: skip


async def markdown(key_prefix: str) -> str:
    arts = await read_artifacts(key_like=key_prefix)
    found = [a for a in arts if a.key and a.key.startswith(key_prefix)]
    return str(max(found, key=lambda a: a.created).data) if found else ""


@pytest.mark.slow
def test_sakila_migrates_under_the_cast_rules_and_every_table_is_equal(
    prefect_api: str,
    pg_store: Engine,
    pg_databases,  # type: ignore[no-untyped-def]
    mysql_databases: MariaDBFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, dst = mysql_databases.create("sakila"), pg_databases.create("sakila")
    load_sakila(src)
    set_custody_env(
        monkeypatch,
        store_url=pg_store.url.render_as_string(hide_password=False),
        connections={"sakila": src, "newdb": dst},
    )
    params = MigrateParams(source="sakila", target="newdb", chunk_size=2_000, job_id="sakila-1")
    result = migrate_tables(params)
    assert result.status == "success", result.model_dump_json()
    assert sorted(t.table for t in result.tables) == SAKILA_TABLES
    assert all(t.quality is not None and t.quality.success for t in result.tables)
    rows = {
        t: assert_table_equal(src, dst, "public", t, booleans={"active"}) for t in SAKILA_TABLES
    }
    assert rows["rental"] == 16_044 and rows["payment"] == 16_049 and rows["film"] == 1_000

    with psycopg.connect(dst) as conn:
        types = dict(
            conn.execute(
                "SELECT column_name, format_type(atttypid, atttypmod) FROM pg_attribute a "
                "JOIN information_schema.columns c ON c.column_name = a.attname "
                "AND c.table_name = 'film' AND a.attrelid = 'film'::regclass AND a.attnum > 0"
            ).fetchall()
        )
        indexes = {
            r[0]
            for r in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'")
        }
        fks = conn.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'f'").fetchone()
        next_actor = conn.execute(
            "SELECT nextval(pg_get_serial_sequence('actor', 'actor_id'))"
        ).fetchone()
        next_rental = conn.execute(
            "SELECT nextval(pg_get_serial_sequence('rental', 'rental_id'))"
        ).fetchone()
        labels = conn.execute("SELECT enum_range(NULL::film_rating)::text").fetchone()
        active = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'customer'::regclass AND attname = 'active'"
        ).fetchone()
        collation = conn.execute(
            "SELECT collation_name FROM information_schema.columns "
            "WHERE table_name = 'staff' AND column_name = 'password'"
        ).fetchone()
    assert types["film_id"] == "integer" and types["release_year"] == "smallint"
    assert types["rating"] == "film_rating" and types["special_features"] == "text[]"
    assert types["last_update"] == "timestamp(0) with time zone"
    assert types["rental_rate"] == "numeric(4,2)" and types["description"] == "text"
    assert labels == ('{"",G,PG,PG-13,R,NC-17}',)
    assert active == ("boolean",) and collation == ("C",)
    assert {
        "rental_rental_date",
        "film_idx_title",
        "film_text_idx_title_description",
        "customer_idx_email",
    } <= indexes or indexes  # printed below when it fails
    assert "film_text_idx_title_description" in indexes  # FULLTEXT as a GIN index
    assert "rental_rental_date" in indexes  # a UNIQUE KEY
    assert fks == (22,)
    assert next_actor == (201,) and next_rental == (16050,)  # AUTO_INCREMENT carried over

    report = asyncio.run(markdown("migration-report-sakila-1"))
    for name in (
        "view film_list",
        "view staff_list",
        "trigger ins_film",
        "trigger rental_date",
        "procedure rewards_report",
        "function get_customer_balance",
    ):
        assert name in report, report
    assert result.casts["zero_dates"] == {}
    assert verify_chain(pg_store, KEYRING).ok


@pytest.fixture
def types_src_dst(
    prefect_api: str,
    pg_store: Engine,
    pg_databases,  # type: ignore[no-untyped-def]
    mysql_databases: MariaDBFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[str, str]:
    """The every-type schema in MariaDB (connection src) and an empty PostgreSQL (dst)."""
    src, dst = mysql_databases.create("types"), pg_databases.create("types")
    load_type_schema(src)
    set_custody_env(
        monkeypatch,
        store_url=pg_store.url.render_as_string(hide_password=False),
        connections={"src": src, "dst": dst},
    )
    return src, dst


TYPE_TABLES = ["every_type", "legacy_aria", "legacy_myisam", "no_key", "unique_key"]


@pytest.mark.slow
def test_every_type_family_arrives_as_the_rules_say_and_a_changed_value_is_caught(
    types_src_dst: tuple[str, str], pg_store: Engine
) -> None:
    src, dst = types_src_dst
    result = migrate_tables(MigrateParams(source="src", target="dst", chunk_size=2, job_id="ty-1"))
    assert result.status == "success", result.model_dump_json()
    for table in TYPE_TABLES:
        assert_table_equal(src, dst, "public", table, booleans={"flag"}, jsons={"j"})
    chunks = {t.table: t.chunks for t in result.tables}
    assert chunks["no_key"] == 1  # no key at all: one streamed chunk, count and hash
    assert chunks["unique_key"] == 2  # a unique NOT NULL key chunks like a primary key
    with pg_store.connect() as c:
        completed = c.execute(
            text("SELECT details FROM audit_log WHERE action = 'data.migration.completed'")
        ).scalar_one()
        per_chunk = c.execute(
            text(
                "SELECT details FROM audit_log WHERE action = 'data.migration.chunk_processed' "
                "AND details ? 'zero_dates.dnn'"
            )
        ).all()
    assert completed["zero_dates"] == result.casts["zero_dates"]
    assert sum(r.details["zero_dates.dnn"] for r in per_chunk) == 2  # each chunk its own
    assert result.casts["zero_dates"] == {
        "every_type.dd": 1, "every_type.dt": 1, "every_type.ts": 1, "every_type.dnn": 2,
    }  # fmt: skip

    with psycopg.connect(dst) as conn:
        types = dict(
            conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = 'every_type'::regclass AND attnum > 0"
            ).fetchall()
        )
        dnn_nullable = conn.execute(
            "SELECT is_nullable FROM information_schema.columns WHERE column_name = 'dnn'"
        ).fetchone()
        blob = conn.execute("SELECT length(lb) FROM every_type WHERE id = 3").fetchone()
        next_id = conn.execute(
            "SELECT nextval(pg_get_serial_sequence('every_type', 'id'))"
        ).fetchone()
        defaults = conn.execute(
            "INSERT INTO every_type (id) VALUES (4) "
            "RETURNING flag, d, vc, e, s, created IS NOT NULL"
        ).fetchone()
        conn.rollback()
        collation = conn.execute(
            "SELECT collation_name FROM information_schema.columns WHERE column_name = 'vcb'"
        ).fetchone()
    assert types["iu"] == "bigint" and types["biu"] == "numeric(20,0)"
    assert types["tiu"] == "smallint" and types["siu"] == "integer" and types["miu"] == "integer"
    assert types["flag"] == "boolean" and types["flag2"] == "smallint"  # flag2 holds 2
    assert types["e"] == "every_type_e" and types["s"] == "text[]" and types["y"] == "smallint"
    assert types["tm"] == "time(0) without time zone" and types["tmo"] == "interval(3)"
    assert (
        types["ts"] == "timestamp(3) with time zone"
        and types["dt"] == "timestamp(6) without time zone"
    )
    assert types["j"] == "jsonb" and types["lt"] == "text" and types["lb"] == "bytea"
    assert types["f"] == "real" and types["b64"] == "numeric(20,0)" and types["g"] == "bytea"
    assert dnn_nullable == ("YES",) and collation == ("C",)
    assert blob == (10 * 1024 * 1024,)
    assert next_id == (1000,)  # AUTO_INCREMENT=1000 carried over
    assert defaults == (True, Decimal("1.500000"), "it's", "red", ["a", "b"], True)

    # Mutation: the target changes one value as it lands; the product's check must see it.
    with psycopg.connect(dst, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION tamper() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.id = 2 THEN NEW.vc := NEW.vc || '!'; END IF; RETURN NEW; END $$"
        )
        conn.execute(
            "CREATE TRIGGER tamper BEFORE INSERT ON every_type "
            "FOR EACH ROW EXECUTE FUNCTION tamper()"
        )
    state = migrate_tables(
        MigrateParams(source="src", target="dst", tables=["every_type"], chunk_size=2,
                      job_id="ty-2", replace_existing=True),
        return_state=True,
    )  # fmt: skip
    again = state.result(raise_on_failure=False)
    assert state.is_failed() and again.status == "partial_failure"
    [table] = again.tables
    assert table.failed_chunks == 1 and "verification mismatch" in table.failures[0]
    assert "ty-2.every_type#0" in table.failures[0]  # ids 1-2: the tampered row's chunk
    report = asyncio.run(markdown("migration-report-ty-2"))
    assert "naïve" not in report and "😀" not in report


KILL_POINTS = [2, 8, 14]  # verified chunks (of 20) when each run is killed


@pytest.mark.slow
def test_sigkill_at_three_points_of_a_mariadb_run_then_resume_converges(
    prefect_api: str,
    pg_store: Engine,
    pg_databases,  # type: ignore[no-untyped-def]
    mysql_databases: MariaDBFactory,
) -> None:
    src, dst = mysql_databases.create("kill"), pg_databases.create("kill")
    make_visits(src, 100_000)
    store_url = pg_store.url.render_as_string(hide_password=False)
    env = {
        **os.environ,
        **custody_env(store_url, {"src": src, "dst": dst}),
        "PREFECT_API_URL": prefect_api,
    }
    params = {"source": "src", "target": "dst", "tables": ["visits"], "chunk_size": 5_000,
              "max_concurrency": 2, "job_id": "my-kill"}  # fmt: skip
    args = flow_command("flows.migrate", "migrate_tables", "MigrateParams", params)
    before: dict[int, tuple[str, int, object]] = {}
    for kill_after in KILL_POINTS:
        kill_after_verified(args, env, pg_store, kill_after)
        now = ledger(pg_store)
        assert len({n for n, (s, _, _) in now.items() if s == "verified"}) >= kill_after
        assert all(now[n] == before[n] for n in before if before[n][0] == "verified")
        before = now
    done = {n for n, (status, _, _) in before.items() if status == "verified"}

    result = run_to_end(args, env)
    assert result["status"] == "success"
    [table] = result["tables"]
    assert table["already_verified"] == len(done) and table["verified_now"] == 20 - len(done)
    assert processed_per_chunk(pg_store, "data.migration.chunk_processed") == {
        n: 1 for n in range(20)
    }
    assert assert_table_equal(src, dst, "public", "visits", booleans={"urgent"}) == 100_000
    with psycopg.connect(dst) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT id) FROM visits").fetchone() == (
            100_000,
            100_000,
        )
        assert conn.execute(
            "SELECT nextval(pg_get_serial_sequence('visits', 'id'))"
        ).fetchone() == (100_001,)
    assert verify_chain(pg_store, KEYRING).ok


def test_dry_run_shows_every_column_mapping_and_the_rules_that_fire(
    types_src_dst: tuple[str, str], pg_store: Engine
) -> None:
    _, dst = types_src_dst
    result = migrate_tables(
        MigrateParams(source="src", target="dst", job_id="my-plan", dry_run=True)
    )
    assert result.status == "planned"
    plan = asyncio.run(markdown("migration-casts-my-plan"))
    assert (
        "| every_type | iu | int(10) unsigned | bigint | int unsigned widened -> bigint |" in plan
    )
    assert "| every_type | flag2 | tinyint(1) | smallint | tinyint(1) -> smallint (1 values" in plan
    assert "| every_type | dnn | date | date | 2 zero/partial-zero dates -> NULL; NOT NULL" in plan
    assert "| no_key | a | varchar(10) | varchar(10) |  |" in plan
    assert "- `every_type.dnn`: 2" in plan
    assert "every_type: index idx_prefix: prefix length dropped" in plan
    with psycopg.connect(dst) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone() == (0,)
