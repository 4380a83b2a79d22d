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
    by_constraint: list[str] = field(default_factory=list)
    """Expectations the table's own constraints prove (counted in ``evaluated``, not run)."""


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

    On PostgreSQL the table and schema reach GX as quoted names (a plain name GX lower-cases:
    "PatientRecords" would not be found). GX also lower-cases checked column names that are
    not all lower case ("Name"), and a column of a type SQLAlchemy cannot describe (composite,
    geometric, xml, pg_lsn, ...) makes GX's column-type metric fail, and with it every column
    expectation. For such tables the suite runs over a query of the checked columns, every name
    quoted, those columns cast to text (NULL stays NULL, equal values stay equal), and
    ``notes`` says so. GX reads that query's result once in full to learn its columns.

    On PostgreSQL, what the table's own constraints enforce for every row (a valid unique index
    on the key, NOT NULL columns) is read from the catalog instead of scanned for, and listed
    in ``by_constraint``; when only the row count is left, it is counted in plain SQL and GX is
    not used at all (its suite machinery costs about a second here).
    """
    proven: list[str] = []
    null_checked = tuple(dict.fromkeys((*unique_key, *not_null)))
    if not url.startswith("sqlite"):
        schema = schema or "public"  # a source without schemas (SQLite, MySQL) lands in public
        unique_key, null_checked, proven = _drop_proven(url, schema, table, unique_key, not_null)
        if not unique_key and not null_checked:
            return _count_only(url, schema, table, expected_rows, proven)
    import great_expectations as gx

    context = ephemeral_context()
    name = f"custody-{uuid.uuid4().hex[:8]}"
    notes: list[str] = []
    if url.startswith("sqlite"):
        source = context.data_sources.add_sqlite(name=name, connection_string=url)
        asset = source.add_table_asset(name=table, table_name=table)
    else:
        checked = (*unique_key, *null_checked)
        query, notes, opaque = _pg_query(url, schema, table, checked)
        source = context.data_sources.add_postgres(name=name, connection_string=url)
        if opaque or any(c != c.lower() for c in checked):
            # GX reads a query's whole result once to learn its columns: memory grows with the
            # table, so the query is only for tables GX cannot check directly.
            asset = source.add_query_asset(name="checked-table", query=query)
        else:
            from sqlalchemy import quoted_name

            asset = source.add_table_asset(
                name="checked-table",
                table_name=quoted_name(table, quote=True),
                schema_name=quoted_name(schema, quote=True),
            )
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
    for column in null_checked:
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
    evaluated = len(result.results) + len(proven)
    return QualityResult(table, bool(result.success), evaluated, failed, notes, proven)


_UNIQUE = "expect_column_values_to_be_unique"
_COMPOUND_UNIQUE = "expect_compound_columns_to_be_unique"
_NOT_NULL = "expect_column_values_to_not_be_null"
_ROW_COUNT = "expect_table_row_count_to_equal()"


def _drop_proven(
    url: str, schema: str, table: str, unique_key: tuple[str, ...], not_null: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...], list[str]]:
    """The key and NOT NULL columns left to check once the table's constraints are read.

    Returns what is left of ``unique_key`` (all of it, or nothing when a valid unique index
    proves it), the columns left to check for NULLs (key columns included, as GX checks them),
    and the expectations proven, named as GX names them.
    """
    from sqlalchemy import create_engine

    from custody.identifiers import quote_pg
    from custody.quality.constraints import proven_by_constraints

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            proof = proven_by_constraints(
                connection, f"{quote_pg(schema)}.{quote_pg(table)}", unique_key
            )
    finally:
        engine.dispose()
    proven: list[str] = []
    columns = tuple(dict.fromkeys((*unique_key, *not_null)))
    if proof.unique_key_index is not None:
        kind = _UNIQUE if len(unique_key) == 1 else _COMPOUND_UNIQUE
        proven.append(f"{kind}({unique_key[0] if len(unique_key) == 1 else ''})")
        unique_key = ()
    proven += [f"{_NOT_NULL}({c})" for c in columns if c in proof.not_null]
    # A key is proven unique only once all its columns are proven NOT NULL (constraints.py).
    return unique_key, tuple(c for c in columns if c not in proof.not_null), proven


def _count_only(
    url: str, schema: str, table: str, expected_rows: int | None, proven: list[str]
) -> QualityResult:
    """Every other check is proven by constraints: the row count alone, in plain SQL.

    Counted like GX counts a table (``count(*)`` of the table, children included).
    """
    from sqlalchemy import create_engine, text

    from custody.identifiers import quote_pg

    failed: list[str] = []
    if expected_rows is not None:
        engine = create_engine(url)
        try:
            with engine.connect() as connection:
                found = connection.execute(
                    text(f"SELECT count(*) FROM {quote_pg(schema)}.{quote_pg(table)}")
                ).scalar_one()
        finally:
            engine.dispose()
        if found != expected_rows:
            failed.append(_ROW_COUNT)
    evaluated = len(proven) + (expected_rows is not None)
    return QualityResult(table, not failed, evaluated, failed, [], proven)


def _pg_query(
    url: str, schema: str, table: str, columns: tuple[str, ...]
) -> tuple[str, list[str], bool]:
    """``SELECT`` of the checked columns, as text where SQLAlchemy cannot describe the type.

    Also returns notes naming those columns, and whether the table has any such column at all
    (then GX cannot check the table itself: its column-type metric fails).
    """
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
    opaque = {name for name, kind in described.items() if isinstance(kind, NullType)}
    parts, notes = [], []
    for column in dict.fromkeys(columns):
        quoted = quote_pg(column)
        if column in opaque:
            parts.append(f"CAST({quoted} AS text) AS {quoted}")
            notes.append(f"{column}: type unknown to GX, checked as text")
        else:
            parts.append(quoted)
    select = ", ".join(parts) or "1 AS custody_row"
    return f"SELECT {select} FROM {quote_pg(schema)}.{quote_pg(table)}", notes, bool(opaque)
