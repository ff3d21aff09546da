"""What a notification about a message says: title, body, count, where it leads.

Built by the worker that sends it, from the message's id: tasks carry ids, never text.
"""

from __future__ import annotations

from typing import Any

from webapp.delivery.channels.base import Notification
from webapp.messaging.messages import preview
from webapp.models import Message, User
from webapp.platform import context


def push_payload(
    message: Message,
    sender_user: User,
    kind: str,
    count: int = 1,
    *,
    summary: bool | None = None,
) -> dict[str, Any]:
    """The notification for ``message``; ``count`` > 1 stands for that many messages in its
    topic, the newest being ``message``. A ``summary`` (the default for a coalesced plain
    message, always for a window's flush) is titled with the count instead of the sender, who
    is not necessarily the one who mentioned the user."""
    topic = message.topic
    if summary is None:
        summary = count > 1 and kind == "message"
    if summary:
        title = f"{count} new messages in {topic.name}"
        body = preview(f"{sender_user.name}: {message.body}")
    elif kind == "mention":
        title = f"{sender_user.name} mentioned you in {topic.name}"
        body = preview(message.body)
    else:
        title = f"{sender_user.name} in {topic.name}"
        body = preview(message.body)
    base = context.settings().app_base_url.rstrip("/")
    return {
        "type": kind,
        "title": title,
        "body": body,
        "count": count,
        "topic_id": str(topic.id),
        "room_id": str(topic.channel_id),
        "message_id": message.id,
        "url": f"{base}/?room={topic.channel_id}&topic={topic.id}",
    }


def notification(message: Message, kind: str, count: int, summary: bool) -> Notification:
    """The notification one delivery sends (``kind`` ``mention`` is sent with high urgency;
    every push of a topic shares its collapse key, so each replaces the last)."""
    payload = push_payload(message, message.sender, kind, count, summary=summary or None)
    return Notification(
        payload=payload,
        urgency="high" if kind == "mention" else "normal",
        collapse_key=str(message.topic_id),
    )
