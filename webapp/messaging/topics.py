"""Topic membership: the gate every topic-scoped action passes through."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from webapp.errors import Forbidden, InvalidInput, NotFound
from webapp.extensions import db
from webapp.models import Channel, Topic, TopicMember, User


def member_topic(
    user_id: uuid.UUID, topic_id: uuid.UUID, room_id: uuid.UUID | None = None
) -> tuple[Topic, TopicMember]:
    """The topic and the caller's membership, or a refusal.

    ``room_id`` (the channel), when the client sends it, must be the topic's channel.
    """
    topic = db.session.get(Topic, topic_id)
    if topic is None:
        raise NotFound("topic_not_found", "no such topic")
    if room_id is not None and topic.channel_id != room_id:
        raise InvalidInput("room_mismatch", "the topic does not belong to that room")
    member = db.session.execute(
        select(TopicMember).where(TopicMember.topic_id == topic_id, TopicMember.user_id == user_id)
    ).scalar_one_or_none()
    if member is None:
        raise Forbidden("not_a_member", "you are not a member of this topic")
    return topic, member


def is_member(user_id: uuid.UUID, topic_id: uuid.UUID) -> bool:
    return (
        db.session.execute(
            select(TopicMember.id).where(
                TopicMember.topic_id == topic_id, TopicMember.user_id == user_id
            )
        ).first()
        is not None
    )


def member_ids(topic_id: uuid.UUID) -> list[uuid.UUID]:
    return list(
        db.session.execute(
            select(TopicMember.user_id).where(TopicMember.topic_id == topic_id)
        ).scalars()
    )


def topic_rows_query(user_id: uuid.UUID, topic_id: uuid.UUID | None = None) -> Any:
    query = (
        select(Topic, Channel, TopicMember)
        .join(Channel, Channel.id == Topic.channel_id)
        .join(TopicMember, TopicMember.topic_id == Topic.id)
        .where(TopicMember.user_id == user_id)
    )
    if topic_id is not None:
        query = query.where(Topic.id == topic_id)
    return query


def topics_of(user_id: uuid.UUID) -> list[dict[str, Any]]:
    """The caller's topics with their unread counts, busiest first."""
    query = topic_rows_query(user_id).order_by(
        TopicMember.unread_count.desc(), Channel.name, Topic.name
    )
    return [topic_row_payload(*row) for row in db.session.execute(query).all()]


def topic_row(user_id: uuid.UUID, topic_id: uuid.UUID) -> dict[str, Any] | None:
    """One topic as ``topics_of`` lists it, or None when the user is not a member."""
    row = db.session.execute(topic_rows_query(user_id, topic_id)).first()
    return None if row is None else topic_row_payload(*row)


def topic_row_payload(topic: Topic, channel: Channel, member: TopicMember) -> dict[str, Any]:
    return {
        "topic_id": str(topic.id),
        "topic_name": topic.name,
        "room_id": str(channel.id),
        "room_name": channel.name,
        "unread_count": member.unread_count,
        "last_read_message_id": member.last_read_message_id,
        "version": member.version,
    }


def create_topic(channel_name: str, topic_name: str, usernames: list[str]) -> tuple[Channel, Topic]:
    """Get or create the channel and topic, and make the named users members (idempotent)."""
    users = []
    for username in usernames:
        user = db.session.execute(
            select(User).where(User.username == username)
        ).scalar_one_or_none()
        if user is None:
            raise NotFound("user_not_found", f"no user named {username!r}")
        users.append(user)
    # Rooms of the integration API (with an external id) are the product's, not the CLI's.
    channel = db.session.execute(
        select(Channel)
        .where(Channel.name == channel_name, Channel.external_id.is_(None))
        .order_by(Channel.created_at)
        .limit(1)
    ).scalar_one_or_none()
    if channel is None:
        channel = Channel(name=channel_name)
        db.session.add(channel)
        db.session.flush()
    topic = db.session.execute(
        select(Topic).where(Topic.channel_id == channel.id, Topic.name == topic_name)
    ).scalar_one_or_none()
    if topic is None:
        topic = Topic(channel_id=channel.id, name=topic_name)
        db.session.add(topic)
        db.session.flush()
    existing = set(member_ids(topic.id))
    for user in users:
        if user.id not in existing:
            db.session.add(TopicMember(topic_id=topic.id, user_id=user.id))
            existing.add(user.id)
    db.session.commit()
    return channel, topic
