import datetime as dt
import subprocess
import sys

import pytest
from prefect.client.schemas.objects import State
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from custody.audit import AuditEvent, AuditLog, DataClassification, Keyring, verify_chain
from custody.audit.events import FutureEventError
from custody.audit.partitions import ensure_partitions
from flows.audit_maintenance import AuditMaintenanceParams, audit_maintenance
from tests.support.env import custody_env, set_custody_env


def test_monthly_partitions_are_created_ahead_and_used(pg_store: Engine, keyring: Keyring) -> None:
    created = ensure_partitions(pg_store, dt.date(2021, 1, 15), 3)
    assert created == 3
    assert ensure_partitions(pg_store, dt.date(2021, 1, 1), 3) == 0  # idempotent
    log = AuditLog(pg_store, keyring)
    for when in (  # back-filled history: dates in the past are fine
        dt.datetime(2021, 2, 28, 23, 59, tzinfo=dt.UTC),
        dt.datetime(2015, 1, 1, tzinfo=dt.UTC),
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
            text("SELECT count(*) FROM pg_indexes WHERE tablename = 'audit_log_y2021m02'")
        ).scalar_one()
    assert where == ["audit_log_y2021m02", "audit_log_default"]
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
                data_classification=DataClassification.PHI
                if i % 10 == 0
                else DataClassification.INTERNAL,
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


def _months_ahead(n: int, day: int = 10) -> dt.datetime:
    today = dt.datetime.now(dt.UTC)
    month = today.month - 1 + n
    return dt.datetime(today.year + month // 12, month % 12 + 1, day, 12, tzinfo=dt.UTC)


def _event(when: dt.datetime) -> AuditEvent:
    return AuditEvent(
        occurred_at=when, principal="p", action="phi.access.read", resource_type="patient"
    )


def test_issue_15_item_8_a_future_dated_event_is_refused(store: Engine, keyring: Keyring) -> None:
    log = AuditLog(store, keyring)
    ahead = _event(_months_ahead(4))
    with pytest.raises(FutureEventError, match=r"in the future, more than the allowed clock skew"):
        log.log(ahead)
    with log.buffered(max_events=10) as writer:
        with pytest.raises(FutureEventError, match=str(ahead.event_id)):
            writer.write(ahead)
        writer.write(_event(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)))  # skew is fine
    with store.connect() as c:
        assert c.execute(text("SELECT count(*) FROM audit_log")).scalar_one() == 1
    assert verify_chain(store, keyring).ok


def _where(engine: Engine) -> list[str]:
    with engine.connect() as c:
        return list(
            c.execute(text("SELECT tableoid::regclass::text FROM audit_log ORDER BY seq")).scalars()
        )


def test_issue_15_item_8_partition_upkeep_survives_rows_in_the_default_partition(
    prefect_api: str, pg_store: Engine, keyring: Keyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Written before the bound existed (a writer allowing a year of skew): months 4 and 5 ahead.
    lax = AuditLog(pg_store, keyring, max_clock_skew=dt.timedelta(days=366))
    lax.log_batch([_event(_months_ahead(4)), _event(_months_ahead(5))])
    AuditLog(pg_store, keyring).log(_event(dt.datetime.now(dt.UTC)))
    assert _where(pg_store)[:2] == ["audit_log_default", "audit_log_default"]
    in4, in5 = (f"audit_log_y{m:%Y}m{m:%m}" for m in (_months_ahead(4), _months_ahead(5)))

    url = pg_store.url.render_as_string(hide_password=False)
    set_custody_env(monkeypatch, store_url=url)
    result = audit_maintenance(AuditMaintenanceParams(months_ahead=5))
    assert not isinstance(result, State) and result.chain is not None and result.chain["ok"]
    assert _where(pg_store)[:2] == [in4, "audit_log_default"]

    done = subprocess.run(
        [sys.executable, "-m", "custody.cli", "audit", "partitions", "--months", "6"],
        env={**custody_env(url), "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert _where(pg_store)[:2] == [in4, in5]
    assert verify_chain(pg_store, keyring).ok
    # Still append-only everywhere, the re-attached default partition included.
    for statement in ("DELETE FROM audit_log", f"DELETE FROM {in5}", f"TRUNCATE {in5}",
                      "TRUNCATE audit_log_default"):  # fmt: skip
        with pytest.raises(DBAPIError, match="append-only"), pg_store.begin() as c:
            c.execute(text(statement))
    with pg_store.connect() as c:
        enabled = c.execute(
            text(
                "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = "
                "'audit_log_default'::regclass ORDER BY tgname"
            )
        ).all()
    assert [tuple(t) for t in enabled] == [
        ("audit_log_no_truncate", "O"), ("audit_log_no_update_delete", "O"),
    ]  # fmt: skip
