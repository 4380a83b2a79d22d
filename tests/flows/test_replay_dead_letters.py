"""replay-dead-letters: a chunk the target refused, the cause removed, replayed after approval.

Also: a migration that would replace rows in a non-empty target waits for approval.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy import Engine, select

from custody.archive.work import ArchiveRangeWork, ArchiveTarget
from custody.audit import Keyring, verify_chain
from custody.chunks import JobSpec, ReplayRefusedError, WorkRecipe, load_work, recipe_for
from custody.db import get_engine
from custody.migration.catalog import TableInfo
from custody.migration.pgcopy import PgRangeCopy
from custody.storage import LockMode
from custody.store.tables import dead_letters, job_chunks
from custody.transfer.generic import CopyRangeWork
from flows.migrate import MigrateParams, migrate_tables
from flows.replay_dead_letters import ReplayParams, replay_dead_letters
from tests.support.approval import Background, audit_rows, paused_run, resume
from tests.support.artifacts import read_artifacts
from tests.support.env import TEST_KEYS, set_custody_env
from tests.support.kill import processed_per_chunk
from tests.support.pagila import table_digests
from tests.support.tables import make_keys

KEYRING = Keyring("k1", {k: v.encode() for k, v in TEST_KEYS.items()})
SPEC = JobSpec(job_id="j", kind="migration", subject="s", key_column="id", chunk_size=10)
INFO = TableInfo("public", "items", ("id", "label"), "id", True, ("id",), ("id",), 10)


@pytest.mark.parametrize(
    "work",
    [
        PgRangeCopy("src", "dst", INFO, "count", replace_existing=True),
        CopyRangeWork("src", "dst", "items", "id"),
        ArchiveRangeWork(
            "ehr", "labs", INFO, "collected_at", datetime(2026, 3, 1, tzinfo=UTC), "phi", "HIPAA",
            ArchiveTarget("s3://bucket/site-a", "archive", LockMode.COMPLIANCE, 2190),
        ),
    ],
)  # fmt: skip
def test_each_kind_of_chunk_work_is_rebuilt_exactly(work: object) -> None:
    recipe = recipe_for(SPEC, work)
    assert recipe is not None and recipe.work.startswith("custody.")
    assert load_work(WorkRecipe.model_validate(recipe.model_dump(mode="json"))) == work


def test_work_that_cannot_be_rebuilt_is_never_replayed() -> None:
    assert recipe_for(SPEC, lambda chunk: None) is None
    with pytest.raises(ReplayRefusedError, match="not a custody chunk work class"):
        load_work(WorkRecipe(work="os:system", params={}, audit_prefix="x", audit_verbs=("a", "b")))


@pytest.mark.slow
def test_a_refused_chunk_is_replayed_after_approval(
    prefect_api: str,
    pg_store: Engine,
    pg_databases,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, dst = pg_databases.create("src"), pg_databases.create("dst")
    monkeypatch.setenv("CUSTODY_APPROVAL_POLL_SECONDS", "1")
    set_custody_env(
        monkeypatch,
        store_url=pg_store.url.render_as_string(hide_password=False),
        connections={"src": src, "dst": dst},
    )
    make_keys(get_engine(src), 20_000)
    with psycopg.connect(dst, autocommit=True) as conn:  # the target refuses one row
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, label text NOT NULL "
                     "CONSTRAINT no_k12345 CHECK (label <> 'k12345'))")  # fmt: skip
    params = MigrateParams(
        source="src", target="dst", tables=["items"], chunk_size=5_000, job_id="rp-1",
        replace_existing=True, require_approval=True,  # an empty target needs no approval
    )  # fmt: skip
    first = migrate_tables(params, return_state=True)
    assert first.is_failed() and first.result(raise_on_failure=False).status == "partial_failure"
    with pg_store.connect() as c:
        [letter] = c.execute(select(dead_letters)).all()
    assert (letter.item_ref, letter.error_type) == ("rp-1.items#2", "CheckViolation")

    with psycopg.connect(dst, autocommit=True) as conn:  # the cause is removed
        conn.execute("ALTER TABLE items DROP CONSTRAINT no_k12345")
    replay = Background(lambda: replay_dead_letters(ReplayParams(job_id="rp-1")))
    run_id = paused_run(pg_store, "replay-", replay)  # its approval job is replay-<run id>
    assert resume(run_id, {"approver": "dba.oncall", "approved": True})["status"] == "ACCEPT"
    result = replay.result()

    assert (result.status, result.letters, result.replayed) == ("success", 1, 1)
    with pg_store.connect() as c:
        closed = c.execute(select(dead_letters)).one()
        statuses = c.execute(select(job_chunks.c.status)).scalars().all()
    assert (closed.resolution, closed.replayed_by, closed.replay_run_id) == (
        "replayed",
        "dba.oncall",
        run_id,
    )
    assert statuses == ["verified"] * 4
    assert processed_per_chunk(pg_store, "data.migration.chunk_processed") == {
        n: 1 for n in range(4)
    }
    [replayed] = audit_rows(pg_store, "dead_letter.replayed")
    assert (
        replayed.resource_id == "rp-1.items#2" and replayed.details["approved_by"] == "dba.oncall"
    )
    [granted] = audit_rows(pg_store, "approval.granted")
    assert granted.principal == "dba.oncall" and granted.seq < replayed.seq
    assert table_digests(src) == table_digests(dst)
    artifacts = asyncio.run(read_artifacts(flow_run_id=run_id))
    plan = [a for a in artifacts if a.key == f"replay-plan-{run_id}"]
    assert plan and "rp-1.items" in str(plan[0].data) and "CheckViolation" in str(plan[0].data)
    assert "k12345" not in str(plan[0].data)  # the error text (it quotes the row) stays inside

    again = replay_dead_letters(ReplayParams(job_id="rp-1"))  # nothing left: no approval asked
    assert again.status == "nothing_to_do"

    # A new job that would replace rows in the now full target waits; denied, it touches nothing.
    before = table_digests(dst)
    overwrite = params.model_copy(update={"job_id": "rp-2"})
    denied = Background(lambda: migrate_tables(overwrite, return_state=True))
    run_id = paused_run(pg_store, "rp-2", denied)
    assert resume(run_id, {"approver": "dba.oncall", "approved": False})["status"] == "ACCEPT"
    assert denied.result().is_cancelled()
    [refusal] = audit_rows(pg_store, "approval.denied")
    assert refusal.details["scope"]["tables"] == ["items"] and refusal.resource_id == "rp-2"
    assert table_digests(dst) == before
    with pg_store.connect() as c:
        assert c.execute(select(job_chunks).where(job_chunks.c.job_id == "rp-2.items")).all() == []
    assert verify_chain(pg_store, KEYRING).ok
