"""Unread counters: bulk increments applied exactly once, mark as read and mark as unread."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any, NamedTuple

from sqlalchemy import String, case, cast, exists, func, literal, or_, select, update

from webapp import realtime
from webapp.errors import NotFound
from webapp.extensions import db
from webapp.messaging import receipts
from webapp.messaging.topics import member_topic
from webapp.models import Message, ProcessedEvent, Topic, TopicMember, User, isoformat, utcnow
from webapp.platform import context, events, queue
from webapp.platform.idempotency import claim


class Count(NamedTuple):
    """A member's unread count after a change, with the membership's version."""

    user_id: str
    unread_count: int
    version: int


def apply_increment(message_id: int, exclude_user_ids: list[str]) -> tuple[bool, list[Count]]:
    """+1 for every member of the message's topic except ``exclude_user_ids``, exactly once.

    One UPDATE for all members, in the same transaction as the processed-event marker, so a
    retried or redelivered task changes nothing. Members who already read past the message
    (a mark-as-read overtook the task) are not counted, but their row is written too (a step
    of 0): the row lock then orders this task with ``mark_as_unread``, which counts a message
    only once its marker is committed. Returns (applied, the counted members' counts); a
    repeat returns every member's current count so that it can be re-announced.
    """
    applied, counts, _ = _apply_increment(message_id, exclude_user_ids)
    return applied, counts


INCREMENT_PREFIX = "unread:"


def increment_marker(message_id: int) -> str:
    """The processed-event key written with a message's increment."""
    return f"{INCREMENT_PREFIX}{message_id}"


def _apply_increment(
    message_id: int, exclude_user_ids: list[str]
) -> tuple[bool, list[Count], tuple[uuid.UUID, uuid.UUID] | None]:
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
        counted = or_(
            TopicMember.last_read_message_id.is_(None),
            TopicMember.last_read_message_id < message_id,
        )
        step = case((counted, 1), else_=0)
        stmt = (
            update(TopicMember)
            .where(*targets)
            .values(
                unread_count=TopicMember.unread_count + step, version=TopicMember.version + step
            )
            .returning(
                TopicMember.user_id,
                TopicMember.unread_count,
                TopicMember.version,
                TopicMember.last_read_message_id,
            )
            .execution_options(synchronize_session=False)
        )
        # The marker is not changed here, so it tells which rows took the step (SQLite's
        # RETURNING gives NULL for the OR expression itself).
        rows = [
            row[:3]
            for row in db.session.execute(stmt).all()
            if row[3] is None or row[3] < message_id
        ]
        applied = True
    else:
        rows = db.session.execute(
            select(TopicMember.user_id, TopicMember.unread_count, TopicMember.version).where(
                *targets
            )
        ).all()
        applied = False
    db.session.commit()
    counts = [Count(str(user_id), count, version) for user_id, count, version in rows]
    return applied, counts, (topic_id, room_id)


def announce_counts(topic_id: uuid.UUID, room_id: uuid.UUID, counts: list[Count]) -> None:
    """Send each user's new count to all of their devices."""
    realtime.emit_each(
        context.settings().redis_url,
        "unread_update",
        [
            (
                {
                    "topic_id": str(topic_id),
                    "room_id": str(room_id),
                    "unread_count": count.unread_count,
                    "version": count.version,
                },
                realtime.user_room(count.user_id),
            )
            for count in counts
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
    result = _move_marker(user, topic, member, marker, after_marker, read_ids)
    settings = context.settings()
    if result["unread_count"] < was_unread and any(c != "webpush" for c in settings.push_channels):
        queue.topic_read(str(user.id), str(topic.id))
    return result


def mark_as_unread(
    user: User, topic_id: uuid.UUID, room_id: uuid.UUID | None, message_id: int
) -> dict[str, Any]:
    """Move the caller's read marker to just before ``message_id`` (either way) and set the
    count to the topic's messages from it on that others sent, in one atomic step.

    Like ``mark_as_read``, the membership row is locked first and one UPDATE moves the marker
    and recounts. The recount takes only messages whose increment has committed (its
    processed-event marker exists, or the message is older than any increment can be): an
    increment still to come waits for the row lock, then counts its message against the new
    marker itself, so nothing is counted twice; one that committed is in the recount, whatever
    it did to the old count. (Every increment writes each member's row, see
    ``apply_increment``, so none can slip between the lock and the recount.)
    """
    topic, member = member_topic(user.id, topic_id, room_id)
    found = db.session.execute(
        select(Message.id).where(Message.id == message_id, Message.topic_id == topic.id)
    ).first()
    if found is None:
        raise NotFound("message_not_found", "no such message in this topic")
    db.session.execute(
        select(TopicMember.id).where(TopicMember.id == member.id).with_for_update()
    ).one()
    settled = utcnow() - timedelta(seconds=context.settings().processed_events_minimum)
    marker_key = literal(INCREMENT_PREFIX, String) + cast(Message.id, String)
    counted = (
        select(func.count())
        .select_from(Message)
        .where(
            Message.topic_id == topic.id,
            Message.id >= message_id,
            Message.sender_id != user.id,
            or_(
                Message.created_at < settled,
                exists().where(ProcessedEvent.key == marker_key),
            ),
        )
        .scalar_subquery()
    )
    return _move_marker(user, topic, member, message_id - 1, counted, [])


def _move_marker(
    user: User,
    topic: Topic,
    member: TopicMember,
    marker: Any,
    unread: Any,
    read_ids: list[int],
) -> dict[str, Any]:
    """Set the (locked) membership's marker and count in one UPDATE, commit, and announce:
    ``unread_update`` and ``messages_read`` (``receipts.announce``), ``message.read``."""
    last_read, unread_count, read_at, version = db.session.execute(
        update(TopicMember)
        .where(TopicMember.id == member.id)
        .values(
            last_read_message_id=marker,
            unread_count=unread,
            last_read_at=utcnow(),
            version=TopicMember.version + 1,
        )
        .returning(
            TopicMember.last_read_message_id,
            TopicMember.unread_count,
            TopicMember.last_read_at,
            TopicMember.version,
        )
        .execution_options(synchronize_session=False)
    ).one()
    db.session.commit()

    result = {
        "topic_id": str(topic.id),
        "room_id": str(topic.channel_id),
        "user_id": str(user.id),
        "message_ids": read_ids,
        "unread_count": unread_count,
        "last_read_message_id": last_read,
        "read_at": isoformat(read_at),
        "version": version,
    }
    receipts.announce(topic, user, result)
    announce_counts(topic.id, topic.channel_id, [Count(str(user.id), unread_count, version)])
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
