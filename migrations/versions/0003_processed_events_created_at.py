"""index processed_events.created_at (markers are pruned by age)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 10:00:00.000000

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    # The table was never pruned before: on PostgreSQL build the index without blocking the
    # workers' inserts (CONCURRENTLY runs outside a transaction).
    if op.get_bind().dialect.name == 'postgresql':
        with op.get_context().autocommit_block():
            op.create_index(
                op.f('ix_processed_events_created_at'), 'processed_events', ['created_at'],
                unique=False, postgresql_concurrently=True,
            )
    else:
        op.create_index(
            op.f('ix_processed_events_created_at'), 'processed_events', ['created_at'],
            unique=False,
        )


def downgrade():
    op.drop_index(op.f('ix_processed_events_created_at'), table_name='processed_events')
