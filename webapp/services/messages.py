"""Posting and reading messages."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from webapp import metrics, realtime
from webapp.extensions import db
from webapp.models import Message, Topic, User, isoformat
from webapp.services import context, dispatch, rate_limit
from webapp.services.topics import member_topic
from webapp.services.validation import (
    parse_message_body,
    parse_uuid,
    require_object,
)

PREVIEW_LENGTH = 100


def preview(body: str, limit: int = PREVIEW_LENGTH) -> str:
    """One line of at most ``limit`` characters, ending in an ellipsis when cut."""
    flat = " ".join(body.split())
    if len(flat) <= limit:
        return flat
    return flat[: limit - 1].rstrip() + "\u2026"


def message_payload(message: Message, topic: Topic, sender: User) -> dict[str, Any]:
    return {
        "id": message.id,
        "message_id": message.id,
        "topic_id": str(topic.id),
        "room_id": str(topic.channel_id),
        "topic_name": topic.name,
        "sender": {"id": str(sender.id), "username": sender.username, "name": sender.name},
        "body": message.body,
        "created_at": isoformat(message.created_at),
    }


def alert_payload(message: Message, topic: Topic, sender: User) -> dict[str, Any]:
    return {
        "message_id": message.id,
        "topic_id": str(topic.id),
        "room_id": str(topic.channel_id),
        "topic_name": topic.name,
        "sender": {"id": str(sender.id), "name": sender.name},
        "preview": preview(message.body),
        "created_at": isoformat(message.created_at),
    }


def post_message(user: User, payload: Any) -> dict[str, Any]:
    """Validate, persist, announce, and hand the unread/push work to the workers."""
    settings = context.settings()
    data = require_object(payload, allowed={"room_id", "topic_id", "message"})
    topic_id = parse_uuid(data.get("topic_id"), "topic_id")
    room_id = parse_uuid(data.get("room_id"), "room_id", required=False)
    body = parse_message_body(data.get("message"), settings.max_message_length)
    topic, _member = member_topic(user.id, topic_id, room_id)
    rate_limit.check("send_message", user.id, settings.rate_limit_send_message)
    # Who is looking at the topic is decided at send time, so a retried task counts exactly
    # the same members. Reading it before the commit also means that while Redis (presence
    # and broker) is down nothing is stored: the client is told ``unavailable`` and retries.
    exclude = context.presence().active_users(str(topic.id)) | {str(user.id)}

    message = Message(topic_id=topic.id, sender_id=user.id, body=body)
    db.session.add(message)
    db.session.commit()
    metrics.MESSAGES.inc()

    full = message_payload(message, topic, user)
    realtime.emit(settings.redis_url, "new_message", full, to=realtime.topic_room(topic.id))
    realtime.emit(settings.redis_url, "global_message_alert", alert_payload(message, topic, user))
    # The message is stored: the ack says so even if the hand-off fails now (beat's
    # reconciliation enqueues the work of messages whose tasks never ran).
    dispatch.message_posted(message.id, sorted(exclude), push=settings.push_enabled)
    return full


def list_messages(
    user: User, topic_id: uuid.UUID, before: int | None, limit: int
) -> dict[str, Any]:
    """A page of a topic's messages, newest first; ``next_before`` continues the page."""
    topic, _member = member_topic(user.id, topic_id)
    query = select(Message, User).join(User, User.id == Message.sender_id)
    query = query.where(Message.topic_id == topic.id)
    if before is not None:
        query = query.where(Message.id < before)
    rows = db.session.execute(query.order_by(Message.id.desc()).limit(limit + 1)).all()
    page = rows[:limit]
    return {
        "messages": [message_payload(m, topic, sender) for m, sender in page],
        "next_before": page[-1][0].id if len(rows) > limit else None,
    }
