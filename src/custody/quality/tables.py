"""A table-level integrity suite run with an ephemeral GX context.

Results are requested as ``BOOLEAN_ONLY``: GX then never copies unexpected values (which may be
PHI) into what we keep. The summary holds expectation names and pass/fail only.
"""

from __future__ import annotations

import logging
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class QualityResult:
    """PHI-free outcome of a suite: which expectations ran and which failed."""

    table: str
    success: bool
    evaluated: int
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def preload() -> None:
    """Import Great Expectations in a background thread (3-4 s) while other work runs."""
    import threading

    threading.Thread(target=_import_gx, name="gx-preload", daemon=True).start()


def _import_gx() -> None:
    import great_expectations  # noqa: F401


def ephemeral_context() -> Any:
    """A GX context that keeps nothing on disk (no stores to leak values into)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # It logs the temporary directory of a docs site it never builds, at INFO, on every run.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # they go to stderr
    return context


def check_table(
    url: str,
    schema: str,
    table: str,
    *,
    expected_rows: int | None,
    unique_key: tuple[str, ...] = (),
    not_null: tuple[str, ...] = (),
) -> QualityResult:
    """Row count, key uniqueness and NOT NULL columns of one table, checked by GX in SQL.

    On PostgreSQL the suite runs over a query naming the table and its checked columns, quoted
    (GX lower-cases a table name it is given: "PatientRecords" would not be found). Columns of
    a type SQLAlchemy cannot describe (composite, geometric, xml, pg_lsn, reg*, ...) make GX's
    column-type metric fail, and with it every column expectation: those columns are checked
    through their text form (NULL stays NULL, equal values stay equal), and ``notes`` says so.
    """
    import great_expectations as gx

    context = ephemeral_context()
    name = f"custody-{uuid.uuid4().hex[:8]}"
    notes: list[str] = []
    if url.startswith("sqlite"):
        source = context.data_sources.add_sqlite(name=name, connection_string=url)
        asset = source.add_table_asset(name=table, table_name=table)
    else:
        query, notes = _pg_query(url, schema, table, (*unique_key, *not_null))
        source = context.data_sources.add_postgres(name=name, connection_string=url)
        asset = source.add_query_asset(name="checked-table", query=query)
    batch = asset.add_batch_definition_whole_table("whole-table")
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}-{table}"))
    if expected_rows is not None:
        suite.add_expectation(gx.expectations.ExpectTableRowCountToEqual(value=expected_rows))
    if len(unique_key) == 1:
        suite.add_expectation(gx.expectations.ExpectColumnValuesToBeUnique(column=unique_key[0]))
    elif unique_key:
        suite.add_expectation(
            gx.expectations.ExpectCompoundColumnsToBeUnique(column_list=list(unique_key))
        )
    for column in dict.fromkeys((*unique_key, *not_null)):
        suite.add_expectation(gx.expectations.ExpectColumnValuesToNotBeNull(column=column))
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{name}-validation", data=batch, suite=suite)
    )
    try:
        result = validation.run(result_format="BOOLEAN_ONLY")
    finally:
        # GX builds a pooled engine per data source and never closes it: a long-lived worker
        # would run out of database connections one suite at a time.
        source.get_engine().dispose()
    failed = [
        f"{r.expectation_config.type}({r.expectation_config.kwargs.get('column') or ''})"
        for r in result.results
        if not r.success
    ]
    return QualityResult(table, bool(result.success), len(result.results), failed, notes)


def _pg_query(url: str, schema: str, table: str, columns: tuple[str, ...]) -> tuple[str, list[str]]:
    """``SELECT`` of the checked columns, as text where SQLAlchemy cannot describe the type."""
    from sqlalchemy import create_engine, exc, inspect
    from sqlalchemy.types import NullType

    from custody.identifiers import quote_pg

    engine = create_engine(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", exc.SAWarning)  # "Did not recognize type ..."
            described = {c["name"]: c["type"] for c in inspect(engine).get_columns(table, schema)}
    finally:
        engine.dispose()
    parts, notes = [], []
    for column in dict.fromkeys(columns):
        quoted = quote_pg(column)
        if isinstance(described.get(column), NullType):
            parts.append(f"CAST({quoted} AS text) AS {quoted}")
            notes.append(f"{column}: type unknown to GX, checked as text")
        else:
            parts.append(quoted)
    select = ", ".join(parts) or "1 AS custody_row"
    return f"SELECT {select} FROM {quote_pg(schema)}.{quote_pg(table)}", notes
