"""migrate-tables end to end on PostgreSQL: Pagila, a failing chunk, SIGKILL and resume."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, func, select, text

from custody.audit import Keyring, verify_chain
from custody.db import get_engine
from custody.store.tables import dead_letters, job_chunks
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
from tests.support.pagila import load_pagila, table_digests
from tests.support.tables import make_keys

ROOT = Path(__file__).resolve().parents[2]
KEYRING = Keyring("k1", {k: v.encode() for k, v in TEST_KEYS.items()})


async def markdown(key_prefix: str) -> str:
    arts = await read_artifacts(key_like=key_prefix)
    found = [a for a in arts if a.key and a.key.startswith(key_prefix)]
    return str(max(found, key=lambda a: a.created).data) if found else ""


@pytest.fixture
def src_dst(
    prefect_api: str,
    pg_store: Engine,
    pg_databases,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> tuple[str, str]:
    """Fresh source and target databases, named src and dst in custody's settings."""
    src, dst = pg_databases.create("src"), pg_databases.create("dst")
    set_custody_env(
        monkeypatch,
        store_url=pg_store.url.render_as_string(hide_password=False),
        connections={"src": src, "dst": dst},
    )
    return src, dst


@pytest.mark.slow
def test_pagila_migrates_exactly_and_a_rerun_does_nothing(
    prefect_api: str,
    pg_store: Engine,
    pg_databases,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    src, dst = pg_databases.create("pagila"), pg_databases.create("newdb")
    load_pagila(src)
    set_custody_env(
        monkeypatch,
        store_url=pg_store.url.render_as_string(hide_password=False),
        connections={"pagila": src, "newdb": dst},
    )
    params = MigrateParams(source="pagila", target="newdb", chunk_size=2_000, job_id="pagila-1")
    result = migrate_tables(params)
    assert result.status == "success", result.model_dump_json()
    assert table_digests(src) == table_digests(dst)  # every table (and partition) equal
    assert len(result.tables) == 15  # payment counted once: its partitions come through it
    assert all(t.quality is not None and t.quality.success for t in result.tables)
    with psycopg.connect(dst) as conn:
        types = dict(
            conn.execute(
                "SELECT column_name, COALESCE(domain_name, udt_name) "
                "FROM information_schema.columns WHERE table_name = 'film' "
                "AND column_name IN ('rating', 'special_features', 'fulltext', 'release_year')"
            ).fetchall()
        )
        triggers = conn.execute("SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal").fetchone()
        next_id = conn.execute("SELECT nextval('actor_actor_id_seq')").fetchone()
        load_indexes = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'custody\\_load\\_%'"
        ).fetchone()
        partitions = conn.execute(
            "SELECT count(*) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE c.relkind = 'r' AND i.inhparent = 'payment'::regclass"
        ).fetchone()
    assert types == {
        "rating": "mpaa_rating",
        "special_features": "_text",
        "fulltext": "tsvector",
        "release_year": "year",
    }
    assert triggers and triggers[0] >= 15
    assert next_id and next_id[0] == 201  # sequences follow the source
    assert partitions and partitions[0] == 7
    assert load_indexes == (0,)  # the BRIN indexes used while loading are gone

    again = migrate_tables(params)
    assert again.status == "success" and again.nothing_to_do
    assert "Nothing to do" in asyncio.run(markdown("migration-report-pagila-1"))
    assert verify_chain(pg_store, KEYRING).ok


def test_a_rejected_row_fails_its_chunk_only(src_dst: tuple[str, str], pg_store: Engine) -> None:
    src, dst = src_dst
    make_keys(get_engine(src), 50_000)
    with psycopg.connect(dst, autocommit=True) as conn:  # a target that refuses one row
        conn.execute(
            "CREATE TABLE items (id bigint, label text NOT NULL CHECK (label <> 'k31337'))"
        )
    params = MigrateParams(
        source="src", target="dst", tables=["items"], chunk_size=5_000, job_id="reject-1"
    )
    state = migrate_tables(params, return_state=True)
    result = state.result(raise_on_failure=False)
    assert state.is_failed() and result.status == "partial_failure"
    [table] = result.tables
    assert (table.chunks, table.failed_chunks, table.verified_rows) == (10, 1, 45_000)
    with pg_store.connect() as c:
        failed = c.execute(
            select(job_chunks.c.chunk_no, job_chunks.c.error).where(job_chunks.c.status == "failed")
        ).all()
        letters = c.execute(select(dead_letters.c.item_ref, dead_letters.c.error_type)).all()
    assert [f.chunk_no for f in failed] == [6] and "items_label_check" in failed[0].error
    assert letters == [("reject-1.items#6", "CheckViolation")]
    report = asyncio.run(markdown("migration-report-reject-1"))
    assert "reject-1.items#6" in report and "CheckViolation" in report and "k31337" not in report
    with get_engine(dst).connect() as c:
        assert c.execute(text("SELECT count(*) FROM items")).scalar_one() == 45_000


