"""Lab ingestion: results, quarantine, ingested files, critical results.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from custody.db import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lab_results",
        sa.Column("result_id", sa.Text, primary_key=True),
        sa.Column("patient_ref", sa.Text),
        sa.Column("order_ref", sa.Text),
        sa.Column("code", sa.Text),
        sa.Column("code_system", sa.Text),
        sa.Column("loinc_code", sa.Text),
        sa.Column("display", sa.Text),
        sa.Column("value_numeric", sa.Numeric),
        sa.Column("comparator", sa.Text),
        sa.Column("value_text", sa.Text),
        sa.Column("unit", sa.Text),
        sa.Column("reference_low", sa.Numeric),
        sa.Column("reference_high", sa.Numeric),
        sa.Column("reference_text", sa.Text),
        sa.Column("abnormal_flag", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("collected_at", UTCDateTime),
        sa.Column("resulted_at", UTCDateTime),
        sa.Column("performing_lab", sa.Text),
        sa.Column("technician", sa.Text),
        sa.Column("source_file", sa.Text, nullable=False),
        sa.Column("source_message", sa.Text),
        sa.Column("source_position", sa.Text, nullable=False),
        sa.Column("file_sha256", sa.Text, nullable=False),
        sa.Column("ingested_at", UTCDateTime, nullable=False),
    )
    op.create_index("lab_results_patient_idx", "lab_results", ["patient_ref", "collected_at"])
    op.create_index("lab_results_file_idx", "lab_results", ["file_sha256"])
    op.create_table(
        "lab_quarantine",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("file_sha256", sa.Text, nullable=False),
        sa.Column("source_file", sa.Text, nullable=False),
        sa.Column("source_message", sa.Text),
        sa.Column("source_position", sa.Text),
        sa.Column("stage", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("quarantined_at", UTCDateTime, nullable=False),
        sa.Column("correlation_id", sa.Text),
        sa.CheckConstraint("stage IN ('file', 'parse', 'validate')", name="lab_quarantine_stage"),
    )
    op.create_index("lab_quarantine_file_idx", "lab_quarantine", ["file_sha256"])
    op.create_table(
        "lab_files",
        sa.Column("file_sha256", sa.Text, primary_key=True),
        sa.Column("source_file", sa.Text, nullable=False),
        sa.Column("format", sa.Text),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("results", sa.BigInteger, nullable=False),
        sa.Column("quarantined", sa.BigInteger, nullable=False),
        sa.Column("critical", sa.BigInteger, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("ingested_at", UTCDateTime, nullable=False),
        sa.Column("correlation_id", sa.Text),
        sa.CheckConstraint("status IN ('ingested', 'rejected')", name="lab_files_status"),
    )
    op.create_table(
        "critical_results",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("result_id", sa.Text, nullable=False),
        sa.Column("rule_set", sa.Text, nullable=False),
        sa.Column("analyte", sa.Text, nullable=False),
        sa.Column("loinc_code", sa.Text, nullable=False),
        sa.Column("direction", sa.Text, nullable=False),
        sa.Column("limit_value", sa.Numeric, nullable=False),
        sa.Column("audit_seq", sa.BigInteger),
        sa.Column("detected_at", UTCDateTime, nullable=False),
        sa.Column("acknowledged_at", UTCDateTime),
        sa.Column("acknowledged_by", sa.Text),
    )
    op.create_index("critical_results_detected_idx", "critical_results", ["detected_at"])


def downgrade() -> None:
    for table in ("critical_results", "lab_files", "lab_quarantine", "lab_results"):
        op.drop_table(table)
