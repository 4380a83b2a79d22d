"""Helpers for audit tests: making events, and tampering the way an insider with DB rights could."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy import Engine

from custody.audit import AuditEvent, DataClassification


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


def tamper(engine: Engine, sql: str) -> None:
    """Run a statement with the append-only protection switched off, as a superuser could."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("SET LOCAL session_replication_role = replica")
            connection.exec_driver_sql(sql)
            return
        triggers = connection.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_log'"
        ).all()
        for name, _ in triggers:
            connection.exec_driver_sql(f"DROP TRIGGER {name}")
        connection.exec_driver_sql(sql)
        for _, ddl in triggers:
            connection.exec_driver_sql(ddl)


def json_set(engine: Engine, key: str, value: str) -> str:
    """SQL expression that replaces one key of ``details`` on either engine."""
    if engine.dialect.name == "postgresql":
        return f"jsonb_set(details, '{{{key}}}', '\"{value}\"')"
    return f"json_set(details, '$.{key}', '{value}')"
