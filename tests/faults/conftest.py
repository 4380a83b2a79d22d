"""Shared setup for the fault tests: databases named in custody's settings, small and fresh."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, func, select

from custody.audit import Keyring
from custody.store.tables import audit_log, dead_letters, job_chunks
from tests.support.env import TEST_KEYS, set_custody_env

KEYRING = Keyring("k1", {k: v.encode() for k, v in TEST_KEYS.items()})


def libpq_url(engine: Engine) -> str:
    """A plain ``postgresql://`` URL for psycopg (SQLAlchemy's names the driver)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


@dataclass(frozen=True)
class Pair:
    """Source and target databases, configured as the connections ``src`` and ``dst``."""

    src: str
    dst: str
    store: str


@pytest.fixture
def pair(
    prefect_api: str,
    pg_store: Engine,
    pg_databases,  # type: ignore[no-untyped-def]
    monkeypatch: pytest.MonkeyPatch,
) -> Pair:
    """Fresh ``src`` and ``dst`` databases and custody's store, set in the environment."""
    src, dst = pg_databases.create("src"), pg_databases.create("dst")
    set_custody_env(
        monkeypatch,
        store_url=pg_store.url.render_as_string(hide_password=False),
        connections={"src": src, "dst": dst},
    )
    return Pair(src, dst, libpq_url(pg_store))


def ledger_rows(store: Engine, job_id: str) -> dict[int, tuple[str, int]]:
    """Chunk number -> (status, attempts) for one job."""
    with store.connect() as c:
        rows = c.execute(select(job_chunks).where(job_chunks.c.job_id == job_id)).all()
    return {r.chunk_no: (r.status, r.attempts) for r in rows}


def open_dead_letters(store: Engine) -> int:
    """Dead letters not settled by a later verification."""
    with store.connect() as c:
        return int(
            c.execute(
                select(func.count())
                .select_from(dead_letters)
                .where(dead_letters.c.replayed_at.is_(None))
            ).scalar_one()
        )


def events_per_resource(store: Engine, action: str) -> dict[str, int]:
    """How many ``action`` audit events each resource id has."""
    with store.connect() as c:
        rows = c.execute(
            select(audit_log.c.resource_id, func.count())
            .where(audit_log.c.action == action)
            .group_by(audit_log.c.resource_id)
        ).all()
    return {str(r): int(n) for r, n in rows}
