"""Compliance reports: the generated-report record and disclosure-accounting requests.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from custody.db import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "compliance_reports",
        sa.Column("report_id", sa.Text, primary_key=True),
        sa.Column("regulation", sa.Text, nullable=False),
        sa.Column("report_type", sa.Text, nullable=False),
        sa.Column("period_start", UTCDateTime, nullable=False),
        sa.Column("period_end", UTCDateTime, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("record_count", sa.BigInteger),
        sa.Column("csv_key", sa.Text),
        sa.Column("csv_sha256", sa.Text),
        sa.Column("csv_bytes", sa.BigInteger),
        sa.Column("html_key", sa.Text),
        sa.Column("html_sha256", sa.Text),
        sa.Column("html_bytes", sa.BigInteger),
        sa.Column("error", sa.Text),
        sa.Column("generated_at", UTCDateTime, nullable=False),
        sa.Column("correlation_id", sa.Text),
        sa.CheckConstraint("status IN ('completed', 'failed')", name="compliance_reports_status"),
    )
    op.create_index(
        "compliance_reports_type_idx", "compliance_reports", ["report_type", "period_start"]
    )
    # A patient's accounting of disclosures is asked for by request id, so that the patient
    # reference never travels through Prefect: the request resolves here, inside the boundary.
    op.create_table(
        "disclosure_requests",
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("patient_ref", sa.Text, nullable=False),
        sa.Column("requested_by", sa.Text),
        sa.Column("requested_at", UTCDateTime),
    )


def downgrade() -> None:
    op.drop_table("disclosure_requests")
    op.drop_table("compliance_reports")
