"""SQLAlchemy models: the persistent half of Beacon's state (presence lives in Redis)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    false,
    true,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from webapp.extensions import db

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a real BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


def isoformat(value: datetime | None) -> str | None:
    """ISO 8601 with an explicit UTC offset (SQLite hands back naive datetimes)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


class User(db.Model):
    __tablename__ = "users"
    # Unique indexes rather than constraints: SQLite adds them without rebuilding the table.
    __table_args__ = (
        Index("uq_users_external_id", "external_id", unique=True),
        CheckConstraint("presence_status IN ('active', 'idle', 'offline')", name="presence_status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    username: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    display_name: Mapped[str | None] = mapped_column(String(128))
    # The integrating product's own id for the user (the integration API's key).
    external_id: Mapped[str | None] = mapped_column(String(128))
    email: Mapped[str | None] = mapped_column(String(254))
    # Set when the integration API deletes the user: the row stays (with its personal data
    # erased) so that the user's messages keep their sender, shown as a deleted user.
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    is_online: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    # ``active`` (some connection is in use), ``idle`` (every connection idle), ``offline``;
    # stored with ``is_online`` under the same compare-and-set (presence.user_status).
    presence_status: Mapped[str] = mapped_column(
        String(8), nullable=False, default="offline", server_default="offline"
    )
    # Missed-message email: hard bounces (5xx at RCPT) in a row, and when they reached
    # EMAIL_BOUNCE_LIMIT (no more email until the address changes).
    email_bounces: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default="0"
    )
    email_failing_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )

    @property
    def name(self) -> str:
        if self.deleted_at is not None:
            return DELETED_USER_NAME
        return self.display_name or self.username


DELETED_USER_NAME = "Deleted user"


class Channel(db.Model):
    __tablename__ = "channels"
    __table_args__ = (Index("uq_channels_external_id", "external_id", unique=True),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # Not unique: two rooms of an integrating product may share a name; the CLI finds its
    # own rooms (no external id) by name.
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    external_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )

    topics: Mapped[list[Topic]] = relationship(back_populates="channel")


