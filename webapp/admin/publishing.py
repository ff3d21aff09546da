"""Messages from the product's backend: ``POST /api/admin/messages`` posts as a member, through
the same path as ``send_message`` (stored, ``new_message``, alerts, unread, push).

An ``idempotency_key`` is stored with the message, in its transaction: a retry of a request
whose answer was lost finds it and gets the first message back, never a second one; the same
key with another request is refused. Keys are kept ``KEY_RETENTION`` (beat prunes them).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from webapp.admin.provisioning import Conflict, find_topic, find_user
from webapp.errors import Forbidden
from webapp.extensions import db
from webapp.messaging import messages
from webapp.messaging.topics import is_member
from webapp.models import Message, PublishedMessage, Topic, User, utcnow
from webapp.platform.pruning import delete_older_than

KEY_RETENTION = timedelta(hours=24)


def _request_hash(topic: str, sender: str, body: str) -> str:
    return hashlib.sha256(json.dumps([topic, sender, body]).encode()).hexdigest()


def _replay(key: str, request_hash: str) -> dict[str, Any] | None:
    """The first result of ``key``, or None when the key is new."""
    row = db.session.execute(
        select(PublishedMessage, Message, Topic, User)
        .join(Message, Message.id == PublishedMessage.message_id)
        .join(Topic, Topic.id == Message.topic_id)
        .join(User, User.id == Message.sender_id)
        .where(PublishedMessage.key == key)
    ).first()
    if row is None:
        return None
    published, message, topic, sender = row
    created = published.created_at
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    if utcnow() - created > KEY_RETENTION:
        # Expired (beat prunes hourly): the key is new again.
        db.session.delete(published)
        db.session.commit()
        return None
    if published.request_hash != request_hash:
        raise Conflict(
            "idempotency_key_reused", "this idempotency_key was used for a different request"
        )
    return messages.message_payload(message, topic, sender)


def publish(
    topic_external_id: str, sender_external_id: str, body: str, idempotency_key: str | None
) -> tuple[dict[str, Any], bool]:
    """Post ``body`` in the topic as the sender; the ``new_message`` payload, and False when
    it is the replay of an earlier request with the same key."""
    request_hash = _request_hash(topic_external_id, sender_external_id, body)
    if idempotency_key is not None:
        first = _replay(idempotency_key, request_hash)
        if first is not None:
            return first, False
    topic = find_topic(topic_external_id)
    sender = find_user(sender_external_id)
    if not is_member(sender.id, topic.id):
        raise Forbidden("not_a_member", "the sender is not a member of this topic")

    def remember(message: Message) -> None:
        db.session.add(
            PublishedMessage(key=idempotency_key, message_id=message.id, request_hash=request_hash)
        )

    try:
        return messages.post(sender, topic, body, also=remember if idempotency_key else None), True
    except IntegrityError:
        # A concurrent request with the same key committed first: answer with its message.
        db.session.rollback()
        first = _replay(idempotency_key, request_hash) if idempotency_key else None
        if first is None:
            raise
        return first, False


def prune_keys(older_than: Any) -> int:
    """Delete idempotency keys created before ``older_than`` (beat, hourly)."""
    return delete_older_than(PublishedMessage.key, PublishedMessage.created_at, older_than)
