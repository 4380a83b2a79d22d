"""migrate-tables from SQLite (the demo's hospital) into PostgreSQL, through the same flow."""

from __future__ import annotations

import datetime as dt
import sqlite3
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine

from custody.db import get_engine
from custody.synth.ehr import write_ehr
from flows.migrate import MigrateParams, migrate_tables
from tests.support.env import set_custody_env

TABLES = ["patients", "encounters", "lab_results", "access_log"]


def _sqlite_rows(path: Path, table: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)


def _as_sqlite(value: object) -> object:
    """PostgreSQL values in SQLite's stored form, as the test reads it (its own rules)."""
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def test_the_demo_hospital_migrates_from_sqlite_into_postgresql(
    prefect_api: str,
    pg_store: Engine,
    pg_databases,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path, dst = tmp_path / "hospital.db", pg_databases.create("warehouse")
    src = f"sqlite:///{path}"
    write_ehr(get_engine(src), patients_n=40, results_per_patient=5, accesses_per_patient=3)
    set_custody_env(
        monkeypatch,
        store_url=pg_store.url.render_as_string(hide_password=False),
        connections={"hospital": src, "warehouse": dst},
    )
    result = migrate_tables(
        MigrateParams(source="hospital", target="warehouse", tables=TABLES, chunk_size=50,
                      job_id="sqlite-1")
    )  # fmt: skip
    assert result.status == "success", result.model_dump_json()
    assert all(t.quality is not None and t.quality.success for t in result.tables)
    with psycopg.connect(dst) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        for table in TABLES:
            got = [
                tuple(_as_sqlite(v) for v in row)
                for row in conn.execute(f"SELECT * FROM {table}").fetchall()
            ]
            want = _sqlite_rows(path, table)
            assert len(got) == len(want) > 0, table
            assert sorted(got, key=repr) == want, table