class Topic(db.Model):
    __tablename__ = "topics"
    __table_args__ = (
        UniqueConstraint("channel_id", "name", name="uq_topics_channel_id_name"),
        Index("uq_topics_external_id", "external_id", unique=True),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    channel_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("channels.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    external_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )

    channel: Mapped[Channel] = relationship(back_populates="topics")


class TopicMember(db.Model):
    __tablename__ = "topic_members"
    __table_args__ = (
        UniqueConstraint("topic_id", "user_id", name="uq_topic_members_topic_id_user_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    topic_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("topics.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    unread_count: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default="0"
    )
    last_read_message_id: Mapped[int | None] = mapped_column(BigId)
    # When the marker last moved (mark as read or unread): a read receipt's time.
    last_read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # +1 on every change of the count or the marker, in the statement that makes it: events
    # carry it so that a client keeps the newest state whatever order they arrive in.
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    joined_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )


class Message(db.Model):
    __tablename__ = "messages"
    __table_args__ = (Index("ix_messages_topic_id_id", "topic_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    topic_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("topics.id", ondelete="CASCADE"), nullable=False
    )
    sender_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    body: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )

    sender: Mapped[User] = relationship()
    topic: Mapped[Topic] = relationship()


class PushSubscription(db.Model):
    """A device that can be pushed to: a browser's Web Push subscription (endpoint and keys)
    or a mobile app's FCM or APNs token (``token``, ``app_id``). ``channel`` says which."""

    __tablename__ = "push_subscriptions"
    __table_args__ = (
        CheckConstraint("channel IN ('webpush', 'fcm', 'apns')", name="channel"),
        CheckConstraint(
            "(channel = 'webpush' AND endpoint IS NOT NULL AND p256dh IS NOT NULL "
            "AND auth IS NOT NULL) OR (channel <> 'webpush' AND token IS NOT NULL)",
            name="address",
        ),
        Index("uq_push_subscriptions_channel_token", "channel", "token", unique=True),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    channel: Mapped[str] = mapped_column(
        String(16), nullable=False, default="webpush", server_default="webpush"
    )
    endpoint: Mapped[str | None] = mapped_column(Text, unique=True)
    p256dh: Mapped[str | None] = mapped_column(String(128))
    auth: Mapped[str | None] = mapped_column(String(64))
    token: Mapped[str | None] = mapped_column(Text)
    app_id: Mapped[str | None] = mapped_column(String(128))
    # The device's label (a browser's User-Agent, or what the app sent as ``label``).
    user_agent: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_failure_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    failure_count: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default="0"
    )


class ProcessedEvent(db.Model):
    """A task effect already applied: inserted in the same transaction as the effect itself."""

    __tablename__ = "processed_events"
    # Beat deletes old markers by age (webapp.platform.idempotency.prune).
    __table_args__ = (Index("ix_processed_events_created_at", "created_at"),)

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )


# Push and email levels, most to least: every message, only @mentions, nothing.
NOTIFY_LEVELS = ("all", "mentions", "none")
_LEVELS = ", ".join(f"'{level}'" for level in NOTIFY_LEVELS)
_LEVEL_CHECK = f"level IN ({_LEVELS})"
_EMAIL_LEVEL_CHECK = f"email_level IN ({_LEVELS})"


class NotificationSettings(db.Model):
    """A user's push and email defaults and do-not-disturb; no row means the defaults (push
    all, email mentions after EMAIL_DELAY, push when idle, no DND)."""

    __tablename__ = "notification_settings"
    __table_args__ = (
        CheckConstraint(_LEVEL_CHECK, name="level"),
        CheckConstraint(_EMAIL_LEVEL_CHECK, name="email_level"),
        CheckConstraint("email_delay >= 0", name="email_delay"),
        CheckConstraint("(quiet_start IS NULL) = (quiet_end IS NULL)", name="quiet_hours_complete"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    level: Mapped[str] = mapped_column(
        String(16), nullable=False, default="all", server_default="all"
    )
    # Quiet hours: minutes after local midnight in time_zone; start > end wraps midnight.
    quiet_start: Mapped[int | None] = mapped_column(SmallInteger)
    quiet_end: Mapped[int | None] = mapped_column(SmallInteger)
    time_zone: Mapped[str] = mapped_column(
        String(64), nullable=False, default="UTC", server_default="UTC"
    )
    snooze_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # During quiet hours or a snooze, still push messages that @mention the user.
    dnd_allow_mentions: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    # Push to this user's devices while every connection of theirs is idle (PUSH_WHEN_IDLE
    # can turn it off for everyone).
    push_when_idle: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=True, server_default=true()
    )
    email_level: Mapped[str] = mapped_column(
        String(16), nullable=False, default="mentions", server_default="mentions"
    )
    # Show this user's read markers to the other members (and see theirs).
    share_read_receipts: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=True, server_default=true()
    )
    # Seconds a missed message waits before it is emailed; None: EMAIL_DELAY.
    email_delay: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow, onupdate=utcnow
    )


class NotificationOverride(db.Model):
    """A user's push and/or email level for one channel or one topic (a topic's beats its
    channel's; None: not overridden here)."""

    __tablename__ = "notification_overrides"
    __table_args__ = (
        CheckConstraint(_LEVEL_CHECK, name="level"),
        CheckConstraint(_EMAIL_LEVEL_CHECK, name="email_level"),
        CheckConstraint("level IS NOT NULL OR email_level IS NOT NULL", name="some_level"),
        CheckConstraint("(channel_id IS NULL) <> (topic_id IS NULL)", name="one_scope"),
        UniqueConstraint(
            "user_id", "channel_id", name="uq_notification_overrides_user_id_channel_id"
        ),
        UniqueConstraint("user_id", "topic_id", name="uq_notification_overrides_user_id_topic_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    channel_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("channels.id", ondelete="CASCADE")
    )
    topic_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("topics.id", ondelete="CASCADE"))
    level: Mapped[str | None] = mapped_column(String(16))
    email_level: Mapped[str | None] = mapped_column(String(16))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow, onupdate=utcnow
    )


