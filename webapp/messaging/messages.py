"""Posting and reading messages.

A new message is announced twice: ``new_message`` (the whole message) to the connections that
joined the topic, and ``global_message_alert`` (topic, sender, preview) for toasts. The alert
goes to the members' ``user:<id>`` rooms, so a preview of a topic never reaches anyone who may
not read it (``ALERT_AUDIENCE=everyone`` broadcasts it, for workspaces with public topics).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import select

from webapp import metrics, realtime
from webapp.extensions import db
from webapp.messaging.topics import member_ids, member_topic
from webapp.models import Message, Topic, User, isoformat
from webapp.platform import context, events, queue
from webapp.platform.text import graphemes
from webapp.presence.store import presence

PREVIEW_LENGTH = 100


def preview(body: str, limit: int = PREVIEW_LENGTH) -> str:
    """One line of at most ``limit`` user-perceived characters (grapheme clusters: an emoji
    sequence or a letter with its combining marks is never cut), with an ellipsis when cut."""
    flat = " ".join(body.split())
    if len(flat) <= limit:
        return flat  # fewer code points than the limit: fewer graphemes too
    clusters = graphemes(flat)
    if len(clusters) <= limit:
        return flat
    return "".join(clusters[: limit - 1]).rstrip() + "\u2026"


def sender_payload(sender: User) -> dict[str, Any]:
    """Who sent a message; a deleted user keeps their id, and is shown as deleted."""
    if sender.deleted_at is not None:
        return {"id": str(sender.id), "username": None, "name": sender.name, "deleted": True}
    return {"id": str(sender.id), "username": sender.username, "name": sender.name}


def message_payload(message: Message, topic: Topic, sender: User) -> dict[str, Any]:
    return {
        "id": message.id,
        "message_id": message.id,
        "topic_id": str(topic.id),
        "room_id": str(topic.channel_id),
        "topic_name": topic.name,
        "sender": sender_payload(sender),
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


def post(
    sender: User, topic: Topic, body: str, *, also: Callable[[Message], None] | None = None
) -> dict[str, Any]:
    """Persist, announce, and hand the unread/push work to the workers; the ``new_message``
    payload. The sender is a member (checked by the caller). ``also(message)`` adds rows to
    the message's transaction (the integration API's idempotency key)."""
    settings = context.settings()
    # Who is looking at the topic is decided at send time, so a retried task counts exactly
    # the same members. Reading it before the commit also means that while Redis (presence
    # and broker) is down nothing is stored: the client is told ``unavailable`` and retries.
    exclude = presence().active_users(str(topic.id)) | {str(sender.id)}
    # Read before the commit too: once the message is stored nothing may fail the ack.
    alert_to = alert_rooms(topic.id, settings.alert_audience)

    message = Message(topic_id=topic.id, sender_id=sender.id, body=body)
    db.session.add(message)
    if also is not None:
        db.session.flush()
        also(message)
    db.session.commit()
    metrics.MESSAGES.inc()

    full = message_payload(message, topic, sender)
    realtime.emit(settings.redis_url, "new_message", full, to=realtime.topic_room(topic.id))
    alert = alert_payload(message, topic, sender)
    realtime.emit(settings.redis_url, "global_message_alert", alert, to=alert_to)
    # The message is stored: the ack says so even if the hand-off fails now (beat's
    # reconciliation enqueues the work of messages whose tasks never ran).
    queue.message_posted(message.id, sorted(exclude), push=settings.fanout_enabled)
    events.publish(
        "message.created",
        {
            "message": full,
            "topic_external_id": topic.external_id,
            "sender_external_id": sender.external_id,
        },
        event_id=f"message.created:{message.id}",
    )
    return full


def alert_rooms(topic_id: uuid.UUID, audience: str) -> list[str] | None:
    """Where ``global_message_alert`` goes: None for everyone connected, else the ``user:<id>``
    room of each member (every device, joined to the topic or not).

    The member ids come from one query, and the alert is one emit to the list of rooms: one
    Redis publish whatever the topic's size; each web process then writes one frame to each
    of its connections in any of the rooms.
    """
    if audience == "everyone":
        return None
    return [realtime.user_room(uid) for uid in member_ids(topic_id)]


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
