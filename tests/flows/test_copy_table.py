"""copy-table end to end: verified copy, artifacts, and resume after SIGKILL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from custody.audit import Keyring, verify_chain
from custody.db import get_engine
from custody.identifiers import reflect_table
from custody.transfer.generic import fingerprint_range
from flows.copy_table import CopyTableParams, copy_table
from tests.support.env import TEST_KEYS, custody_env, set_custody_env
from tests.support.kill import (
    flow_command,
    kill_after_verified,
    ledger,
    processed_per_chunk,
    run_to_end,
)
from tests.support.tables import make_items, make_keys

ROOT = Path(__file__).resolve().parents[2]
KEYRING = Keyring("k1", {k: v.encode() for k, v in TEST_KEYS.items()})


def same_content(source: Engine, target: Engine) -> bool:
    src = fingerprint_range(source, reflect_table(source, "items"), "id", None, None)
    dst = fingerprint_range(target, reflect_table(target, "items"), "id", None, None)
    return (src.count, src.hexdigest) == (dst.count, dst.hexdigest)


@pytest.mark.slow
def test_copy_table_verifies_and_a_second_run_with_the_job_id_does_nothing(
    prefect_api: str,
    pg_store: Engine,
    pg_databases,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    src, dst = pg_databases.create("src"), pg_databases.create("dst")
    make_items(get_engine(src), 25_000)
    set_custody_env(
        monkeypatch,
        store_url=pg_store.url.render_as_string(hide_password=False),
        connections={"src": src, "dst": dst},
    )
    params = CopyTableParams(
        source="src",
        target="dst",
        table="items",
        key_column="id",
        chunk_size=5_000,
        job_id="copy-items-1",
    )
    first = copy_table(params)
    assert (first.total, first.successful, first.rows, first.status) == (5, 5, 25_000, "success")
    assert same_content(get_engine(src), get_engine(dst))
    again = copy_table(params)
    assert (again.successful, again.skipped, again.rows) == (0, 5, 0)
    assert verify_chain(pg_store, KEYRING).ok


@pytest.mark.slow
def test_sigkill_halfway_then_resume_processes_each_chunk_once(
    prefect_api: str,
    pg_store: Engine,
    pg_databases,  # type: ignore[no-untyped-def]
) -> None:
    src, dst = pg_databases.create("src"), pg_databases.create("dst")
    make_keys(get_engine(src), 1_000_000)
    store_url = pg_store.url.render_as_string(hide_password=False)
    env = {
        **os.environ,
        **custody_env(store_url, {"src": src, "dst": dst}),
        "PREFECT_API_URL": prefect_api,
    }
    params = {
        "source": "src",
        "target": "dst",
        "table": "items",
        "key_column": "id",
        "chunk_size": 25_000,
        "max_concurrency": 2,
        "job_id": "kill-1",
    }
    args = flow_command("flows.copy_table", "copy_table", "CopyTableParams", params)

    kill_after_verified(args, env, pg_store, 20)  # of 40 chunks: the halfway mark
    before = ledger(pg_store)
    done_before = {n for n, (status, _, _) in before.items() if status == "verified"}
    assert 20 <= len(done_before) < 40

    result = run_to_end(args, env)
    assert result["status"] == "success"
    assert result["skipped"] == len(done_before) and result["successful"] == 40 - len(done_before)
    after = ledger(pg_store)
    assert all(status == "verified" for status, _, _ in after.values()) and len(after) == 40
    assert all(after[n] == before[n] for n in done_before)  # verified chunks were not touched again
    assert processed_per_chunk(pg_store, "data.copy.chunk_processed") == {n: 1 for n in range(40)}
    with get_engine(dst).connect() as c:
        assert c.execute(text("SELECT count(*), count(DISTINCT id) FROM items")).one() == (
            1_000_000,
            1_000_000,
        )
    assert same_content(get_engine(src), get_engine(dst))
    assert verify_chain(pg_store, KEYRING).ok


@pytest.mark.slow
def test_a_job_id_is_bound_to_its_target_and_a_new_store_copies_again(
    prefect_api: str,
    pg_store: Engine,
    pg_databases,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    src, dst, other = (pg_databases.create(n) for n in ("src", "dst", "other"))
    make_items(get_engine(src), 1_000)
    connections = {"src": src, "dst": dst, "other": other}
    store_url = pg_store.url.render_as_string(hide_password=False)
    set_custody_env(monkeypatch, store_url=store_url, connections=connections)
    params = CopyTableParams(
        source="src", target="dst", table="items", key_column="id", job_id="bound-1"
    )
    assert copy_table(params).rows == 1_000
    moved = params.model_copy(update={"target": "other"})
    state = copy_table(moved, return_state=True)
    assert state.is_failed() and "planned as" in (state.message or "")

    fresh_store = get_engine(pg_databases.create("store2"))
    from custody.store import upgrade

    upgrade(fresh_store)
    with get_engine(dst).begin() as c:
        c.execute(text("DROP TABLE items"))
    set_custody_env(
        monkeypatch,
        store_url=fresh_store.url.render_as_string(hide_password=False),
        connections=connections,
    )
    again = copy_table(params)
    assert (again.rows, again.skipped) == (
        1_000,
        0,
    )  # nothing trusted from a cache outside the store
    assert same_content(get_engine(src), get_engine(dst))
