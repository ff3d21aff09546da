"""Connect and disconnect: authentication, the private user room, and presence counting."""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app, request, session
from flask_socketio import ConnectionRefusedError, join_room

from webapp import metrics
from webapp.auth import bearer_token, verify_token
from webapp.errors import BeaconError
from webapp.extensions import db, socketio
from webapp.realtime import user_room
from webapp.services import context
from webapp.services.user_status import apply_transition
from webapp.sockets import heartbeat

log = logging.getLogger(__name__)


def _token(auth: Any) -> str | None:
    if isinstance(auth, dict) and auth.get("token"):
        return auth["token"]
    return bearer_token(request.headers) or request.args.get("token")


@socketio.on("connect")
def on_connect(auth: Any = None) -> None:
    try:
        user = verify_token(context.settings(), _token(auth))
    except BeaconError as exc:
        # The JS client sees err.message (text) and err.data ({error, message}).
        raise ConnectionRefusedError(exc.message, exc.to_dict()) from None
    except Exception:
        db.session.rollback()
        log.exception("connect failed")
        text = "the service is temporarily unavailable"
        raise ConnectionRefusedError(text, {"error": "unavailable", "message": text}) from None
    user_id = str(user.id)
    session["user_id"] = user_id
    join_room(user_room(user_id))
    heartbeat.ensure_started(current_app._get_current_object())
    metrics.CONNECTIONS.inc()
    if context.presence().connect(user_id, request.sid, heartbeat.PROCESS_ID):
        apply_transition(user_id, came_online=True)


@socketio.on("disconnect")
def on_disconnect(*_reason: Any) -> None:
    user_id = session.get("user_id")
    if not user_id:
        return
    metrics.CONNECTIONS.dec()
    try:
        if context.presence().disconnect(user_id, request.sid, heartbeat.PROCESS_ID):
            apply_transition(user_id, came_online=False)
    except Exception:
        # The heartbeat sweep ends what is left over once this process stops beating.
        db.session.rollback()
        log.exception("disconnect bookkeeping failed for user %s", user_id)
