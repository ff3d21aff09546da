"""Missed-message email: messages held for a member who was away, sent as one digest.

The fan-out holds a message for each away member whose email level allows it (``hold``,
in the fan-out marker's transaction). Beat's sweep finds the users whose oldest held message
is due (``EMAIL_DELAY`` or their ``email_delay`` after it came) and enqueues their digests.
A digest takes every message the user still holds, drops the ones read meanwhile, and is sent
through the email channel.

Exactly once: taking the held rows (one DELETE ... RETURNING) and writing the digest row
happen in one transaction, so two workers never build a digest from the same message. The
digest stays ``sending`` until the SMTP server accepted it; a retry or a redelivered task (the
worker died mid-send) sends that same digest (same Message-ID) under a lease that keeps two
workers from sending it at once. Only a death between the server's "250 OK" and the commit
that follows can repeat it. A task's digests (up to 20 users) go over one SMTP connection,
each built, leased, sent and booked in turn.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parseaddr

from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import aliased

from webapp import metrics
from webapp.delivery import channels, rules, unsubscribe
from webapp.delivery.channels.base import Item, Notification, Outcome
from webapp.delivery.channels.email import EmailChannel
from webapp.delivery.channels.email.render import (
    DigestMessage,
    DigestTopic,
    DigestView,
    render_digest,
)
from webapp.extensions import db
from webapp.messaging.mentions import mentioned_usernames
from webapp.models import (
    Channel,
    EmailDigest,
    Message,
    NotificationOverride,
    NotificationSettings,
    PendingEmail,
    Topic,
    TopicMember,
    User,
    utcnow,
)
from webapp.platform import context
from webapp.platform.dialect import insert
from webapp.redis_client import get_redis

log = logging.getLogger(__name__)

# A digest shows at most this many messages (the newest), with "and N more".
MAX_SHOWN = 50
# Users whose digest the sweep enqueued are picked again after this long if still held (their
# task was lost): harmless if it was only slow, the second finds nothing to take.
RESCHEDULE_AFTER = timedelta(minutes=10)
SWEEP_LIMIT = 10_000
# A send lease lasts this many SMTP_TIMEOUTs and 2 s: each step of a send (connect, TLS,
# login, MAIL, RCPT, DATA) waits at most SMTP_TIMEOUT, and a slow server rarely makes more
# than three of them slow at once.
LEASE_TIMEOUTS = 3
_ROWS_PER_INSERT = 500


@dataclass(frozen=True)
class Missed:
    """A message to hold for a member's digest; ``delay`` in seconds (None: EMAIL_DELAY)."""

    user_id: uuid.UUID
    message_id: int
    topic_id: uuid.UUID
    mentioned: bool
    delay: int | None


def hold(missed: list[Missed]) -> None:
    """Hold messages for digests, in the caller's transaction (a repeat holds nothing more)."""
    if not missed:
        return
    now = utcnow()
    default = context.settings().email_delay
    rows = [
        {
            "user_id": m.user_id,
            "message_id": m.message_id,
            "topic_id": m.topic_id,
            "mentioned": m.mentioned,
            "due_at": now + timedelta(seconds=default if m.delay is None else m.delay),
        }
        for m in missed
    ]
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        db.session.execute(
            insert(PendingEmail)
            .values(rows[start : start + _ROWS_PER_INSERT])
            .on_conflict_do_nothing(index_elements=["user_id", "message_id"])
        )


def due_users(limit: int = SWEEP_LIMIT) -> list[str]:
    """The users whose oldest held message is due, marked as scheduled; also the users with
    a digest left ``sending`` and no lease (its task was lost)."""
    now = utcnow()
    due = list(
        db.session.execute(
            select(PendingEmail.user_id)
            .where(
                PendingEmail.due_at <= now,
                or_(
                    PendingEmail.scheduled_at.is_(None),
                    PendingEmail.scheduled_at < now - RESCHEDULE_AFTER,
                ),
            )
            .distinct()
            .limit(limit)
        ).scalars()
    )
    for start in range(0, len(due), _ROWS_PER_INSERT):
        db.session.execute(
            update(PendingEmail)
            .where(PendingEmail.user_id.in_(due[start : start + _ROWS_PER_INSERT]))
            .values(scheduled_at=now)
            .execution_options(synchronize_session=False)
        )
    stranded = db.session.execute(
        select(EmailDigest.user_id)
        .where(
            EmailDigest.state == "sending",
            EmailDigest.created_at < now - RESCHEDULE_AFTER,
            or_(EmailDigest.lease_until.is_(None), EmailDigest.lease_until < now),
        )
        .distinct()
        .limit(limit)
    ).scalars()
    db.session.commit()
    return sorted({str(u) for u in due} | {str(u) for u in stranded})


