"""Unread counters: bulk increments applied exactly once, and mark-as-read."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import case, func, or_, select, update

from webapp import realtime
from webapp.extensions import db
from webapp.messaging.topics import member_topic
from webapp.models import Message, Topic, TopicMember, User
from webapp.platform import context, events, queue
from webapp.platform.idempotency import claim


def apply_increment(
    message_id: int, exclude_user_ids: list[str]
) -> tuple[bool, list[tuple[str, int]]]:
    """+1 for every member of the message's topic except ``exclude_user_ids``, exactly once.

    One UPDATE for all members, in the same transaction as the processed-event marker, so a
    retried or redelivered task changes nothing. Members who already read past the message
    (a mark-as-read overtook the task) are not counted. Returns (applied, [(user_id, count)]);
    a repeat returns the current counts so that their update can be re-announced.
    """
    applied, counts, _ = _apply_increment(message_id, exclude_user_ids)
    return applied, counts


def increment_marker(message_id: int) -> str:
    """The processed-event key written with a message's increment."""
    return f"unread:{message_id}"


def _apply_increment(
    message_id: int, exclude_user_ids: list[str]
) -> tuple[bool, list[tuple[str, int]], tuple[uuid.UUID, uuid.UUID] | None]:
    """``apply_increment`` plus the message's (topic, room), read in the same first query so
    that announcing needs no more (None: no such message)."""
    where = db.session.execute(
        select(Message.topic_id, Topic.channel_id)
        .join(Topic, Topic.id == Message.topic_id)
        .where(Message.id == message_id)
    ).first()
    if where is None:
        return False, [], None
    topic_id, room_id = where
    excluded = [uuid.UUID(u) for u in exclude_user_ids]
    targets = [
        TopicMember.topic_id == topic_id,
        TopicMember.user_id.not_in(excluded),
    ]
    if claim(increment_marker(message_id)):
        stmt = (
            update(TopicMember)
            .where(
                *targets,
                or_(
                    TopicMember.last_read_message_id.is_(None),
                    TopicMember.last_read_message_id < message_id,
                ),
            )
            .values(unread_count=TopicMember.unread_count + 1)
            .returning(TopicMember.user_id, TopicMember.unread_count)
            .execution_options(synchronize_session=False)
        )
        rows = db.session.execute(stmt).all()
        applied = True
    else:
        rows = db.session.execute(
            select(TopicMember.user_id, TopicMember.unread_count).where(*targets)
        ).all()
        applied = False
    db.session.commit()
    return applied, [(str(user_id), count) for user_id, count in rows], (topic_id, room_id)


def announce_counts(topic_id: uuid.UUID, room_id: uuid.UUID, counts: list[tuple[str, int]]) -> None:
    """Send each user's new count to all of their devices."""
    realtime.emit_each(
        context.settings().redis_url,
        "unread_update",
        [
            (
                {"topic_id": str(topic_id), "room_id": str(room_id), "unread_count": count},
                realtime.user_room(user_id),
            )
            for user_id, count in counts
        ],
    )


def increment_for_message(message_id: int, exclude_user_ids: list[str]) -> int:
    """The unread task's whole job: apply once, then announce. Returns members counted."""
    applied, counts, where = _apply_increment(message_id, exclude_user_ids)
    if counts and where is not None:
        announce_counts(*where, counts)
    return len(counts) if applied else 0


def mark_as_read(
    user: User, topic_id: uuid.UUID, room_id: uuid.UUID | None, requested: list[int]
) -> dict[str, Any]:
    """Reset the caller's count for a topic and tell the room and the caller's devices.

    The marker and the count move together, and no concurrent increment is lost. First the
    membership row is locked (``FOR UPDATE``; the increment's UPDATE takes the same row lock),
    then ONE UPDATE sets ``last_read_message_id`` to the newest message *that statement sees*
    (forward only) and ``unread_count`` to the messages after it that the caller did not send
    (0 unless the marker could not move). Under READ COMMITTED the UPDATE's snapshot is taken
    after the lock is held, so every increment already applied to the row is for a message that
    committed before it, hence is seen, and is at or before the new marker. An increment still
    to come waits for the lock, then re-checks ``last_read_message_id < message`` against the new
    row: it counts its message exactly when it is after the marker, even one that committed out
    of id order. So once everything settles, the count is the messages after the marker not
    sent by the member. On SQLite the single UPDATE is atomic under its one writer.
    """
    topic, member = member_topic(user.id, topic_id, room_id)

    read_ids: list[int] = []
    if requested:
        read_ids = list(
            db.session.execute(
                select(Message.id).where(Message.topic_id == topic.id, Message.id.in_(requested))
            ).scalars()
        )
    was_unread = db.session.execute(
        select(TopicMember.unread_count).where(TopicMember.id == member.id).with_for_update()
    ).scalar_one()
    newest = select(func.max(Message.id)).where(Message.topic_id == topic.id).scalar_subquery()
    # Never move the read marker backwards when two devices mark at once.
    marker = case(
        (
            or_(
                TopicMember.last_read_message_id.is_(None),
                TopicMember.last_read_message_id < newest,
            ),
            newest,
        ),
        else_=TopicMember.last_read_message_id,
    )
    after_marker = (
        select(func.count())
        .select_from(Message)
        .where(
            Message.topic_id == topic.id,
            Message.id > func.coalesce(marker, 0),
            Message.sender_id != user.id,
        )
        .scalar_subquery()
    )
    last_read, unread_count = db.session.execute(
        update(TopicMember)
        .where(TopicMember.id == member.id)
        .values(last_read_message_id=marker, unread_count=after_marker)
        .returning(TopicMember.last_read_message_id, TopicMember.unread_count)
        .execution_options(synchronize_session=False)
    ).one()
    db.session.commit()

    settings = context.settings()
    redis_url = settings.redis_url
    result = {
        "topic_id": str(topic.id),
        "room_id": str(topic.channel_id),
        "user_id": str(user.id),
        "message_ids": read_ids,
        "unread_count": unread_count,
        "last_read_message_id": last_read,
    }
    realtime.emit(
        redis_url,
        "messages_read",
        result,
        to=[realtime.topic_room(topic.id), realtime.user_room(user.id)],
    )
    announce_counts(topic.id, topic.channel_id, [(str(user.id), unread_count)])
    if unread_count < was_unread and any(c != "webpush" for c in settings.push_channels):
        queue.topic_read(str(user.id), str(topic.id))
    events.publish(
        "message.read",
        {
            "user_id": result["user_id"],
            "user_external_id": user.external_id,
            "topic_id": result["topic_id"],
            "topic_external_id": topic.external_id,
            "room_id": result["room_id"],
            "last_read_message_id": last_read,
        },
    )
    return result
