"""Report tables in custody's store (Alembic revision 0003; keep both in step).

A row says what was reported (type, regulation, period), how much (records, bytes) and where it
is (object keys with their SHA-256), so an auditor can fetch a report and check it is the one
that was generated. It holds no PHI; the stored objects do.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, MetaData, Table, Text

from custody.db import UTCDateTime

metadata = MetaData()

compliance_reports = Table(
    "compliance_reports",
    metadata,
    Column("report_id", Text, primary_key=True),
    Column("regulation", Text, nullable=False),
    Column("report_type", Text, nullable=False),
    Column("period_start", UTCDateTime, nullable=False),
    Column("period_end", UTCDateTime, nullable=False),
    Column("status", Text, nullable=False),
    Column("record_count", BigInteger),
    Column("csv_key", Text),
    Column("csv_sha256", Text),
    Column("csv_bytes", BigInteger),
    Column("html_key", Text),
    Column("html_sha256", Text),
    Column("html_bytes", BigInteger),
    Column("error", Text),
    Column("generated_at", UTCDateTime, nullable=False),
    Column("correlation_id", Text),
)

# A patient's request for an accounting of disclosures. Reports take the request id, never the
# patient: the patient reference is joined in SQL and never reaches Prefect.
disclosure_requests = Table(
    "disclosure_requests",
    metadata,
    Column("request_id", Text, primary_key=True),
    Column("patient_ref", Text, nullable=False),
    Column("requested_by", Text),
    Column("requested_at", UTCDateTime),
)
