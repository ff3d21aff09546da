"""mobile push: FCM and APNs devices beside Web Push subscriptions; history says the channel

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 10:20:00.000000

"""
from contextlib import contextmanager

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


@contextmanager
def _rebuilding(table):
    """Alter ``table`` in batch mode, foreign keys off while SQLite rebuilds it (as in 0004)."""
    sqlite = op.get_bind().dialect.name == 'sqlite'
    if sqlite:
        with op.get_context().autocommit_block():
            op.execute('PRAGMA foreign_keys=OFF')
    try:
        with op.batch_alter_table(table, schema=None) as batch_op:
            yield batch_op
    finally:
        if sqlite:
            with op.get_context().autocommit_block():
                op.execute('PRAGMA foreign_keys=ON')


def upgrade():
    with _rebuilding('push_subscriptions') as batch_op:
        batch_op.add_column(sa.Column('channel', sa.String(length=16), server_default='webpush', nullable=False))
        batch_op.add_column(sa.Column('token', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('app_id', sa.String(length=128), nullable=True))
        batch_op.alter_column('endpoint', existing_type=sa.Text(), nullable=True)
        batch_op.alter_column('p256dh', existing_type=sa.String(length=128), nullable=True)
        batch_op.alter_column('auth', existing_type=sa.String(length=64), nullable=True)
        batch_op.create_check_constraint(
            op.f('ck_push_subscriptions_channel'), "channel IN ('webpush', 'fcm', 'apns')"
        )
        batch_op.create_check_constraint(
            op.f('ck_push_subscriptions_address'),
            "(channel = 'webpush' AND endpoint IS NOT NULL AND p256dh IS NOT NULL "
            "AND auth IS NOT NULL) OR (channel <> 'webpush' AND token IS NOT NULL)",
        )
        batch_op.create_index('uq_push_subscriptions_channel_token', ['channel', 'token'], unique=True)
    op.add_column('push_history', sa.Column('channel', sa.String(length=16), server_default='webpush', nullable=False))


def downgrade():
    op.drop_column('push_history', 'channel')
    op.execute("DELETE FROM push_subscriptions WHERE channel <> 'webpush'")
    with _rebuilding('push_subscriptions') as batch_op:
        batch_op.drop_index('uq_push_subscriptions_channel_token')
        batch_op.drop_constraint(op.f('ck_push_subscriptions_address'), type_='check')
        batch_op.drop_constraint(op.f('ck_push_subscriptions_channel'), type_='check')
        batch_op.alter_column('auth', existing_type=sa.String(length=64), nullable=False)
        batch_op.alter_column('p256dh', existing_type=sa.String(length=128), nullable=False)
        batch_op.alter_column('endpoint', existing_type=sa.Text(), nullable=False)
        batch_op.drop_column('app_id')
        batch_op.drop_column('token')
        batch_op.drop_column('channel')