@dataclass
class Later:
    """Users whose digest must be tried again: after a backoff (``retry``, with the longest
    ``retry_after`` the server asked), or when another worker's lease ends (``busy``)."""

    retry: list[str] = field(default_factory=list)
    retry_after: float | None = None
    busy: list[str] = field(default_factory=list)
    busy_for: float = 0.0


def deliver_all(user_ids: list[str], *, final: bool) -> Later:
    """Build (or resume) each user's digest and send it, all over one SMTP connection, each
    outcome booked as soon as the server gave it (a worker that dies mid-task resends nothing
    that was accepted before); ``final``: no retry after this one."""
    later = Later()
    channel = channels.get("email")
    assert isinstance(channel, EmailChannel)
    with channel.session() as smtp:
        for user_id in user_ids:
            prepared = _prepare(uuid.UUID(user_id))
            if isinstance(prepared, float):
                later.busy.append(user_id)
                later.busy_for = max(later.busy_for, prepared)
                continue
            if prepared is None:
                continue
            digest_id, uid, item = prepared
            outcome = smtp.send(item)
            _book(digest_id, uid, outcome, final=final)
            if outcome.kind == "retry" and not final:
                later.retry.append(user_id)
                if outcome.retry_after is not None:
                    later.retry_after = max(later.retry_after or 0.0, outcome.retry_after)
    return later


def _prepare(user_id: uuid.UUID) -> tuple[uuid.UUID, uuid.UUID, Item] | float | None:
    """The user's digest, leased and rendered: (digest, user, item); seconds until another
    worker's lease on it ends; or None when there is nothing to send (or it waits for
    do-not-disturb to end)."""
    digest = _resumable(user_id)
    if digest is not None:
        lease = _lease(digest)
        if lease is not None:
            return lease
    else:
        digest = _build(user_id)  # leased as it is written
        if digest is None:
            return None
    user = db.session.get(User, user_id)
    view = _view(digest, user) if user is not None else None
    if user is None or view is None or not _mailable(user):
        _finish(digest.id, "dropped", reason="nothing left to send (read, or no address)")
        db.session.commit()
        _count("dropped")
        return None
    payload = render_digest(view)
    payload["headers"] = {
        "Message-ID": _message_id(digest.id),
        "List-Unsubscribe": f"<{view.unsubscribe_url}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    return (
        digest.id,
        user_id,
        Item(user.email, Notification(payload, "normal", f"digest:{digest.id}")),
    )


def _resumable(user_id: uuid.UUID) -> EmailDigest | None:
    """A digest of the user that a worker left ``sending`` (it died, or it is retrying)."""
    return db.session.execute(
        select(EmailDigest)
        .where(EmailDigest.user_id == user_id, EmailDigest.state == "sending")
        .order_by(EmailDigest.created_at)
        .limit(1)
    ).scalar_one_or_none()


