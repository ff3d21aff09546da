"""Read receipts: the other members' read markers, only between users who share theirs.

A user shares unless their ``share_read_receipts`` preference is off, and ``READ_RECEIPTS``
can turn receipts off for everyone. Sharing goes both ways (as in Zulip): a user who does not
share sees no one's, and their own marker moves reach only their own devices.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select

from webapp import realtime
from webapp.extensions import db
from webapp.messaging.topics import member_topic
from webapp.models import NotificationSettings, Topic, TopicMember, User, isoformat
from webapp.platform import context
from webapp.presence.store import presence

# Receipts in a sync answer, per topic (newest markers first): enough for "Seen by" at the
# bottom of a topic; the receipts route, which a client reads when it opens a topic, pages
# further. (At 100 they were most of a big answer's bytes and time: bench/README.md.)
SYNC_RECEIPTS_PER_TOPIC = 20

# What other members see of a marker move (not the reader's own count).
RECEIPT_FIELDS = (
    "topic_id",
    "room_id",
    "user_id",
    "message_ids",
    "last_read_message_id",
    "read_at",
    "version",
)

_SHARES = NotificationSettings.share_read_receipts.is_not(False)


def shares(user_id: uuid.UUID) -> bool:
    """Whether the user's receipts are shown to others (and others' to them)."""
    if not context.settings().read_receipts:
        return False
    row = db.session.get(NotificationSettings, user_id)
    return row is None or row.share_read_receipts


def _sharing_members(topic_ids: list[uuid.UUID], except_user: uuid.UUID) -> Any:
    """Members of the topics, other than ``except_user``, who share and have a marker."""
    return (
        select(TopicMember, User)
        .join(User, User.id == TopicMember.user_id)
        .outerjoin(NotificationSettings, NotificationSettings.user_id == TopicMember.user_id)
        .where(
            TopicMember.topic_id.in_(topic_ids),
            TopicMember.user_id != except_user,
            TopicMember.last_read_message_id.is_not(None),
            _SHARES,
        )
    )


def receipt(member: TopicMember) -> dict[str, Any]:
    return {
        "user_id": str(member.user_id),
        "last_read_message_id": member.last_read_message_id,
        "read_at": isoformat(member.last_read_at),
        "version": member.version,
    }


def list_receipts(user: User, topic_id: uuid.UUID, limit: int) -> dict[str, Any]:
    """``GET /api/topics/<id>/receipts``: members only; newest markers first."""
    topic, _member = member_topic(user.id, topic_id)
    if not shares(user.id):
        return {"topic_id": str(topic.id), "enabled": False, "receipts": [], "has_more": False}
    rows = db.session.execute(
        _sharing_members([topic.id], user.id)
        .order_by(TopicMember.last_read_message_id.desc(), TopicMember.user_id)
        .limit(limit + 1)
    ).all()
    return {
        "topic_id": str(topic.id),
        "enabled": True,
        "receipts": [
            {**receipt(member), "username": other.username, "display_name": other.name}
            for member, other in rows[:limit]
        ],
        "has_more": len(rows) > limit,
    }


def receipts_by_topic(user_id: uuid.UUID, topic_ids: list[uuid.UUID]) -> dict[str, list]:
    """For a sync answer: per topic, at most ``SYNC_RECEIPTS_PER_TOPIC`` receipts of the other
    sharing members, newest first, in one query of plain columns (the caller shares: checked
    before)."""
    if not topic_ids:
        return {}
    rank = (
        func.row_number()
        .over(
            partition_by=TopicMember.topic_id,
            order_by=(TopicMember.last_read_message_id.desc(), TopicMember.user_id),
        )
        .label("rank")
    )
    ranked = (
        _sharing_members(topic_ids, user_id)
        .with_only_columns(
            TopicMember.topic_id,
            TopicMember.user_id,
            TopicMember.last_read_message_id,
            TopicMember.last_read_at,
            TopicMember.version,
            rank,
        )
        .subquery()
    )
    query = (
        select(ranked)
        .where(ranked.c.rank <= SYNC_RECEIPTS_PER_TOPIC)
        .order_by(ranked.c.topic_id, ranked.c.rank)
    )
    found: dict[str, list] = {}
    for topic_id, member, last_read, read_at, version, _rank in db.session.execute(query):
        found.setdefault(str(topic_id), []).append(
            {
                "user_id": str(member),
                "last_read_message_id": last_read,
                "read_at": isoformat(read_at),
                "version": version,
            }
        )
    return found


def announce(topic: Topic, reader: User, own: dict[str, Any]) -> None:
    """``messages_read`` after the reader's marker moved: the whole result to the reader's
    devices; the receipt to the topic's joined connections of other members who share, when
    the reader shares. Connections of members who do not share are skipped (one Redis read
    for who is joined, one query for which of them do not share)."""
    redis_url = context.settings().redis_url
    realtime.emit(redis_url, "messages_read", own, to=realtime.user_room(reader.id))
    if not shares(reader.id):
        return
    joined = presence().joined(str(topic.id))
    others = {uuid.UUID(u) for u in joined.values()} - {reader.id}
    if not others:
        return
    private = set(
        db.session.execute(
            select(NotificationSettings.user_id).where(
                NotificationSettings.user_id.in_(others),
                NotificationSettings.share_read_receipts.is_(False),
            )
        ).scalars()
    )
    skip = [sid for sid, u in joined.items() if u == str(reader.id) or uuid.UUID(u) in private]
    public = {key: own[key] for key in RECEIPT_FIELDS}
    realtime.emit(redis_url, "messages_read", public, to=realtime.topic_room(topic.id), skip=skip)
