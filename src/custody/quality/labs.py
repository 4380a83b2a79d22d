"""The GX suite over the lab results a run has landed: the integrity gate of an ingestion.

Records are checked one by one before they land (``custody.labs.validate``); this suite checks
the stored rows again, in SQL, the way an auditor would: LOINC codes well formed, numbers with
units, statuses known, times and reference ranges in order, every row traceable to its source.
Rule outcomes are computed as 0/1 columns so that the same suite runs on PostgreSQL and SQLite.
"""

from __future__ import annotations

import re
import uuid

from custody.labs.model import ResultStatus
from custody.labs.validate import UNITLESS_OK
from custody.quality.tables import QualityResult, ephemeral_context

_HEX = re.compile(r"^[0-9a-f]{64}$")


def lab_results_query(file_shas: list[str]) -> str:
    """The run's rows with each rule as a 0/1 flag (file hashes are checked hex, not PHI)."""
    if not file_shas or not all(_HEX.fullmatch(s) for s in file_shas):
        raise ValueError("file_shas must be a non-empty list of SHA-256 hex digests")
    shas = ", ".join(f"'{s}'" for s in file_shas)
    unitless = ", ".join(f"'{c}'" for c in sorted(UNITLESS_OK))
    return f"""
        SELECT result_id, loinc_code, status, source_file, source_position,
          CASE WHEN value_numeric IS NOT NULL AND COALESCE(unit, '') = ''
                    AND COALESCE(loinc_code, '') NOT IN ({unitless}) THEN 1 ELSE 0 END
            AS numeric_without_unit,
          CASE WHEN resulted_at < collected_at THEN 1 ELSE 0 END AS resulted_before_collected,
          CASE WHEN reference_low > reference_high THEN 1 ELSE 0 END AS range_upside_down
        FROM lab_results WHERE file_sha256 IN ({shas})
    """


def check_lab_results(url: str, file_shas: list[str]) -> QualityResult:
    """Run the suite over the rows of the given files; outcome without any data values."""
    import great_expectations as gx

    context = ephemeral_context()
    name = f"custody-labs-{uuid.uuid4().hex[:8]}"
    if url.startswith("sqlite"):
        source = context.data_sources.add_sqlite(name=name, connection_string=url)
    else:
        source = context.data_sources.add_postgres(name=name, connection_string=url)
    asset = source.add_query_asset(name="lab_results", query=lab_results_query(file_shas))
    batch = asset.add_batch_definition_whole_table("run")
    suite = context.suites.add(gx.ExpectationSuite(name=f"{name}-suite"))
    expectations = [
        gx.expectations.ExpectColumnValuesToMatchRegex(column="loinc_code", regex=r"^\d{1,7}-\d$"),
        gx.expectations.ExpectColumnValuesToBeInSet(
            column="status",
            value_set=[s.value for s in ResultStatus if s is not ResultStatus.UNKNOWN],
        ),
        gx.expectations.ExpectColumnValuesToNotBeNull(column="source_file"),
        gx.expectations.ExpectColumnValuesToNotBeNull(column="source_position"),
        *(
            gx.expectations.ExpectColumnValuesToBeInSet(column=flag, value_set=[0])
            for flag in ("numeric_without_unit", "resulted_before_collected", "range_upside_down")
        ),
    ]
    for expectation in expectations:
        suite.add_expectation(expectation)
    validation = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{name}-validation", data=batch, suite=suite)
    )
    try:
        result = validation.run(result_format="BOOLEAN_ONLY")
    finally:
        source.get_engine().dispose()  # GX never closes the engine it builds
    failed = [
        f"{r.expectation_config.type}({r.expectation_config.kwargs.get('column') or ''})"
        for r in result.results
        if not r.success
    ]
    return QualityResult("lab_results", bool(result.success), len(result.results), failed)
