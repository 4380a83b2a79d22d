"""Errors that reach Prefect say what kind of failure it was, never the values in it."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from custody.errors import safe_error

SECRET_ROW = "MRN-SAFE-ERR-4242"


def test_sqlite_errors_keep_their_result_code_and_drop_the_row(sqlite_store: Engine) -> None:
    with sqlite_store.begin() as c:
        c.execute(text("CREATE TABLE t (mrn TEXT PRIMARY KEY CHECK (mrn NOT LIKE 'MRN-SAFE%'))"))
    with pytest.raises(DBAPIError) as raised, sqlite_store.begin() as c:
        c.execute(text("INSERT INTO t VALUES (:m)"), {"m": SECRET_ROW})
    described = safe_error(raised.value)
    assert described == "IntegrityError (SQLITE_CONSTRAINT_CHECK)"
    assert SECRET_ROW not in str(raised.value)  # engines hide bound parameters too


def test_postgres_errors_keep_their_sqlstate_and_drop_the_row(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as c:
        c.execute("CREATE TABLE t (mrn text PRIMARY KEY)")
        c.execute("INSERT INTO t VALUES (%s)", (SECRET_ROW,))
        with pytest.raises(psycopg.Error) as raised:
            c.execute("INSERT INTO t VALUES (%s)", (SECRET_ROW,))
    assert SECRET_ROW in str(raised.value)  # the server's own message quotes the row...
    assert safe_error(raised.value) == "UniqueViolation (SQLSTATE 23505)"  # ...this does not
