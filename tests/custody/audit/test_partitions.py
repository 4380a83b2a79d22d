import datetime as dt

from sqlalchemy import Engine, text

from custody.audit import AuditEvent, AuditLog, Keyring, verify_chain
from custody.audit.partitions import ensure_partitions


def test_monthly_partitions_are_created_ahead_and_used(pg_store: Engine, keyring: Keyring) -> None:
    created = ensure_partitions(pg_store, dt.date(2031, 1, 15), 3)
    assert created == 3
    assert ensure_partitions(pg_store, dt.date(2031, 1, 1), 3) == 0  # idempotent
    log = AuditLog(pg_store, keyring)
    for when in (
        dt.datetime(2031, 2, 28, 23, 59, tzinfo=dt.UTC),
        dt.datetime(2035, 1, 1, tzinfo=dt.UTC),
    ):
        log.log(
            AuditEvent(
                occurred_at=when, principal="p", action="phi.access.read", resource_type="patient"
            )
        )
    with pg_store.connect() as c:
        where = (
            c.execute(text("SELECT tableoid::regclass::text FROM audit_log ORDER BY seq"))
            .scalars()
            .all()
        )
        indexes = c.execute(
            text("SELECT count(*) FROM pg_indexes WHERE tablename = 'audit_log_y2031m02'")
        ).scalar_one()
    assert where == ["audit_log_y2031m02", "audit_log_default"]
    assert indexes == 7  # primary key, BRIN time, principal, action, class, PHI, correlation
    assert verify_chain(pg_store, keyring).ok


def test_phi_queries_use_the_partial_index(pg_store: Engine, keyring: Keyring) -> None:
    log = AuditLog(pg_store, keyring)
    log.log_batch(
        [
            AuditEvent(
                principal=f"p{i % 20}",
                action="phi.access.read",
                resource_type="patient",
                data_classification="phi" if i % 10 == 0 else "internal",
            )
            for i in range(5_000)
        ]
    )
    with pg_store.begin() as c:
        c.execute(text("ANALYZE audit_log"))
        phi_indexes = set(
            c.execute(
                text(
                    "SELECT indexname FROM pg_indexes WHERE tablename LIKE 'audit_log%' "
                    "AND indexdef LIKE '%WHERE (data_classification = ''phi''%'"
                )
            ).scalars()
        )
        plan = "\n".join(
            c.execute(
                text(
                    "EXPLAIN SELECT principal, count(*) FROM audit_log "
                    "WHERE data_classification = 'phi' "
                    "AND occurred_at >= now() - interval '1 day' GROUP BY principal"
                )
            ).scalars()
        )
    assert "audit_log_phi_idx" in phi_indexes
    assert any(name in plan for name in phi_indexes), plan


def test_sqlite_has_no_partitions(sqlite_store: Engine) -> None:
    assert ensure_partitions(sqlite_store, dt.date(2031, 1, 1), 2) == 0
