"""Client -> server events of the brief; each answers through its ack.

Every event is rate-limited per user (``send_message`` in ``messages``; the topic events here,
each call counted before its payload is read: a join or a read costs database and Redis round
trips, and a read a broadcast to the topic, whatever the topic id).
"""

from __future__ import annotations

import uuid
from typing import Any

from flask import request
from flask_socketio import emit, join_room, leave_room

from config import RateLimit
from webapp.delivery import coalescing, preferences
from webapp.errors import Forbidden, InvalidInput
from webapp.extensions import db, socketio
from webapp.messaging import messages, sync, unread
from webapp.messaging.topics import is_member, member_topic
from webapp.models import User
from webapp.platform import context, rate_limit
from webapp.platform.validation import (
    parse_message_body,
    parse_message_ids,
    parse_positive_int,
    parse_since,
    parse_uuid,
    require_object,
)
from webapp.presence import attention
from webapp.presence.store import presence
from webapp.realtime import topic_room
from webapp.sockets import heartbeat, tokens
from webapp.sockets.acks import acked, arrival


@socketio.on("join_topic")
@acked
def join_topic(user: User, payload: Any) -> dict[str, Any]:
    rate_limit.check("join_topic", user.id, context.settings().rate_limit_join_topic)
    data = require_object(payload, allowed={"topic_id", "room_id"})
    topic_id = parse_uuid(data.get("topic_id"), "topic_id")
    room_id = parse_uuid(data.get("room_id"), "room_id", required=False)
    topic, member = member_topic(user.id, topic_id, room_id)
    unread_count, version = member.unread_count, member.version
    presence().join_topic(str(user.id), request.sid, str(topic_id))
    heartbeat.CONNECTIONS.join(request.sid, str(topic_id))
    join_room(topic_room(topic_id))
    # Removed by the integration API since the check above? Its leave_room may have run
    # before this join: undo it. (A new transaction, so that SQLite reads afresh.)
    user_id = user.id
    db.session.commit()
    if not is_member(user_id, topic_id):
        _leave(request.sid, topic_id)
        raise Forbidden("not_a_member", "you are not a member of this topic")
    return {"topic_id": str(topic_id), "unread_count": unread_count, "version": version}


def _leave(sid: str, topic_id: uuid.UUID) -> None:
    presence().leave_topic(sid, str(topic_id))
    heartbeat.CONNECTIONS.leave(sid, str(topic_id))
    leave_room(topic_room(topic_id))


@socketio.on("leave_topic")
@acked
def leave_topic(user: User, payload: Any) -> dict[str, Any]:
    rate_limit.check("leave_topic", user.id, context.settings().rate_limit_leave_topic)
    data = require_object(payload, allowed={"topic_id", "room_id"})
    topic_id = parse_uuid(data.get("topic_id"), "topic_id")
    room_id = parse_uuid(data.get("room_id"), "room_id", required=False)
    topic, _member = member_topic(user.id, topic_id, room_id)
    _leave(request.sid, topic.id)
    return {"topic_id": str(topic.id)}


@socketio.on("send_message")
@acked
def send_message(user: User, payload: Any) -> dict[str, Any]:
    settings = context.settings()
    data = require_object(payload, allowed={"room_id", "topic_id", "message"})
    topic_id = parse_uuid(data.get("topic_id"), "topic_id")
    room_id = parse_uuid(data.get("room_id"), "room_id", required=False)
    body = parse_message_body(data.get("message"), settings.max_message_length)
    topic, _member = member_topic(user.id, topic_id, room_id)
    rate_limit.check("send_message", user.id, settings.rate_limit_send_message)
    _attending(user)
    return {"message": messages.post(user, topic, body)}


@socketio.on("mark_as_read")
@acked
def mark_as_read(user: User, payload: Any) -> dict[str, Any]:
    rate_limit.check("mark_as_read", user.id, context.settings().rate_limit_mark_as_read)
    data = require_object(payload, allowed={"room_id", "topic_id", "message_ids"})
    result = unread.mark_as_read(
        user,
        parse_uuid(data.get("topic_id"), "topic_id"),
        parse_uuid(data.get("room_id"), "room_id", required=False),
        parse_message_ids(data.get("message_ids")),
    )
    # Caught up: the next push of the topic starts a new coalesced count.
    coalescing.reset(user.id, result["topic_id"])
    _attending(user)
    return result


