"""Helpers for audit tests: making events, and tampering the way an insider with DB rights could."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, select, update

from custody.audit import AuditEvent, DataClassification, Keyring
from custody.audit.chain import content_digest, link_hash
from custody.store.tables import audit_chain_head, audit_log


def phi_events(n: int, start: int = 0, principal_prefix: str = "clin") -> Iterator[AuditEvent]:
    """``n`` PHI-read events with distinct, recognisable details."""
    for i in range(start, start + n):
        yield AuditEvent(
            principal=f"{principal_prefix}{i % 37:03d}",
            action="phi.access.read",
            resource_type="patient",
            resource_id=f"MRN{i:07d}",
            data_classification=DataClassification.PHI,
            regulation="HIPAA",
            details={"i": i, "reason": "treatment", "score": i / 7},
        )


@contextmanager
def unprotected(engine: Engine) -> Iterator[Connection]:
    """A transaction with the append-only protection switched off, as a superuser could."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("SET LOCAL session_replication_role = replica")
            yield connection
            return
        triggers = connection.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_log'"
        ).all()
        for name, _ in triggers:
            connection.exec_driver_sql(f"DROP TRIGGER {name}")
        yield connection
        for _, ddl in triggers:
            connection.exec_driver_sql(ddl)


def tamper(engine: Engine, sql: str) -> None:
    """Run a statement with the append-only protection switched off."""
    with unprotected(engine) as connection:
        connection.exec_driver_sql(sql)


def rewrite_chain_from(engine: Engine, keyring: Keyring, seq: int) -> None:
    """Alter event ``seq`` and re-chain and re-sign everything after it with the real key.

    What an insider holding the HMAC key can do: the result passes ``verify_chain``. Only an
    anchor taken before the rewrite can catch it.
    """
    with unprotected(engine) as connection:
        rows = connection.execute(
            select(*audit_log.c).where(audit_log.c.seq >= seq).order_by(audit_log.c.seq)
        ).all()
        prev = rows[0].prev_hash
        for row in rows:
            details = dict(row.details)
            if row.seq == seq:
                details["rewritten"] = True
            digest = content_digest(
                row.event_id, row.occurred_at, row.recorded_at, row.principal, row.action,
                row.status, row.severity, row.resource_type, row.resource_id,
                row.correlation_id, row.regulation, row.data_classification,
                row.retention_days, details,
            )  # fmt: skip
            row_hash = link_hash(prev, row.seq, digest)
            connection.execute(
                update(audit_log)
                .where(audit_log.c.seq == row.seq)
                .values(
                    details=details,
                    prev_hash=prev,
                    row_hash=row_hash,
                    key_id=keyring.active_key_id,
                    signature=keyring.sign(row_hash),
                )
            )
            prev = row_hash
        last = rows[-1].seq
        head = connection.execute(select(audit_chain_head)).one()
        connection.execute(
            update(audit_chain_head)
            .where(audit_chain_head.c.id == 1)
            .values(
                row_hash=prev,
                key_id=keyring.active_key_id,
                signature=keyring.sign_head_v2(head.store_id, last, prev, head.updated_at),
            )
        )


def json_set(engine: Engine, key: str, value: str) -> str:
    """SQL expression that replaces one key of ``details`` on either engine."""
    if engine.dialect.name == "postgresql":
        return f"jsonb_set(details, '{{{key}}}', '\"{value}\"')"
    return f"json_set(details, '$.{key}', '{value}')"
