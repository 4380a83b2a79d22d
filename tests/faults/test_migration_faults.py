"""migrate-tables and copy-table with their database connections dropped in the middle of chunks.

Each chunk is stopped at a known point by a lock the test holds (an uncommitted row with a key
the chunk is about to copy, a table lock, a ledger row lock), then the connection it is using
is killed with ``pg_terminate_backend``. The runs must retry the chunk and end with the target
equal to the source, each chunk verified and audited once, and the audit chain intact.
"""

from __future__ import annotations

import time

import psycopg
from sqlalchemy import Engine, text

from custody.audit import verify_chain
from custody.db import get_engine
from flows.copy_table import CopyTableParams, copy_table
from flows.migrate import MigrateParams, migrate_tables
from tests.faults.conftest import (
    KEYRING,
    Pair,
    events_per_resource,
    ledger_rows,
    open_dead_letters,
)
from tests.support.faults import (
    FaultThread,
    HeldLock,
    chunk_waiting,
    pause_chunk,
    terminate,
    wait_for_backends,
)
from tests.support.pagila import table_digests
from tests.support.tables import make_keys

ROWS, CHUNK = 30_000, 10_000  # three chunks: (-, 10000], (10000, 20000], (20000, 30000]


def _blocking_row(dst: str, key: int) -> HeldLock:
    """An uncommitted target row with ``key``: the chunk copying it waits right there."""
    return HeldLock(dst, "INSERT INTO items VALUES (%s, 'not committed')", (key,))


def _target_items(dst: str) -> None:
    with psycopg.connect(dst, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL)")


def _converged(pair: Pair, store: Engine, job_id: str, events: str) -> None:
    """Target equal to source, no duplicate, every chunk verified and audited exactly once."""
    assert table_digests(pair.src) == table_digests(pair.dst)
    with get_engine(pair.dst).connect() as c:
        assert c.execute(text("SELECT count(*), count(DISTINCT id) FROM items")).one() == (
            ROWS,
            ROWS,
        )
    chunks = ledger_rows(store, job_id)
    assert {status for status, _ in chunks.values()} == {"verified"}
    assert events_per_resource(store, events) == {f"{job_id}#{n}": 1 for n in chunks}
    assert open_dead_letters(store) == 0
    assert verify_chain(store, KEYRING).ok


def test_migrate_survives_each_of_its_connections_dropped_mid_chunk(
    pair: Pair, pg_store: Engine
) -> None:
    """Chunk 0 loses its target connection mid-COPY, chunk 1 the source snapshot it reads in,
    chunk 2 the psql process streaming its rows; each is retried in the same run."""
    make_keys(get_engine(pair.src), ROWS)
    _target_items(pair.dst)
    job = "fault-migrate"
    held = [_blocking_row(pair.dst, 2_000), _blocking_row(pair.dst, 12_000)]
    killed: list[str] = []

    def script() -> None:
        chunk2 = pause_chunk(pair.store, f"{job}.items", 2)  # before chunk 0 can finish
        # Chunk 0: rows up to 2,000 sent, the target COPY waits on the uncommitted key.
        copy_in = wait_for_backends(pair.dst, "COPY %FROM STDIN%")
        assert terminate(pair.dst, copy_in) == 1
        killed.append("target")
        held[0].release()
        # Chunk 1: same wait; this time the source's snapshot-holding connection goes.
        wait_for_backends(pair.dst, "COPY %FROM STDIN%")
        snapshot = wait_for_backends(
            pair.src, "SELECT pg_export_snapshot()%", waiting=False, state="idle in transaction"
        )
        assert terminate(pair.src, snapshot) == 1
        killed.append("source snapshot")
        held[1].release()
        # Chunk 2: waits in the ledger; lock the source table, let it go, kill psql's COPY.
        chunk_waiting(pair.store)
        with psycopg.connect(pair.src) as lock:
            lock.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
            chunk2.release()
            copy_out = wait_for_backends(pair.src, "COPY (SELECT%")
            assert terminate(pair.src, copy_out) == 1
            killed.append("source psql")

    faults = FaultThread(script)
    try:
        result = migrate_tables(
            MigrateParams(source="src", target="dst", tables=["items"], chunk_size=CHUNK,
                          max_concurrency=1, job_id=job)
        )  # fmt: skip
    finally:
        for lock in held:
            lock.release()
    faults.join()

    assert killed == ["target", "source snapshot", "source psql"]
    assert result.status == "success", result.model_dump_json()
    [table] = result.tables
    assert (table.verified_now, table.failed_chunks, table.verified_rows) == (3, 0, ROWS)
    assert ledger_rows(pg_store, f"{job}.items") == {n: ("verified", 2) for n in range(3)}
    _converged(pair, pg_store, f"{job}.items", "data.migration.chunk_processed")


def test_copy_table_survives_target_source_and_store_connections_dropped(
    pair: Pair, pg_store: Engine
) -> None:
    """The generic path: chunk 0 loses the target, chunk 1 the source cursor, and chunk 2
    custody's own store while the verified chunk is being recorded (target committed)."""
    make_keys(get_engine(pair.src), ROWS)
    _target_items(pair.dst)
    job = "fault-copy"
    held = [_blocking_row(pair.dst, k) for k in (2_000, 12_000, 22_000)]
    killed: list[str] = []

    def script() -> None:
        copy_in = wait_for_backends(pair.dst, "COPY %FROM STDIN%")  # chunk 0 waits on 2,000
        assert terminate(pair.dst, copy_in) == 1
        killed.append("target")
        held[0].release()
        # Chunk 1: its source cursor still has rows to hand over when the target waits.
        wait_for_backends(pair.dst, "COPY %FROM STDIN%")
        cursor = wait_for_backends(pair.src, "%", waiting=False, state="idle in transaction")
        assert terminate(pair.src, cursor) == 1
        killed.append("source")
        held[1].release()
        # Chunk 2: copied and committed on the target, then the ledger update loses the store.
        wait_for_backends(pair.dst, "COPY %FROM STDIN%")
        # Under load the COPY seen above can still be chunk 1's: wait until chunk 2 has started
        # (its ledger row is running), so the UPDATE killed below is its finish, not its start.
        _wait_until_running(pair.store, job, 2)
        with psycopg.connect(pair.store) as row:
            row.execute(
                "SELECT 1 FROM job_chunks WHERE job_id = %s AND chunk_no = 2 FOR UPDATE", (job,)
            )
            held[2].release()
            assert terminate(pair.store, chunk_waiting(pair.store)) == 1
            killed.append("store")

    faults = FaultThread(script)
    try:
        result = copy_table(
            CopyTableParams(source="src", target="dst", table="items", key_column="id",
                            chunk_size=CHUNK, max_concurrency=1, job_id=job)
        )  # fmt: skip
    finally:
        for lock in held:
            lock.release()
    faults.join()

    assert killed == ["target", "source", "store"]
    assert (result.status, result.successful, result.failed, result.rows) == (
        "success", 3, 0, ROWS,
    )  # fmt: skip
    assert ledger_rows(pg_store, job) == {n: ("verified", 2) for n in range(3)}
    _converged(pair, pg_store, job, "data.copy.chunk_processed")


def _wait_until_running(store_url: str, job: str, chunk_no: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(store_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT status FROM job_chunks WHERE job_id = %s AND chunk_no = %s",
                (job, chunk_no),
            ).fetchone()
            if row is not None and row[0] == "running":
                return
            time.sleep(0.05)
    raise AssertionError(f"chunk {chunk_no} of {job} never started")
