"""client state: read receipt times, membership versions, share_read_receipts

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 16:00:00.000000

"""

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    # Plain ADD COLUMNs with constant defaults: SQLite adds them without rebuilding a table.
    op.add_column(
        "topic_members", sa.Column("last_read_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "topic_members",
        sa.Column("version", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column(
        "notification_settings",
        sa.Column("share_read_receipts", sa.Boolean(), server_default=sa.true(), nullable=False),
    )


def downgrade():
    with op.batch_alter_table("notification_settings", schema=None) as batch_op:
        batch_op.drop_column("share_read_receipts")
    with op.batch_alter_table("topic_members", schema=None) as batch_op:
        batch_op.drop_column("version")
        batch_op.drop_column("last_read_at")
