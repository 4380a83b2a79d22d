"""Several processes appending at once must produce one unbroken chain."""

from __future__ import annotations

import multiprocessing as mp

import pytest
from sqlalchemy import Engine, text

from custody.audit import AuditLog, Keyring, verify_chain
from tests.support.env import TEST_KEYS


def _append(url: str, worker: int, count: int, batch: int) -> None:
    from custody.db import get_engine
    from tests.support.audit import phi_events

    log = AuditLog(get_engine(url), Keyring("k1", {k: v.encode() for k, v in TEST_KEYS.items()}))
    events = list(phi_events(count, start=worker * count, principal_prefix=f"w{worker}-"))
    for i in range(0, count, batch):
        log.log_batch(events[i : i + batch])


@pytest.mark.slow
def test_four_processes_25k_each_make_one_chain(store: Engine, keyring: Keyring) -> None:
    url = store.url.render_as_string(hide_password=False)
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_append, args=(url, w, 25_000, 500)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(timeout=300)
        assert p.exitcode == 0
    result = verify_chain(store, keyring)
    assert result.ok, result.describe()
    assert result.events_checked == 100_000
    with store.connect() as c:
        per_worker = dict(
            c.execute(
                text("SELECT substr(principal, 1, 2), count(*) FROM audit_log GROUP BY 1")
            ).all()
        )
        interleaved = c.execute(
            text(
                "SELECT count(*) FROM (SELECT principal, lag(principal) OVER (ORDER BY seq) prev "
                "FROM audit_log) s WHERE substr(principal, 1, 2) <> substr(prev, 1, 2)"
            )
        ).scalar_one()
    assert per_worker == {"w0": 25_000, "w1": 25_000, "w2": 25_000, "w3": 25_000}
    assert interleaved > 3  # the writers really did run at the same time