KILL_POINTS = [1, 4, 8, 12, 16]  # verified chunks (of 20) when each run is killed


@pytest.mark.slow
def test_sigkill_at_five_points_then_resume_converges(
    prefect_api: str,
    pg_store: Engine,
    pg_databases,  # type: ignore[no-untyped-def]
) -> None:
    """One job, SIGKILLed five times in turn at later and later points; the sixth run finishes.

    Each resumed run must leave what earlier runs verified alone and redo only the rest.
    """
    src, dst = pg_databases.create("src"), pg_databases.create("dst")
    make_keys(get_engine(src), 200_000)
    store_url = pg_store.url.render_as_string(hide_password=False)
    env = {
        **os.environ,
        **custody_env(store_url, {"src": src, "dst": dst}),
        "PREFECT_API_URL": prefect_api,
    }
    params = {
        "source": "src",
        "target": "dst",
        "tables": ["items"],
        "chunk_size": 10_000,
        "max_concurrency": 2,
        "job_id": "kill-five",
    }
    args = flow_command("flows.migrate", "migrate_tables", "MigrateParams", params)

    before: dict[int, tuple[str, int, object]] = {}
    for kill_after in KILL_POINTS:
        kill_after_verified(args, env, pg_store, kill_after)
        now = ledger(pg_store)
        verified = {n for n, (status, _, _) in now.items() if status == "verified"}
        assert len(verified) >= kill_after
        assert all(now[n] == before[n] for n in before if before[n][0] == "verified")
        before = now
    done = {n for n, (status, _, _) in before.items() if status == "verified"}

    result = run_to_end(args, env)
    assert result["status"] == "success"
    [table] = result["tables"]
    assert table["already_verified"] == len(done) and table["verified_now"] == 20 - len(done)
    after = ledger(pg_store)
    assert all(after[n] == before[n] for n in done)  # only unfinished chunks were redone
    assert processed_per_chunk(pg_store, "data.migration.chunk_processed") == {
        n: 1 for n in range(20)
    }
    assert table_digests(src) == table_digests(dst)
    with get_engine(dst).connect() as c:
        assert c.execute(text("SELECT count(*), count(DISTINCT id) FROM items")).one() == (
            200_000,
            200_000,
        )
    assert verify_chain(pg_store, KEYRING).ok


def test_dry_run_plans_and_changes_nothing(src_dst: tuple[str, str], pg_store: Engine) -> None:
    src, dst = src_dst
    make_keys(get_engine(src), 30_000)
    with psycopg.connect(src, autocommit=True) as conn:
        conn.execute("ANALYZE items")
    result = migrate_tables(
        MigrateParams(source="src", target="dst", chunk_size=10_000, job_id="plan-1", dry_run=True)
    )
    assert result.status == "planned"
    plan = asyncio.run(markdown("migration-plan-plan-1"))
    assert "| items | 30000 | 3 | id | binary |" in plan
    with psycopg.connect(dst) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone() == (0,)
    with pg_store.connect() as c:
        assert c.execute(select(func.count()).select_from(job_chunks)).scalar_one() == 0


def test_a_run_that_dies_before_completing_is_audited_as_failed(
    src_dst: tuple[str, str], pg_store: Engine
) -> None:
    """An exception escaping the flow still leaves an audit row, naming only its class."""
    src, _ = src_dst
    make_keys(get_engine(src), 100)
    state = migrate_tables(
        MigrateParams(source="src", target="nowhere", job_id="dies-1"), return_state=True
    )
    assert state.is_failed() and "nowhere" in (state.message or "")
    with pg_store.connect() as c:
        rows = c.execute(
            text("SELECT action, status, details FROM audit_log WHERE resource_id = 'dies-1'")
        ).all()
    assert [(r.action, r.status) for r in rows] == [("data.migration.failed", "failed")]
    assert rows[0].details["error"] == "ConfigError" and rows[0].details["outcome"] == "failed"
