"""integration api: external ids, user deletion, service keys, webhooks, publish keys

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 06:10:39.936609

"""
from contextlib import contextmanager

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


@contextmanager
def _rebuilding(table):
    """Alter ``table`` in batch mode. SQLite rebuilds it (drop and rename), and dropping a
    table with foreign keys on deletes the rows that reference it (topics of channels): they
    are off during the rebuild (the pragma only changes outside a transaction)."""
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
    op.create_table('api_keys',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("scope IN ('admin', 'publish')", name=op.f('ck_api_keys_scope')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_keys_key_hash')),
    sa.UniqueConstraint('name', name=op.f('uq_api_keys_name'))
    )
    op.create_table('webhooks',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('events', sa.String(length=512), nullable=False),
    sa.Column('secret', sa.String(length=128), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('consecutive_failures', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_success_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_failure_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.String(length=300), nullable=True),
    sa.Column('disabled_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhooks'))
    )
    op.create_table('published_messages',
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('request_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['message_id'], ['messages.id'], name=op.f('fk_published_messages_message_id_messages'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_published_messages'))
    )
    op.create_index('ix_published_messages_created_at', 'published_messages', ['created_at'], unique=False)

    # Plain ADD COLUMN and CREATE UNIQUE INDEX: no table is rebuilt for these.
    for table in ('users', 'channels', 'topics'):
        op.add_column(table, sa.Column('external_id', sa.String(length=128), nullable=True))
        op.create_index(f'uq_{table}_external_id', table, ['external_id'], unique=True)
    op.add_column('users', sa.Column('email', sa.String(length=254), nullable=True))
    op.add_column('users', sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True))

    # Room names are no longer unique (two rooms of a product may share one).
    with _rebuilding('channels') as batch_op:
        batch_op.drop_constraint('uq_channels_name', type_='unique')


def downgrade():
    with _rebuilding('channels') as batch_op:
        batch_op.create_unique_constraint('uq_channels_name', ['name'])
    with _rebuilding('users') as batch_op:
        batch_op.drop_column('deleted_at')
        batch_op.drop_column('email')
    for table in ('topics', 'channels', 'users'):
        op.drop_index(f'uq_{table}_external_id', table_name=table)
        with _rebuilding(table) as batch_op:
            batch_op.drop_column('external_id')
    op.drop_index('ix_published_messages_created_at', table_name='published_messages')
    op.drop_table('published_messages')
    op.drop_table('webhooks')
    op.drop_table('api_keys')
