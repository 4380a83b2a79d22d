"""The lab tables in custody's store, as SQLAlchemy Core objects for queries.

The DDL that creates them is Alembic revision 0002 (custody/store/migrations); keep both in step.
These tables hold PHI: they stay inside the database, behind its access controls.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, Integer, MetaData, Numeric, Table, Text
from sqlalchemy.dialects.postgresql import JSONB

from custody.db import UTCDateTime

metadata = MetaData()

lab_results = Table(
    "lab_results",
    metadata,
    Column("result_id", Text, primary_key=True),
    Column("patient_ref", Text),
    Column("order_ref", Text),
    Column("code", Text),
    Column("code_system", Text),
    Column("loinc_code", Text),
    Column("display", Text),
    Column("value_numeric", Numeric),
    Column("comparator", Text),
    Column("value_text", Text),
    Column("unit", Text),
    Column("reference_low", Numeric),
    Column("reference_high", Numeric),
    Column("reference_text", Text),
    Column("abnormal_flag", Text),
    Column("status", Text, nullable=False),
    Column("collected_at", UTCDateTime),
    Column("resulted_at", UTCDateTime),
    Column("performing_lab", Text),
    Column("technician", Text),
    Column("sender", Text),
    Column("time_zone_source", Text),
    Column("source_file", Text, nullable=False),
    Column("source_message", Text),
    Column("source_position", Text, nullable=False),
    Column("file_sha256", Text, nullable=False),
    Column("ingested_at", UTCDateTime, nullable=False),
)

lab_quarantine = Table(
    "lab_quarantine",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("file_sha256", Text, nullable=False),
    Column("source_file", Text, nullable=False),
    Column("source_message", Text),
    Column("source_position", Text),
    Column("stage", Text, nullable=False),  # file | parse | validate
    Column("reason", Text, nullable=False),
    Column("quarantined_at", UTCDateTime, nullable=False),
    Column("correlation_id", Text),
)

lab_files = Table(
    "lab_files",
    metadata,
    Column("file_sha256", Text, primary_key=True),
    Column("source_file", Text, nullable=False),
    Column("format", Text),
    Column("status", Text, nullable=False),  # ingested | rejected
    Column("results", BigInteger, nullable=False),
    Column("quarantined", BigInteger, nullable=False),
    Column("critical", BigInteger, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("not_results", BigInteger),  # items counted as not a result (issue 16 item 4)
    Column("ingested_at", UTCDateTime, nullable=False),
    Column("correlation_id", Text),
)

critical_results = Table(
    "critical_results",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("result_id", Text, nullable=False),
    Column("rule_set", Text, nullable=False),
    Column("analyte", Text, nullable=False),
    Column("loinc_code", Text, nullable=False),
    Column("direction", Text, nullable=False),
    Column("limit_value", Numeric),  # NULL: the sender's own flag, no rule limit
    Column("alert_source", Text),  # rule_table | sender_flag | rule_table+sender_flag
    Column("quarantine_stage", Text),  # set when the result itself was quarantined
    Column("audit_seq", BigInteger),
    Column("detected_at", UTCDateTime, nullable=False),
    Column("acknowledged_at", UTCDateTime),
    Column("acknowledged_by", Text),
)

# A stored result replaced by a later file (same order, test and occurrence: a correction, a
# cancellation, a resend): the row as it was, so that a result never silently changes.
lab_results_history = Table(
    "lab_results_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("result_id", Text, nullable=False),
    Column("file_sha256", Text, nullable=False),  # the file that had landed the replaced row
    Column("replaced_by_file", Text, nullable=False),  # the file whose result replaced it
    Column("previous_status", Text, nullable=False),
    Column("new_status", Text, nullable=False),
    Column("previous", JSON().with_variant(JSONB(), "postgresql"), nullable=False),
    Column("replaced_at", UTCDateTime, nullable=False),
    Column("correlation_id", Text),
)
