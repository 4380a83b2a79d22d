"""Engines and column types shared by every module that talks to a database.

SQLite is the embedded default, so it is configured to behave as a serious store: WAL, a busy
timeout, and ``BEGIN IMMEDIATE`` so that concurrent writers queue instead of failing.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

from sqlalchemy import DateTime, Engine, String, create_engine, event
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.types import TypeDecorator

_engines: dict[str, Engine] = {}
_engines_lock = threading.Lock()


def normalise_url(url: str) -> str:
    """Pick the drivers custody is tested with for URLs that name none.

    ``postgresql://`` gets psycopg 3; ``mysql://`` and ``mariadb://`` get MariaDB
    Connector/Python (the ``mysql`` extra), the fastest streaming driver measured here.
    """
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif parsed.drivername in ("mysql", "mariadb"):
        parsed = parsed.set(drivername="mariadb+mariadbconnector")
    return parsed.render_as_string(hide_password=False)


def get_engine(url: str) -> Engine:
    """Return one shared engine per URL and process (pools are per engine)."""
    url = normalise_url(url)
    with _engines_lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _create(url)
            _engines[url] = engine
        return engine


def dispose_engines() -> None:
    """Close every pooled connection (after fork, at exit, between tests)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def is_postgres(engine: Engine | Dialect) -> bool:
    """Tell whether the PostgreSQL fast paths (COPY, partitions, advisory locks) apply."""
    dialect = engine if isinstance(engine, Dialect) else engine.dialect
    return dialect.name == "postgresql"


def is_mysql(engine: Engine | Dialect) -> bool:
    """Tell whether the source is MySQL or MariaDB (the cast-rule migration path)."""
    dialect = engine if isinstance(engine, Dialect) else engine.dialect
    return dialect.name in ("mysql", "mariadb")


def _create(url: str) -> Engine:
    # hide_parameters: a statement's error message must not carry its bound values (rows, PHI)
    # into the logs and Prefect states of whatever task it escapes from.
    if make_url(url).get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, hide_parameters=True)
    engine = create_engine(
        url, connect_args={"timeout": 60, "check_same_thread": False}, hide_parameters=True
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Writers that read before they write take the lock up front, so two of them queue
        # instead of failing; readers take none and see a stable snapshot (WAL).
        immediate = connection.get_execution_options().get("custody_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def write_transaction(engine: Engine) -> Any:
    """``engine.begin()`` for transactions that read, then write (SQLite: BEGIN IMMEDIATE)."""
    return engine.execution_options(custody_write=True).begin()


def utc_now() -> dt.datetime:
    """Aware current time in UTC (the only time zone custody writes)."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Aware UTC timestamps on every engine.

    PostgreSQL stores ``timestamptz``. SQLite has no time type, so values are stored as fixed-width
    ISO 8601 text in UTC, which sorts correctly and round-trips to the microsecond: the audit
    chain's hashes depend on reading back exactly what was written.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        """Text on SQLite, timestamptz elsewhere."""
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(32))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        """Refuse naive values; convert to UTC (and to text on SQLite)."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: custody stores aware UTC timestamps only")
        value = value.astimezone(dt.UTC)
        if dialect.name == "sqlite":
            return f"{value.year:04d}-{value:%m-%dT%H:%M:%S.%f}Z"  # %Y does not pad years < 1000
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        """Always hand back an aware UTC datetime."""
        if value is None:
            return None
        if isinstance(value, str):
            return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
        assert isinstance(value, dt.datetime)
        return value.astimezone(dt.UTC)