def _build(user_id: uuid.UUID) -> EmailDigest | None:
    """Take every message the user holds into a new digest (None: nothing to send now)."""
    now = utcnow()
    settings = db.session.get(NotificationSettings, user_id)
    held_until = _dnd_end(settings, now)
    if held_until is not None:
        db.session.execute(
            update(PendingEmail)
            .where(PendingEmail.user_id == user_id)
            .values(due_at=held_until, scheduled_at=None)
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
        log.info("digest of user %s held by do-not-disturb until %s", user_id, held_until)
        return None
    taken = db.session.execute(
        delete(PendingEmail)
        .where(PendingEmail.user_id == user_id)
        .returning(PendingEmail.message_id)
    ).scalars()
    keep = _still_wanted(user_id, list(taken), settings.email_level if settings else None)
    if not keep:
        db.session.commit()
        return None
    digest = EmailDigest(
        user_id=user_id,
        message_ids=" ".join(map(str, sorted(keep))),
        lease_until=now + _lease_length(),
        attempts=1,
    )
    db.session.add(digest)
    db.session.commit()
    log.info("digest %s of user %s: %d messages", digest.id, user_id, len(keep))
    return digest


def _dnd_end(settings: NotificationSettings | None, now: datetime) -> datetime | None:
    if settings is None:
        return None
    return rules.Rules(
        quiet_start=settings.quiet_start,
        quiet_end=settings.quiet_end,
        time_zone=settings.time_zone,
        snooze_until=settings.snooze_until,
    ).dnd_ends(now)


_FOR_TOPIC = aliased(NotificationOverride)
_FOR_ROOM = aliased(NotificationOverride)


def _still_wanted(user_id: uuid.UUID, taken: list[int], user_level: str | None) -> list[int]:
    """The taken messages still unread, in topics the user is still in, whose email level
    (the topic's, else the room's, else the user's) is not ``none`` now: one query."""
    if not taken:
        return []
    rows = db.session.execute(
        select(Message.id, _FOR_TOPIC.email_level, _FOR_ROOM.email_level)
        .join(
            TopicMember,
            (TopicMember.topic_id == Message.topic_id) & (TopicMember.user_id == user_id),
        )
        .join(Topic, Topic.id == Message.topic_id)
        .outerjoin(
            _FOR_TOPIC,
            (_FOR_TOPIC.user_id == user_id) & (_FOR_TOPIC.topic_id == Message.topic_id),
        )
        .outerjoin(
            _FOR_ROOM,
            (_FOR_ROOM.user_id == user_id) & (_FOR_ROOM.channel_id == Topic.channel_id),
        )
        .where(
            Message.id.in_(taken),
            or_(
                TopicMember.last_read_message_id.is_(None),
                TopicMember.last_read_message_id < Message.id,
            ),
        )
    ).all()
    default = user_level or rules.DEFAULT.email_level
    return [
        message_id
        for message_id, topic_level, room_level in rows
        if (topic_level or room_level or default) != "none"
    ]


def _lease(digest: EmailDigest) -> float | None:
    """Take the digest's send lease; seconds until another worker's lease ends if held."""
    now = utcnow()
    until = now + _lease_length()
    taken = db.session.execute(
        update(EmailDigest)
        .where(
            EmailDigest.id == digest.id,
            EmailDigest.state == "sending",
            or_(EmailDigest.lease_until.is_(None), EmailDigest.lease_until < now),
        )
        .values(lease_until=until, attempts=EmailDigest.attempts + 1)
        .execution_options(synchronize_session=False)
    ).rowcount
    db.session.commit()
    if taken:
        return None
    db.session.refresh(digest)
    if digest.state != "sending" or digest.lease_until is None:
        return 0.0
    held = digest.lease_until
    if held.tzinfo is None:
        held = held.replace(tzinfo=now.tzinfo)
    return max(0.5, (held - now).total_seconds())


def _lease_length() -> timedelta:
    return timedelta(seconds=LEASE_TIMEOUTS * context.settings().smtp_timeout + 2)


def _mailable(user: User) -> bool:
    return bool(user.email and user.deleted_at is None and user.email_failing_at is None)


def _view(digest: EmailDigest, user: User) -> DigestView | None:
    """What the digest shows: its messages still unread now, grouped by topic, newest last."""
    ids = [int(i) for i in digest.message_ids.split()]
    sender = aliased(User)
    rows = db.session.execute(
        select(Message, Topic, Channel.name, sender, TopicMember.last_read_message_id)
        .join(Topic, Topic.id == Message.topic_id)
        .join(Channel, Channel.id == Topic.channel_id)
        .join(sender, sender.id == Message.sender_id)
        .join(
            TopicMember,
            (TopicMember.topic_id == Message.topic_id) & (TopicMember.user_id == user.id),
        )
        .where(Message.id.in_(ids))
        .order_by(Message.id)
    ).all()
    rows = [r for r in rows if (r.last_read_message_id or 0) < r.Message.id]
    if not rows:
        return None
    shown = rows[-MAX_SHOWN:]
    hidden: dict[uuid.UUID, int] = {}
    for row in rows[: len(rows) - len(shown)]:
        hidden[row.Topic.id] = hidden.get(row.Topic.id, 0) + 1
    username = (user.username or "").lower()
    topics: dict[uuid.UUID, DigestTopic] = {}
    for row in shown:
        topic = row.Topic
        section = topics.get(topic.id)
        if section is None:
            section = topics[topic.id] = DigestTopic(
                room_name=row.name,
                topic_name=topic.name,
                url=_topic_url(topic),
                messages=[],
                more=hidden.get(topic.id, 0),
            )
        section.messages.append(
            DigestMessage(
                sender_name=row[3].name,
                body=row.Message.body,
                created_at=row.Message.created_at,
                mentioned=username in mentioned_usernames(row.Message.body),
            )
        )
    settings = context.settings()
    return DigestView(
        recipient_name=user.name,
        topics=list(topics.values()),
        total=len(rows),
        shown=len(shown),
        unsubscribe_url=unsubscribe.unsubscribe_url(user.id),
        preferences_url=settings.email_preferences_url or f"{settings.app_base_url}/",
    )


def _topic_url(topic: Topic) -> str:
    settings = context.settings()
    template = settings.email_topic_url or f"{settings.app_base_url}/?topic={{topic_id}}"
    return template.format(
        topic_id=topic.id,
        room_id=topic.channel_id,
        topic_external_id=topic.external_id or "",
    )


def _message_id(digest_id: uuid.UUID) -> str:
    domain = parseaddr(context.settings().email_from or "")[1].rpartition("@")[2] or "beacon"
    return f"<digest-{digest_id}@{domain}>"


def _book(digest_id: uuid.UUID, user_id: uuid.UUID, outcome: Outcome, *, final: bool) -> None:
    """Write how the send ended; a bounce counts toward the address's failing mark."""
    again = outcome.kind == "retry" and not final
    _count("retry" if again else _OUTCOMES.get(outcome.kind, "failed"))
    if outcome.kind == "delivered":
        _finish(digest_id, "sent", status=outcome.status)
        db.session.execute(
            update(User).where(User.id == user_id, User.email_bounces != 0).values(email_bounces=0)
        )
    elif outcome.kind == "expired":
        limit = context.settings().email_bounce_limit
        _finish(digest_id, "bounced", status=outcome.status, reason=outcome.reason)
        bounces = db.session.execute(
            update(User)
            .where(User.id == user_id)
            .values(email_bounces=User.email_bounces + 1)
            .returning(User.email_bounces)
        ).scalar_one()
        if bounces >= limit:
            db.session.execute(
                update(User)
                .where(User.id == user_id, User.email_failing_at.is_(None))
                .values(email_failing_at=utcnow())
            )
            log.warning("email address of user %s refused %d times: failing", user_id, bounces)
    elif outcome.kind == "rejected" or final:
        _finish(digest_id, "failed", status=outcome.status, reason=outcome.reason)
    else:
        db.session.execute(
            update(EmailDigest)
            .where(EmailDigest.id == digest_id)
            .values(lease_until=None, status_code=outcome.status, reason=outcome.reason[:300])
        )
    db.session.commit()
    log.info("digest %s of user %s: %s %s", digest_id, user_id, outcome.kind, outcome.reason)


# The metric's name for a channel outcome (a retry with none left is "failed").
_OUTCOMES = {"delivered": "sent", "expired": "bounced", "rejected": "failed"}


def _count(outcome: str) -> None:
    metrics.record_email(get_redis(context.settings().redis_url), outcome)


def prune() -> int:
    """Delete the digests older than PUSH_HISTORY_DAYS that are done; how many."""
    cutoff = utcnow() - timedelta(days=context.settings().push_history_days)
    deleted = db.session.execute(
        delete(EmailDigest).where(EmailDigest.created_at < cutoff, EmailDigest.state != "sending")
    ).rowcount
    db.session.commit()
    return deleted


def _finish(
    digest_id: uuid.UUID, state: str, *, status: int | None = None, reason: str = ""
) -> None:
    db.session.execute(
        update(EmailDigest)
        .where(EmailDigest.id == digest_id)
        .values(
            state=state,
            lease_until=None,
            status_code=status,
            reason=reason[:300] or None,
            sent_at=utcnow() if state == "sent" else None,
        )
    )
