"""Catching up after a reconnect: what the caller's screen shows, in one answer.

python-socketio replays nothing, so a client that was away asks for everything newer than the
last message id it saw. Read in one snapshot (``begin_snapshot``), after the client's
connection is back: a message committed after the snapshot reaches it as a live event, one
committed before is in the answer, so a client that merges the two by message id (and counts
and receipts by ``version``) misses nothing and shows nothing twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, or_, select, union_all

from webapp.extensions import db
from webapp.messaging import receipts
from webapp.messaging.messages import message_payload
from webapp.messaging.topics import topic_row_payload, topic_rows_query
from webapp.models import Message, Topic, TopicMember, User
from webapp.platform.dialect import begin_snapshot
from webapp.presence.user_status import user_status_payload

MAX_PER_TOPIC = 200
MAX_MESSAGES = 1000
# Users sharing a topic with the caller, online first: the presence part of the answer.
MAX_USERS = 1000
# Topics whose new messages one statement reads (a UNION ALL of per-topic LIMIT queries).
_TOPICS_PER_STATEMENT = 100


def snapshot(
    user: User, since: int, preferences: Callable[[User], dict[str, Any]]
) -> dict[str, Any]:
    """The sync answer for messages after ``since`` (0: from the start); ``preferences`` reads
    the caller's notification preferences (``delivery.preferences.get``)."""
    user_id = user.id
    begin_snapshot()
    try:
        return _read(user, user_id, since, preferences)
    finally:
        db.session.commit()


def _read(
    user: User, user_id: uuid.UUID, since: int, preferences: Callable[[User], dict[str, Any]]
) -> dict[str, Any]:
    newest = select(func.max(Message.id)).where(Message.topic_id == Topic.id).scalar_subquery()
    rows = db.session.execute(
        topic_rows_query(user_id)
        .add_columns(newest.label("newest"))
        .order_by(TopicMember.unread_count.desc(), Topic.id)
    ).all()
    topics = {row[0].id: row[0] for row in rows}
    fresh = [row[0].id for row in rows if row.newest is not None and row.newest > since]
    kept, cut = _newest_ids(fresh, since)
    by_id = _messages(kept, topics)
    sharing = receipts.shares(user_id)
    seen = receipts.receipts_by_topic(user_id, list(topics)) if sharing else {}

    answer_topics = []
    for topic, channel, member, newest_id in rows:
        ids = kept.get(topic.id, [])
        more = topic.id in cut
        answer_topics.append(
            {
                **topic_row_payload(topic, channel, member),
                "messages": [by_id[i] for i in ids],
                "has_more": more,
                # Where the messages route continues: below the oldest returned, or from the
                # newest when the 1,000 in all left none of this topic's.
                "next_before": (ids[-1] if ids else newest_id + 1) if more else None,
                "receipts": seen.get(str(topic.id), []),
            }
        )
    cursor = max((row.newest for row in rows if row.newest is not None), default=None)
    if since and (cursor is None or cursor < since):
        cursor = since
    users = _users(user_id)
    return {
        "cursor": cursor,
        "receipts_enabled": sharing,
        "topics": answer_topics,
        "users": [user_status_payload(u) for u in users[:MAX_USERS]],
        "users_has_more": len(users) > MAX_USERS,
        "preferences": preferences(user),
    }


def _newest_ids(
    topic_ids: list[uuid.UUID], since: int
) -> tuple[dict[uuid.UUID, list[int]], set[uuid.UUID]]:
    """Per topic, the ids after ``since``, newest first: at most ``MAX_PER_TOPIC`` each and
    ``MAX_MESSAGES`` in all (the newest kept); and the topics that have more than that."""
    found: dict[uuid.UUID, list[int]] = {}
    for start in range(0, len(topic_ids), _TOPICS_PER_STATEMENT):
        parts = [
            select(Message.topic_id, Message.id)
            .where(Message.topic_id == topic_id, Message.id > since)
            .order_by(Message.id.desc())
            .limit(MAX_PER_TOPIC + 1)
            .subquery()
            for topic_id in topic_ids[start : start + _TOPICS_PER_STATEMENT]
        ]
        query = union_all(*(select(p.c.topic_id, p.c.id) for p in parts))
        for topic_id, message_id in db.session.execute(query).all():
            found.setdefault(topic_id, []).append(message_id)
    cut = {t for t, ids in found.items() if len(ids) > MAX_PER_TOPIC}
    everything = sorted(
        ((i, t) for t, ids in found.items() for i in ids[:MAX_PER_TOPIC]), reverse=True
    )
    kept: dict[uuid.UUID, list[int]] = {}
    for message_id, topic_id in everything[:MAX_MESSAGES]:
        kept.setdefault(topic_id, []).append(message_id)
    cut |= {t for _, t in everything[MAX_MESSAGES:]}
    return kept, cut


def _messages(
    kept: dict[uuid.UUID, list[int]], topics: dict[uuid.UUID, Topic]
) -> dict[int, dict[str, Any]]:
    ids = [i for found in kept.values() for i in found]
    if not ids:
        return {}
    rows = db.session.execute(
        select(Message, User).join(User, User.id == Message.sender_id).where(Message.id.in_(ids))
    ).all()
    return {m.id: message_payload(m, topics[m.topic_id], sender) for m, sender in rows}


def _users(user_id: uuid.UUID) -> list[User]:
    """The caller and everyone sharing a topic with them, online first, then by last seen
    (one more than ``MAX_USERS``, to tell that there are more)."""
    mine = select(TopicMember.topic_id).where(TopicMember.user_id == user_id)
    others = select(TopicMember.user_id).where(TopicMember.topic_id.in_(mine)).distinct().subquery()
    return list(
        db.session.execute(
            select(User)
            .where(
                or_(User.id == user_id, User.id.in_(select(others.c.user_id))),
                User.deleted_at.is_(None),
            )
            .order_by(
                (User.presence_status == "offline").asc(),
                User.last_seen_at.desc().nulls_last(),
                User.id,
            )
            .limit(MAX_USERS + 1)
        ).scalars()
    )
