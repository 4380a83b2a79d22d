"""Errors that reach Prefect say what kind of failure it was, never the values in it."""

from __future__ import annotations

import pickle

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

from custody.archive.generic import ArchiveRestoreError
from custody.archive.work import ArchiveVerificationError
from custody.chunks import is_transient
from custody.errors import CustodyError, safe_error
from custody.labs.ingest import LabStoreError

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


@pytest.mark.parametrize("error_type", [LabStoreError, ArchiveRestoreError])
def test_a_wrapped_lost_connection_is_still_retried_after_pickling(
    pg_url: str, error_type: type[CustodyError]
) -> None:
    """Wrapping a driver error drops its chain (PHI), not the judgement that a retry may help.

    Prefect pickles a failed task's exception (and Dask ships it between processes) before the
    retry condition reads it, so the judgement must survive that trip.
    """
    with psycopg.connect(pg_url, autocommit=True) as victim, psycopg.connect(pg_url) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,))
        with pytest.raises(psycopg.OperationalError) as lost:
            victim.execute("SELECT 1")
    with pytest.raises(psycopg.errors.UniqueViolation) as refused, psycopg.connect(pg_url) as c:
        c.execute("CREATE TEMP TABLE t (k int PRIMARY KEY); INSERT INTO t VALUES (1), (1)")
    for cause, expected in ((lost.value, True), (refused.value, False)):
        wrapped = error_type(safe_error(cause), transient=is_transient(cause))
        again = pickle.loads(pickle.dumps(wrapped))
        assert (is_transient(again), again.__context__) == (expected, None)


def test_a_class_that_is_transient_by_default_stays_so() -> None:
    # A corrupt archive object is marked corrupt, so the next attempt uploads afresh.
    assert is_transient(pickle.loads(pickle.dumps(ArchiveVerificationError("rot"))))
    assert not is_transient(ArchiveVerificationError("rot", transient=False))
