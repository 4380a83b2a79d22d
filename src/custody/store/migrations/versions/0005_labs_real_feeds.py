"""Lab ingestion on real feeds: time zone provenance, sender critical flags, history, counts.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from custody.db import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Which rule placed the times a sender wrote without an offset (custody.labs.zones), and
    # the HL7 sender (MSH-4) whose configured zone may have applied.
    op.add_column("lab_results", sa.Column("sender", sa.Text))
    op.add_column("lab_results", sa.Column("time_zone_source", sa.Text))
    # Items of a file counted as not a result (a FHIR component with only dataAbsentReason).
    op.add_column("lab_files", sa.Column("not_results", sa.BigInteger))
    # Critical alerts from the sender's own flag (no rule limit), and for quarantined results.
    with op.batch_alter_table("critical_results") as batch:
        batch.alter_column("limit_value", existing_type=sa.Numeric, nullable=True)
        batch.add_column(sa.Column("alert_source", sa.Text))
        batch.add_column(sa.Column("quarantine_stage", sa.Text))
    # Rows replaced by a later file (corrections, cancellations, resends), kept as they were.
    op.create_table(
        "lab_results_history",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("result_id", sa.Text, nullable=False),
        sa.Column("file_sha256", sa.Text, nullable=False),
        sa.Column("replaced_by_file", sa.Text, nullable=False),
        sa.Column("previous_status", sa.Text, nullable=False),
        sa.Column("new_status", sa.Text, nullable=False),
        sa.Column("previous", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False),
        sa.Column("replaced_at", UTCDateTime, nullable=False),
        sa.Column("correlation_id", sa.Text),
    )
    op.create_index("lab_results_history_result_idx", "lab_results_history", ["result_id"])


def downgrade() -> None:
    op.drop_table("lab_results_history")
    with op.batch_alter_table("lab_files") as batch:
        batch.drop_column("not_results")
    with op.batch_alter_table("critical_results") as batch:
        batch.drop_column("quarantine_stage")
        batch.drop_column("alert_source")
    with op.batch_alter_table("lab_results") as batch:
        batch.drop_column("time_zone_source")
        batch.drop_column("sender")
