"""The audit chain head carries the store's identity: a random id created once, here.

The head's signature binds this id, the counter and the time of the last append (chain.py), so a
chain and head copied from another store signed with the same key cannot stand in for this one,
and anchors (which copy the id out of the database) tell the two stores apart.

Revision ID: 0006
Revises: 0005
"""

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_chain_head", sa.Column("store_id", sa.Text))
    op.execute(
        sa.text("UPDATE audit_chain_head SET store_id = :store_id").bindparams(
            store_id=str(uuid.uuid4())
        )
    )


def downgrade() -> None:
    with op.batch_alter_table("audit_chain_head") as batch:
        batch.drop_column("store_id")
