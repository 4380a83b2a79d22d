"""Dead-letter replay: each job's chunk work recipe, and how each dead letter was resolved.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The chunk work of a job as references (class path, connection and table names, options),
    # so that replay-dead-letters can run a failed chunk again exactly as its job did.
    op.add_column("jobs", sa.Column("work", sa.JSON().with_variant(JSONB(), "postgresql")))
    # replayed_at (0001) marks a letter closed; these say how and on whose approval.
    op.add_column("dead_letters", sa.Column("resolution", sa.Text))
    op.add_column("dead_letters", sa.Column("replayed_by", sa.Text))
    op.add_column("dead_letters", sa.Column("replay_run_id", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("dead_letters") as batch:
        batch.drop_column("replay_run_id")
        batch.drop_column("replayed_by")
        batch.drop_column("resolution")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("work")
