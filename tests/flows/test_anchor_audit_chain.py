"""The anchoring flow: anchors an intact chain, refuses one that contradicts its anchors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from custody.audit import AuditLog, Keyring
from custody.audit.anchors import Anchor
from custody.storage.local import LocalStore
from custody.store.tables import audit_chain_head, audit_log
from flows.anchor_audit_chain import AnchorParams, anchor_audit_chain
from tests.support.artifacts import read_artifacts
from tests.support.audit import phi_events, rewrite_chain_from
from tests.support.env import set_custody_env, work_dir_for


def test_anchors_then_refuses_a_rewritten_chain(
    prefect_api: str,
    pg_store: Engine,
    keyring: Keyring,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    set_custody_env(monkeypatch, store_url=pg_store.url.render_as_string(hide_password=False))
    AuditLog(pg_store, keyring).log_batch(list(phi_events(8)))
    params = AnchorParams(destination=(tmp_path / "objects").as_uri())

    first = anchor_audit_chain(params)
    # The run records its verification first, so the anchor covers it too.
    assert isinstance(first, dict) and first["seq"] == 9
    objects = LocalStore(tmp_path / "objects")
    (stored,) = list(objects.list("audit-anchors"))
    anchor = Anchor.from_json(objects.get(stored.key))
    assert (anchor.seq, stored.retention is not None) == (9, True)

    rewrite_chain_from(pg_store, keyring, 4)
    state = anchor_audit_chain(params, return_state=True)
    assert state.is_failed() and "seq 9" in (state.message or "")
    assert len(list(objects.list("audit-anchors"))) == 1
    with pg_store.connect() as conn:
        actions = conn.execute(select(audit_log.c.action).order_by(audit_log.c.seq)).scalars()
        assert [a for a in actions if a.startswith("audit.chain.")] == [
            "audit.chain.verified",
            "audit.chain.anchored",
            "audit.chain.anchor_refused",
        ]
    arts = asyncio.run(
        read_artifacts(
            key_like="anchor-audit-chain", flow_run_id=str(state.state_details.flow_run_id)
        )
    )
    assert arts, "the refused run still publishes its audit artifacts"


def test_issue_15_item_3_every_flow_run_ends_by_anchoring_the_head(
    prefect_api: str, pg_store: Engine, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.audit_maintenance import AuditMaintenanceParams, audit_maintenance

    url = pg_store.url.render_as_string(hide_password=False)
    set_custody_env(monkeypatch, store_url=url)
    AuditLog(pg_store, keyring).log_batch(list(phi_events(4)))
    audit_maintenance(AuditMaintenanceParams(months_ahead=1))
    objects = LocalStore(work_dir_for(url) / "objects")  # the default object store
    (stored,) = list(objects.list("audit-anchors"))
    with pg_store.connect() as conn:
        head = conn.execute(select(audit_chain_head.c.seq, audit_chain_head.c.row_hash)).one()
    anchor = Anchor.from_json(objects.get(stored.key))
    assert (anchor.seq, anchor.row_hash) == (head.seq, head.row_hash) and head.seq == 6
    assert stored.retention is not None  # compliance lock by default
