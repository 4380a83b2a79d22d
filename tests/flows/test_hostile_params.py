"""Hostile flow parameters are refused by the form itself, with a message naming the field.

What the Prefect UI, the REST API and `run_deployment` send is validated against these models
before the flow body runs, so nothing below can reach SQL, a file path or an object key.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from flows.anchor_audit_chain import AnchorParams
from flows.archive import ArchiveParams, RestoreParams
from flows.compliance_report import ReportParams
from flows.copy_table import CopyTableParams
from flows.ingest_lab_results import IngestParams
from flows.migrate import MigrateParams

POLICY = {"name": "labs", "table": "lab_results", "timestamp_column": "resulted_at",
          "retention_days": 365}  # fmt: skip
JOB = {"source": "ehr", "target": "warehouse"}

CASES: list[tuple[str, type[BaseModel], dict[str, Any], str]] = [
    # SQL names: only what no server can hold is refused by the form (empty, NUL, too long).
    # Quotes, spaces and look-alikes are legal names; the flow looks them up in the catalog.
    ("empty table", CopyTableParams, {**JOB, "table": "", "key_column": "id"}, "table"),
    ("table with NUL", MigrateParams, {**JOB, "tables": ["lab\x00results"]}, "tables.0"),
    ("table of 64 bytes", MigrateParams, {**JOB, "tables": ["x" * 64]}, "tables.0"),
    ("schema of 64 bytes", MigrateParams, {**JOB, "schema_name": "\u00e9" * 32}, "schema_name"),
    (
        "key column NUL",
        CopyTableParams,
        {**JOB, "table": "t", "key_column": "id\x00"},
        "key_column",
    ),
    (
        "policy column too long",
        ArchiveParams,
        {"database": "ehr", "policies": [{**POLICY, "timestamp_column": "c" * 64}]},
        "policies.0.timestamp_column",
    ),
    ("restore table empty", RestoreParams, {"database": "ehr", "table": ""}, "table"),
    # Connections are names, never URLs.
    (
        "url as connection",
        MigrateParams,
        {"source": "postgresql://postgres@db/ehr", "target": "warehouse"},
        "source",
    ),
    (
        "upper-case connection",
        CopyTableParams,
        {"source": "EHR", "target": "w", "table": "t", "key_column": "id"},
        "source",
    ),
    # Object keys and prefixes.
    (
        "dotdot prefix",
        ArchiveParams,
        {"database": "ehr", "policies": [POLICY], "prefix": "archive/../other-tenant"},
        "prefix",
    ),
    ("absolute prefix", ReportParams, {"prefix": "/etc/cron.d"}, "prefix"),
    ("encoded separator", ReportParams, {"prefix": "reports/%2e%2e/x"}, "prefix"),
    ("encoded slash", AnchorParams, {"prefix": "anchors%2Fx"}, "prefix"),
    ("store dotdot", IngestParams, {"source": "store:inbox/../archive"}, "source"),
    ("relative path", IngestParams, {"source": "data/inbox"}, "source"),
    ("path dotdot", IngestParams, {"source": "/data/inbox/../../etc"}, "source"),
    (
        "bad destination",
        ArchiveParams,
        {"database": "ehr", "policies": [POLICY], "destination": "http://evil.example/x"},
        "destination",
    ),
    # Sizes.
    ("zero chunk", MigrateParams, {**JOB, "chunk_size": 0}, "chunk_size"),
    (
        "negative chunk",
        CopyTableParams,
        {**JOB, "table": "t", "key_column": "id", "chunk_size": -5},
        "chunk_size",
    ),
    ("huge chunk", MigrateParams, {**JOB, "chunk_size": 10**12}, "chunk_size"),
    (
        "huge batch",
        ArchiveParams,
        {"database": "ehr", "policies": [POLICY], "batch_size": 10**9},
        "batch_size",
    ),
    ("zero files per task", IngestParams, {"source": "/data", "chunk_size": 0}, "chunk_size"),
    # issue 15 item 2: a rule set is a name, never a path to any file
    (
        "rule set path",
        IngestParams,
        {"source": "/data", "critical_rules": "/etc/passwd"},
        "critical_rules",
    ),
    ("zero concurrency", MigrateParams, {**JOB, "max_concurrency": 0}, "max_concurrency"),
    (
        "negative retention",
        ArchiveParams,
        {"database": "ehr", "policies": [{**POLICY, "retention_days": -1}]},
        "policies.0.retention_days",
    ),
    # Periods and times.
    (
        "period backwards",
        ReportParams,
        {"period": "custom", "period_start": "2026-03-01", "period_end": "2026-02-01"},
        "period_end must be after period_start",
    ),
    (
        "restore range backwards",
        RestoreParams,
        {
            "database": "ehr",
            "table": "t",
            "start": "2026-03-01T00:00:00Z",
            "end": "2026-02-01T00:00:00Z",
        },
        "end must be after start",
    ),
    ("unknown zone", ReportParams, {"timezone": "Mars/Olympus"}, "unknown time zone"),
    ("unknown regulation", ReportParams, {"regulation": "GDPR'; --"}, "regulation"),
    (
        "patient in request id",
        ReportParams,
        {"report_types": ["disclosures"], "request_id": "MRN 12345 Jane Doe"},
        "request_id",
    ),
    # Fields that do not exist are refused, not ignored.
    ("extra field", MigrateParams, {**JOB, "tables_sql": "select 1"}, "tables_sql"),
]


@pytest.mark.parametrize(
    ("model", "values", "named"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_hostile_parameters_are_refused_naming_the_field(
    model: type[BaseModel], values: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        model.model_validate(values)
    message = str(refused.value)
    assert named in message, message
    assert "input_value=" in message, message  # the bad value is quoted back to the caller


def test_the_same_forms_accept_plain_values() -> None:
    """The refusals above are not a form that refuses everything."""
    CopyTableParams.model_validate({**JOB, "table": "lab_results", "key_column": "result_id"})
    MigrateParams.model_validate({**JOB, "tables": ["lab_results"], "chunk_size": 1_000})
    # Names PostgreSQL and MySQL accept are legal here too; the catalog decides if they exist.
    MigrateParams.model_validate(
        {**JOB, "schema_name": "Clinic Data", "tables": ["PatientRecords", "na\u00efve$t", 'a"b']}
    )
    ArchiveParams.model_validate({"database": "ehr", "policies": [POLICY]})
    RestoreParams.model_validate({"database": "ehr", "archive_ids": ["a1b2c3"]})
    IngestParams.model_validate({"source": "store:inbox/3f9a.hl7"})
    ReportParams.model_validate(
        {
            "period": "custom",
            "period_start": "2026-01-01",
            "period_end": "2026-02-01",
            "timezone": "America/Chicago",
        }
    )
    AnchorParams.model_validate({"prefix": "audit-anchors/site-a"})