@socketio.on("mark_as_unread")
@acked
def mark_as_unread(user: User, payload: Any) -> dict[str, Any]:
    rate_limit.check("mark_as_unread", user.id, context.settings().rate_limit_mark_as_unread)
    data = require_object(payload, allowed={"room_id", "topic_id", "message_id"})
    result = unread.mark_as_unread(
        user,
        parse_uuid(data.get("topic_id"), "topic_id"),
        parse_uuid(data.get("room_id"), "room_id", required=False),
        parse_positive_int(data.get("message_id"), "message_id"),
    )
    _attending(user)
    return result


@socketio.on("sync")
@acked
def sync_state(user: User, payload: Any) -> dict[str, Any]:
    """What the client missed while away (``messaging.sync``); call it after reconnecting."""
    rate_limit.check("sync", user.id, context.settings().rate_limit_sync)
    data = require_object(payload, allowed={"since"})
    since = data.get("since")
    return sync.snapshot(user, 0 if since is None else parse_since(since), preferences.get)


# One typing notice per user and topic every 2 s; clients drop the indicator after
# TYPING_EXPIRES_IN s without a repeat (a typing client repeats every 2-3 s).
TYPING_LIMIT = RateLimit(1, 2.0)
TYPING_EXPIRES_IN = 6


@socketio.on("typing")
@acked
def typing(user: User, payload: Any) -> dict[str, Any]:
    """``user_typing`` to the topic's other joined connections: never stored or pushed."""
    data = require_object(payload, allowed={"topic_id", "room_id"})
    topic_id = parse_uuid(data.get("topic_id"), "topic_id")
    room_id = parse_uuid(data.get("room_id"), "room_id", required=False)
    topic, _member = member_topic(user.id, topic_id, room_id)
    rate_limit.check("typing", f"{user.id}:{topic.id}", TYPING_LIMIT)
    _attending(user)
    emit(
        "user_typing",
        {
            "topic_id": str(topic.id),
            "room_id": str(topic.channel_id),
            "user_id": str(user.id),
            "display_name": user.name,
            "expires_in": TYPING_EXPIRES_IN,
        },
        to=topic_room(topic.id),
        include_self=False,
    )
    return {"topic_id": str(topic.id)}


PRESENCE_STATES = {"active": False, "idle": True}


def _attending(user: User, *, idle: bool = False, said: bool = False) -> None:
    """This connection's client shows attention (or says it is idle, ``said``: set_presence)."""
    attention.report(
        heartbeat.CONNECTIONS,
        str(user.id),
        request.sid,
        idle=idle,
        arrived=arrival(),
        said=said,
    )


@socketio.on("set_presence")
@acked
def set_presence(user: User, payload: Any) -> dict[str, Any]:
    """The client's attention: ``active`` (input, page shown) or ``idle`` (hidden, quiet)."""
    rate_limit.check("set_presence", user.id, context.settings().rate_limit_set_presence)
    data = require_object(payload, allowed={"state"})
    state = data.get("state")
    if not isinstance(state, str) or state not in PRESENCE_STATES:
        raise InvalidInput("invalid_state", "state must be 'active' or 'idle'")
    _attending(user, idle=PRESENCE_STATES[state], said=True)
    return {"state": state, "status": presence().status(str(user.id))}


@socketio.on("refresh_token")
@acked
def refresh_token(user: User, payload: Any) -> dict[str, Any]:
    return tokens.refresh(user, payload)


@socketio.on("*")
def unknown_event(event: str, *_args: Any) -> dict[str, Any]:
    reply = {
        "ok": False,
        "error": "unknown_event",
        "message": f"unknown event {str(event)[:64]!r}",
    }
    emit("error", {"code": reply["error"], "message": reply["message"]})
    return reply
