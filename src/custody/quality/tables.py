"""A table-level integrity suite run with an ephemeral GX context.

Results are requested as ``BOOLEAN_ONLY``: GX then never copies unexpected values (which may be
PHI) into what we keep. The summary holds expectation names and pass/fail only.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class QualityResult:
    """PHI-free outcome of a suite: which expectations ran and which failed."""

    table: str
    success: bool
    evaluated: int
    failed: list[str] = field(default_factory=list)


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
    """Row count, key uniqueness and NOT NULL columns of one table, checked by GX in SQL."""
    import great_expectations as gx

    context = ephemeral_context()
    name = f"custody-{uuid.uuid4().hex[:8]}"
    if url.startswith("sqlite"):
        source = context.data_sources.add_sqlite(name=name, connection_string=url)
        asset = source.add_table_asset(name=table, table_name=table)
    else:
        source = context.data_sources.add_postgres(name=name, connection_string=url)
        asset = source.add_table_asset(name=table, table_name=table, schema_name=schema)
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
    return QualityResult(table, bool(result.success), len(result.results), failed)
