"""Per-result events through the uniform path: the same chain as the model path, same checks."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, text

from custody.audit import AuditEvent, AuditLog, DataClassification, Keyring, Severity, verify_chain
from tests.support.audit import json_set, tamper


def _template() -> AuditEvent:
    return AuditEvent(
        principal="ingest", action="hl7v2.oru.processed", resource_type="lab_result",
        correlation_id="run-1", data_classification=DataClassification.PHI,
    )  # fmt: skip


def test_uniform_rows_verify_and_read_back_like_model_events(
    store: Engine, keyring: Keyring
) -> None:
    log = AuditLog(store, keyring)
    log.log_batch([_template().model_copy(update={"resource_id": "first"})])
    items = [(f"R{n}", {"file_sha256": "ab" * 32, "position": f"line {n}"}) for n in range(500)]
    with store.begin() as conn:
        result = log.append_uniform_in(conn, _template(), items)
    assert (result.first_seq, result.last_seq) == (2, 501)
    assert verify_chain(store, keyring).ok
    with store.connect() as conn:
        rows = conn.execute(
            text("SELECT resource_id, action, principal FROM audit_log WHERE seq > 1 ORDER BY seq")
        ).all()
        ids = conn.execute(text("SELECT count(DISTINCT event_id) FROM audit_log")).scalar_one()
    assert [r[0] for r in rows] == [f"R{n}" for n in range(500)]
    assert {(r[1], r[2]) for r in rows} == {("hl7v2.oru.processed", "ingest")}
    assert ids == 501


def test_a_uniform_row_changed_afterwards_is_named_by_verify(
    store: Engine, keyring: Keyring
) -> None:
    """Mutation: the uniform path's hashes are real, so tampering with a row breaks the chain."""
    log = AuditLog(store, keyring)
    items = [(f"R{n}", {"file_sha256": "ab" * 32, "position": f"line {n}"}) for n in range(50)]
    with store.begin() as conn:
        log.append_uniform_in(conn, _template(), items)
    tamper(
        store, f"UPDATE audit_log SET details = {json_set(store, 'position', 'x')} WHERE seq = 7"
    )
    verdict = verify_chain(store, keyring)
    assert not verdict.ok and verdict.first_bad_seq == 7


@pytest.mark.parametrize(
    "item",
    [
        ("R\x001", {"position": "line 1"}),
        ("R" * 513, {"position": "line 1"}),
        ("R1", {"position": "line\x001"}),
        ("R1", {"position": 3}),
    ],
)
def test_the_uniform_path_refuses_what_the_model_refuses(
    store: Engine, keyring: Keyring, item: tuple[str, dict[str, object]]
) -> None:
    with store.begin() as conn, pytest.raises(ValueError):
        AuditLog(store, keyring).append_uniform_in(conn, _template(), [item])  # type: ignore[list-item]
    with store.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM audit_log")).scalar_one() == 0


def test_critical_events_do_not_take_the_uniform_path(store: Engine, keyring: Keyring) -> None:
    critical = _template().model_copy(update={"severity": Severity.CRITICAL})
    with store.begin() as conn, pytest.raises(ValueError, match="log_critical"):
        AuditLog(store, keyring).append_uniform_in(conn, critical, [("R1", {})])