class PushRecord(db.Model):
    """One push that ended (delivered, expired or failed), for the user's history.

    No foreign key to the subscription: an expired one is deleted, its history stays.
    """

    __tablename__ = "push_history"
    __table_args__ = (
        Index("ix_push_history_user_id_id", "user_id", "id"),
        Index("ix_push_history_created_at", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    subscription_id: Mapped[uuid.UUID] = mapped_column(Uuid, nullable=False)
    channel: Mapped[str] = mapped_column(
        String(16), nullable=False, default="webpush", server_default="webpush"
    )
    push_service: Mapped[str] = mapped_column(String(255), nullable=False)
    topic_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("topics.id", ondelete="SET NULL"))
    message_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("messages.id", ondelete="SET NULL")
    )
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    # How many messages the push stood for (more than 1 when coalesced).
    message_count: Mapped[int] = mapped_column(
        Integer, nullable=False, default=1, server_default="1"
    )
    outcome: Mapped[str] = mapped_column(String(16), nullable=False)
    status_code: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )


API_KEY_SCOPES = ("admin", "publish")


class ApiKey(db.Model):
    """A service key of the integration API: only its SHA-256 is stored (the key itself has
    256 random bits, so a fast hash is enough); shown once, when it is created."""

    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint("scope IN ('admin', 'publish')", name="scope"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    scope: Mapped[str] = mapped_column(String(16), nullable=False)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    # The key's first characters, so that an operator can tell keys apart in a list.
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Webhook(db.Model):
    """An outgoing webhook: events POSTed to ``url``, signed with ``secret``."""

    __tablename__ = "webhooks"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    url: Mapped[str] = mapped_column(Text, nullable=False)
    # Space-separated event names.
    events: Mapped[str] = mapped_column(String(512), nullable=False)
    # The HMAC key: stored as is, since every delivery is signed with it.
    secret: Mapped[str] = mapped_column(String(128), nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )
    # Deliveries that failed in a row (each after all its retries); reset by a success.
    consecutive_failures: Mapped[int] = mapped_column(
        Integer, nullable=False, default=0, server_default="0"
    )
    last_success_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_failure_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(String(300))
    # Set once it failed WEBHOOK_DISABLE_AFTER deliveries in a row: nothing more is sent.
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PublishedMessage(db.Model):
    """An ``idempotency_key`` of ``POST /api/admin/messages`` and the message it created,
    inserted in the same transaction as the message (a retry finds it and gets the first
    result); ``request_hash`` tells a retry from a different request reusing the key."""

    __tablename__ = "published_messages"
    __table_args__ = (Index("ix_published_messages_created_at", "created_at"),)

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    message_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("messages.id", ondelete="CASCADE"), nullable=False
    )
    request_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )


class PendingEmail(db.Model):
    """A message a member missed (offline or idle when it came), waiting for their digest.

    Written by the ``email`` worker for each away member whose email level allows the message
    (at most once: the primary key); the digest takes every row of the user once the oldest
    one's ``due_at`` passed, and drops the messages read meanwhile.
    """

    __tablename__ = "pending_emails"
    __table_args__ = (Index("ix_pending_emails_due_at", "due_at"),)

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    message_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True
    )
    topic_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("topics.id", ondelete="CASCADE"), nullable=False
    )
    mentioned: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )
    due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    # Set when the sweep enqueued the user's digest (not picked again unless it is stale).
    scheduled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


EMAIL_DIGEST_STATES = ("sending", "sent", "bounced", "failed", "dropped")


class EmailDigest(db.Model):
    """One digest email: built (its pending rows deleted in the same transaction), then sent.

    ``sending`` until the SMTP server accepted it; a retry or a redelivered task sends the
    same digest again (same Message-ID), never a second one. ``lease_until`` keeps two
    workers from sending it at once.
    """

    __tablename__ = "email_digests"
    __table_args__ = (
        CheckConstraint(
            "state IN ({})".format(", ".join(f"'{s}'" for s in EMAIL_DIGEST_STATES)),
            name="state",
        ),
        Index("ix_email_digests_user_id_created_at", "user_id", "created_at"),
        # The sweep looks for digests left sending; beat prunes old ones.
        Index("ix_email_digests_state_created_at", "state", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False
    )
    # Space-separated message ids, oldest first.
    message_ids: Mapped[str] = mapped_column(Text, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="sending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status_code: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), nullable=False, default=utcnow
    )
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
