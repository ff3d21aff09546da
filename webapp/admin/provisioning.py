"""Provisioning by the product's backend: its users, rooms, topics and memberships, each
addressed by the product's own id (``external_id``), with live effects on every web process.

Membership changes reach connected clients at once: an added member gets ``topic_added``; a
removed one leaves the topic's Socket.IO room on whichever web process holds each of their
connections (python-socketio sends room changes through the same Redis queue as the events,
so every later event of the topic already misses them), no longer counts as active in the
topic, and gets ``topic_removed``. Deleting a user closes their connections the same way and
erases what Beacon holds about them, except their messages, which stay with a deleted sender.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis
from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError

from webapp import realtime
from webapp.auth import issue_token
from webapp.delivery import decisions
from webapp.errors import InvalidInput, NotFound, Unavailable
from webapp.extensions import db
from webapp.messaging.topics import member_ids, topic_row
from webapp.models import (
    Channel,
    EmailDigest,
    Message,
    NotificationOverride,
    NotificationSettings,
    PendingEmail,
    PushRecord,
    PushSubscription,
    Topic,
    TopicMember,
    User,
    isoformat,
    utcnow,
)
from webapp.platform import context
from webapp.presence.store import presence

log = logging.getLogger(__name__)

# The longest a token minted for a product's user may live.
MAX_TOKEN_TTL = 30 * 86400


class Conflict(InvalidInput):
    status = 409


M = TypeVar("M", User, Channel, Topic)


def _lookup(model: type[M], external_id: str) -> M | None:
    return db.session.execute(
        select(model).where(model.external_id == external_id)
    ).scalar_one_or_none()


def _found(row: M | None, what: str) -> M:
    if row is None:
        raise NotFound(f"{what}_not_found", f"no {what} with that external id")
    return row


# -- users ---------------------------------------------------------------------------------


def user_payload(user: User) -> dict[str, Any]:
    return {
        "id": str(user.id),
        "external_id": user.external_id,
        "username": user.username,
        "display_name": user.display_name,
        "email": user.email,
        "email_failing": user.email_failing_at is not None,
        "is_online": user.is_online,
        "status": user.presence_status,
        "last_seen_at": isoformat(user.last_seen_at),
        "created_at": isoformat(user.created_at),
    }


def find_user(external_id: str) -> User:
    return _found(_lookup(User, external_id), "user")


def put_user(
    external_id: str, username: str, display_name: str | None, email: str | None
) -> tuple[User, bool]:
    """Create the user mapped to ``external_id``, or replace its fields; True if created."""
    user = _lookup(User, external_id)
    created = user is None
    if user is None:
        user = User(external_id=external_id)
        db.session.add(user)
    user.username = username
    user.display_name = display_name
    set_email(user, email)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        taken = db.session.execute(
            select(User.id).where(
                User.username == username,
                or_(User.external_id.is_(None), User.external_id != external_id),
            )
        ).first()
        if taken is not None or not created:
            raise Conflict("username_taken", f"the username {username!r} is taken") from None
        # Created by a concurrent request with the same external id: update that one.
        return put_user(external_id, username, display_name, email)[0], False
    return user, created


def set_email(user: User, email: str | None) -> None:
    """A new address starts with a clean record (bounces counted for the old one are not its)."""
    if email != user.email:
        user.email = email
        user.email_bounces = 0
        user.email_failing_at = None


def delete_user(external_id: str) -> None:
    """Erase the user: connections closed, memberships, devices, preferences, push history,
    notification decisions and unread state deleted, personal data cleared. The row stays
    (their messages keep a sender, shown as a deleted user); the external id is free for a
    new user."""
    user = find_user(external_id)
    uid = user.id
    # Read before the commit, so that with Redis away nothing changes (503, and a retry).
    sids = presence().sids_of(str(uid))
    for model in (
        TopicMember,
        PushSubscription,
        NotificationSettings,
        NotificationOverride,
        PendingEmail,
        EmailDigest,
    ):
        db.session.execute(delete(model).where(model.user_id == uid))
    db.session.execute(delete(PushRecord).where(PushRecord.user_id == uid))
    user.username = f"deleted-{uid.hex}"
    user.display_name = None
    user.email = None
    user.external_id = None
    user.deleted_at = utcnow()
    db.session.commit()
    decisions.forget(uid)
    # From the commit on, a connection of the user is refused and so is each event of one
    # still open (webapp/sockets/acks.py); this closes the open ones now. Should Redis fail
    # here, each web process's token sweep closes them (TOKEN_SWEEP_INTERVAL).
    settings = context.settings()
    notice = {"error": "unknown_user", "message": "the connection's user no longer exists"}
    try:
        for sid in sids:
            realtime.emit(settings.redis_url, "access_revoked", notice, to=sid)
            realtime.disconnect(settings.redis_url, sid)
    except redis.RedisError:
        log.warning("could not close the connections of deleted user %s now", uid, exc_info=True)


def user_token(external_id: str, ttl: int | None) -> dict[str, Any]:
    user = find_user(external_id)
    settings = context.settings()
    if not settings.jwt_signing_key:
        raise Unavailable(
            "auth_unconfigured", "the server has no JWT signing key (JWT_SECRET or JWT_PRIVATE_KEY)"
        )
    ttl = settings.jwt_default_ttl if ttl is None else ttl
    token = issue_token(settings, user.id, ttl)
    expires = datetime.fromtimestamp(int(datetime.now(UTC).timestamp()) + ttl, UTC)
    return {"token": token, "expires_at": isoformat(expires)}


# -- rooms and topics ----------------------------------------------------------------------


def room_payload(room: Channel) -> dict[str, Any]:
    return {
        "id": str(room.id),
        "external_id": room.external_id,
        "name": room.name,
        "created_at": isoformat(room.created_at),
    }


def topic_payload(topic: Topic, room: Channel) -> dict[str, Any]:
    return {
        "id": str(topic.id),
        "external_id": topic.external_id,
        "room_id": str(room.id),
        "room_external_id": room.external_id,
        "name": topic.name,
        "created_at": isoformat(topic.created_at),
    }


def find_room(external_id: str) -> Channel:
    return _found(_lookup(Channel, external_id), "room")


def find_topic(external_id: str) -> Topic:
    return _found(_lookup(Topic, external_id), "topic")


def _room_topic(room_external_id: str, external_id: str) -> tuple[Channel, Topic]:
    room = find_room(room_external_id)
    topic = find_topic(external_id)
    if topic.channel_id != room.id:
        raise NotFound("topic_not_found", "no topic with that external id in this room")
    return room, topic


def put_room(external_id: str, name: str) -> tuple[Channel, bool]:
    room = _lookup(Channel, external_id)
    created = room is None
    if room is None:
        room = Channel(external_id=external_id, name=name)
        db.session.add(room)
    room.name = name
    try:
        db.session.commit()
    except IntegrityError:  # created concurrently with the same external id
        db.session.rollback()
        return put_room(external_id, name)[0], False
    return room, created


def put_topic(room_external_id: str, external_id: str, name: str) -> tuple[Topic, Channel, bool]:
    room = find_room(room_external_id)
    topic = _lookup(Topic, external_id)
    if topic is not None and topic.channel_id != room.id:
        raise Conflict("topic_in_other_room", "a topic with that external id is in another room")
    created = topic is None
    if topic is None:
        topic = Topic(external_id=external_id, channel_id=room.id, name=name)
        db.session.add(topic)
    topic.name = name
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raced = db.session.execute(select(Topic.id).where(Topic.external_id == external_id))
        if created and raced.first() is not None:  # created concurrently: update that one
            return put_topic(room_external_id, external_id, name)[0], room, False
        raise Conflict("name_taken", f"the room has another topic named {name!r}") from None
    return topic, room, created


def delete_room(external_id: str) -> None:
    """Delete the room with its topics, their messages and memberships."""
    room = find_room(external_id)
    topics = list(db.session.execute(select(Topic).where(Topic.channel_id == room.id)).scalars())
    audiences = {topic.id: member_ids(topic.id) for topic in topics}
    db.session.delete(room)
    db.session.commit()
    for topic in topics:
        _topic_gone(topic, audiences[topic.id])


def delete_topic(room_external_id: str, external_id: str) -> None:
    """Delete the topic with its messages and memberships."""
    _room, topic = _room_topic(room_external_id, external_id)
    members = member_ids(topic.id)
    db.session.delete(topic)
    db.session.commit()
    _topic_gone(topic, members)


def _topic_gone(topic: Topic, members: list[uuid.UUID]) -> None:
    """Every connection leaves the deleted topic's room; its members hear ``topic_removed``.

    The topic is gone whatever happens here: should Redis fail, nothing more can be said in
    it anyway, and its presence entries only name a topic that no longer exists."""
    settings = context.settings()
    try:
        realtime.close_room(settings.redis_url, realtime.topic_room(topic.id))
        presence().forget_topic(str(topic.id))
        realtime.emit(
            settings.redis_url,
            "topic_removed",
            {"topic_id": str(topic.id), "room_id": str(topic.channel_id), "reason": "deleted"},
            to=[realtime.user_room(uid) for uid in members],
        )
    except redis.RedisError:
        log.warning("could not announce that topic %s was deleted", topic.id, exc_info=True)


# -- memberships ---------------------------------------------------------------------------


def membership_payload(member: TopicMember, topic: Topic, user: User) -> dict[str, Any]:
    return {
        "topic_id": str(topic.id),
        "topic_external_id": topic.external_id,
        "user_id": str(user.id),
        "user_external_id": user.external_id,
        "joined_at": isoformat(member.joined_at),
    }


def add_member(topic_external_id: str, user_external_id: str) -> tuple[dict[str, Any], bool]:
    """Make the user a member (idempotent); a new member's devices get ``topic_added``.

    A new member starts with nothing unread: the topic's history is there to read, but it
    is not news to them."""
    topic = find_topic(topic_external_id)
    user = find_user(user_external_id)
    member = db.session.execute(
        select(TopicMember).where(TopicMember.topic_id == topic.id, TopicMember.user_id == user.id)
    ).scalar_one_or_none()
    if member is not None:
        return membership_payload(member, topic, user), False
    newest = db.session.execute(
        select(func.max(Message.id)).where(Message.topic_id == topic.id)
    ).scalar_one()
    member = TopicMember(topic_id=topic.id, user_id=user.id, last_read_message_id=newest)
    db.session.add(member)
    try:
        db.session.commit()
    except IntegrityError:  # added concurrently
        db.session.rollback()
        return add_member(topic_external_id, user_external_id)[0], False
    payload = membership_payload(member, topic, user)
    row = topic_row(user.id, topic.id)
    if row is not None:
        realtime.emit(
            context.settings().redis_url, "topic_added", row, to=realtime.user_room(user.id)
        )
    return payload, True


def remove_member(topic_external_id: str, user_external_id: str) -> None:
    """End the membership, at once on every web process (see the module docstring).

    Idempotent: a repeated DELETE takes the user's connections out of the topic again (so a
    retry after a 503 finishes the job), and says ``topic_removed`` only the first time."""
    topic = find_topic(topic_external_id)
    user = find_user(user_external_id)
    store = presence()
    sids = store.sids_of(str(user.id))  # before the commit: with Redis away, nothing changes
    removed = db.session.execute(
        delete(TopicMember).where(TopicMember.topic_id == topic.id, TopicMember.user_id == user.id)
    ).rowcount
    db.session.commit()
    settings = context.settings()
    room = realtime.topic_room(topic.id)
    for sid in sids:
        realtime.leave_room(settings.redis_url, sid, room)
        store.leave_topic(sid, str(topic.id))
    if removed:
        realtime.emit(
            settings.redis_url,
            "topic_removed",
            {"topic_id": str(topic.id), "room_id": str(topic.channel_id), "reason": "removed"},
            to=realtime.user_room(user.id),
        )
