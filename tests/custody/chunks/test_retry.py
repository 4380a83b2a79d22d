"""Transient vs data errors, with errors raised by a real PostgreSQL server."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from custody.chunks import is_transient
from custody.chunks.retry import backoff_delays
from custody.db import get_engine


def raised(engine: Engine, sql: str) -> BaseException:
    with pytest.raises(DBAPIError) as info, engine.begin() as c:
        c.execute(text(sql))
    return info.value


def test_lost_connection_is_transient(pg_url: str) -> None:
    engine = get_engine(pg_url)
    with engine.connect() as victim:
        pid = victim.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with engine.connect() as killer:
            killer.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        with pytest.raises(DBAPIError) as info:
            victim.execute(text("SELECT 1"))
    assert is_transient(info.value)


def test_data_errors_are_not_transient(pg_url: str) -> None:
    engine = get_engine(pg_url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE t (id int PRIMARY KEY, n int CHECK (n > 0))"))
        c.execute(text("INSERT INTO t VALUES (1, 1)"))
    for sql in (
        "INSERT INTO t VALUES (1, 1)",
        "INSERT INTO t VALUES (2, -1)",
        "SELECT 1/0",
        "SELECT * FROM nope",
    ):
        assert not is_transient(raised(engine, sql)), sql


def test_serialization_failure_is_transient(pg_url: str) -> None:
    engine = get_engine(pg_url)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE acct (id int PRIMARY KEY, v int)"))
        c.execute(text("INSERT INTO acct VALUES (1, 0)"))
    ser = engine.execution_options(isolation_level="SERIALIZABLE")
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def bump() -> None:
        try:
            with ser.begin() as c:
                c.execute(text("SELECT v FROM acct WHERE id = 1")).scalar_one()
                barrier.wait(timeout=10)
                c.execute(text("UPDATE acct SET v = v + 1 WHERE id = 1"))
        except DBAPIError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 1 and is_transient(errors[0])


def test_backoff_is_exponential_and_capped() -> None:
    assert backoff_delays(5, base_s=1, cap_s=5) == [1, 2, 4, 5, 5]
