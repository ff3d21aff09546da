"""attention: idle presence status, push-when-idle and email preferences, missed-message email

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 13:00:00.000000

"""

from contextlib import contextmanager

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

LEVELS = "'all', 'mentions', 'none'"


@contextmanager
def _rebuilding(table):
    """Alter ``table`` in batch mode, foreign keys off while SQLite rebuilds it (as in 0004)."""
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        with op.get_context().autocommit_block():
            op.execute("PRAGMA foreign_keys=OFF")
    try:
        with op.batch_alter_table(table, schema=None) as batch_op:
            yield batch_op
    finally:
        if sqlite:
            with op.get_context().autocommit_block():
                op.execute("PRAGMA foreign_keys=ON")


def upgrade():
    with _rebuilding("users") as batch_op:
        batch_op.add_column(
            sa.Column(
                "presence_status", sa.String(length=8), server_default="offline", nullable=False
            )
        )
        batch_op.add_column(
            sa.Column("email_bounces", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("email_failing_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.create_check_constraint(
            op.f("ck_users_presence_status"), "presence_status IN ('active', 'idle', 'offline')"
        )
    op.execute("UPDATE users SET presence_status = 'active' WHERE is_online")

    with _rebuilding("notification_settings") as batch_op:
        batch_op.add_column(
            sa.Column("push_when_idle", sa.Boolean(), server_default=sa.true(), nullable=False)
        )
        batch_op.add_column(
            sa.Column(
                "email_level", sa.String(length=16), server_default="mentions", nullable=False
            )
        )
        batch_op.add_column(sa.Column("email_delay", sa.Integer(), nullable=True))
        batch_op.create_check_constraint(
            op.f("ck_notification_settings_email_level"), f"email_level IN ({LEVELS})"
        )
        batch_op.create_check_constraint(
            op.f("ck_notification_settings_email_delay"), "email_delay >= 0"
        )

    with _rebuilding("notification_overrides") as batch_op:
        batch_op.add_column(sa.Column("email_level", sa.String(length=16), nullable=True))
        batch_op.alter_column("level", existing_type=sa.String(length=16), nullable=True)
        batch_op.create_check_constraint(
            op.f("ck_notification_overrides_email_level"), f"email_level IN ({LEVELS})"
        )
        batch_op.create_check_constraint(
            op.f("ck_notification_overrides_some_level"),
            "level IS NOT NULL OR email_level IS NOT NULL",
        )

    op.create_table(
        "pending_emails",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column(
            "message_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("topic_id", sa.Uuid(), nullable=False),
        sa.Column("mentioned", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("scheduled_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_pending_emails_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["topic_id"],
            ["topics.id"],
            name=op.f("fk_pending_emails_topic_id_topics"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_pending_emails_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "message_id", name=op.f("pk_pending_emails")),
    )
    op.create_index("ix_pending_emails_due_at", "pending_emails", ["due_at"], unique=False)

    op.create_table(
        "email_digests",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("message_ids", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("reason", sa.String(length=300), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('sending', 'sent', 'bounced', 'failed', 'dropped')",
            name=op.f("ck_email_digests_state"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_email_digests_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_email_digests")),
    )
    op.create_index(
        "ix_email_digests_user_id_created_at",
        "email_digests",
        ["user_id", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_email_digests_state_created_at", "email_digests", ["state", "created_at"], unique=False
    )


def downgrade():
    op.drop_index("ix_email_digests_state_created_at", table_name="email_digests")
    op.drop_index("ix_email_digests_user_id_created_at", table_name="email_digests")
    op.drop_table("email_digests")
    op.drop_index("ix_pending_emails_due_at", table_name="pending_emails")
    op.drop_table("pending_emails")
    op.execute("DELETE FROM notification_overrides WHERE level IS NULL")
    with _rebuilding("notification_overrides") as batch_op:
        batch_op.drop_constraint(op.f("ck_notification_overrides_some_level"), type_="check")
        batch_op.drop_constraint(op.f("ck_notification_overrides_email_level"), type_="check")
        batch_op.alter_column("level", existing_type=sa.String(length=16), nullable=False)
        batch_op.drop_column("email_level")
    with _rebuilding("notification_settings") as batch_op:
        batch_op.drop_constraint(op.f("ck_notification_settings_email_delay"), type_="check")
        batch_op.drop_constraint(op.f("ck_notification_settings_email_level"), type_="check")
        batch_op.drop_column("email_delay")
        batch_op.drop_column("email_level")
        batch_op.drop_column("push_when_idle")
    with _rebuilding("users") as batch_op:
        batch_op.drop_constraint(op.f("ck_users_presence_status"), type_="check")
        batch_op.drop_column("email_failing_at")
        batch_op.drop_column("email_bounces")
        batch_op.drop_column("presence_status")
