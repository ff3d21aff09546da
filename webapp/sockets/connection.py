"""Connect and disconnect: authentication, the private user room, and presence counting.

The token is verified here; ``tokens`` then holds the open connection to its ``exp``.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app, request, session
from flask_socketio import ConnectionRefusedError, join_room

from webapp import metrics
from webapp.auth import bearer_token, decode_token, token_user
from webapp.errors import BeaconError
from webapp.extensions import db, socketio
from webapp.platform import context, rate_limit
from webapp.presence.store import TooManyConnections, presence
from webapp.presence.user_status import apply_transition
from webapp.realtime import user_room
from webapp.sockets import heartbeat, tokens

log = logging.getLogger(__name__)


def _token(auth: Any) -> str | None:
    if isinstance(auth, dict) and auth.get("token"):
        return auth["token"]
    return bearer_token(request.headers) or request.args.get("token")


def _refused(code: str, text: str, **extra: Any) -> ConnectionRefusedError:
    # The JS client sees err.message (text) and err.data ({error, message, ...}).
    return ConnectionRefusedError(text, {"error": code, "message": text, **extra})


def _unavailable() -> ConnectionRefusedError:
    return _refused("unavailable", "the service is temporarily unavailable; try again")


@socketio.on("connect")
def on_connect(auth: Any = None) -> None:
    settings = context.settings()
    try:
        # Counted before the token is checked: guessing tokens costs attempts too.
        rate_limit.check("connect_ip", request.remote_addr, settings.rate_limit_connect_ip)
        claims = decode_token(settings, _token(auth))
        user = token_user(claims)
        rate_limit.check("connect_user", user.id, settings.rate_limit_connect_user)
    except BeaconError as exc:
        raise _refused(exc.code, exc.message, **exc.extra) from None
    except Exception:
        db.session.rollback()
        log.exception("connect failed")
        raise _unavailable() from None
    user_id, sid = str(user.id), request.sid
    try:
        heartbeat.ensure_started(current_app._get_current_object())
        heartbeat.CONNECTIONS.add(sid, user_id)
        try:
            cap = settings.max_connections_per_user
            came_online = presence().connect(user_id, sid, heartbeat.PROCESS_ID, cap)
        except TooManyConnections:
            heartbeat.CONNECTIONS.remove(sid)
            # Nothing was recorded, unless a rebuild ran meanwhile: undo it (a no-op otherwise).
            presence().disconnect(user_id, sid, heartbeat.PROCESS_ID)
            raise _refused(
                "too_many_connections",
                f"this user has {cap} connections open already; close one first",
                max_connections=cap,
            ) from None
        if came_online:
            apply_transition(user_id)
    except ConnectionRefusedError:
        raise
    except Exception:
        # Refused, so no disconnect event will come: the heartbeat's rebuild removes whatever
        # part of the connection Redis did record, and settles the user's status.
        db.session.rollback()
        heartbeat.CONNECTIONS.remove(sid)
        heartbeat.CONNECTIONS.bookkeeping_failed(user_id)
        log.warning("connect of user %s refused: presence unavailable", user_id, exc_info=True)
        raise _unavailable() from None
    session["user_id"] = user_id
    join_room(user_room(user_id))
    # From here on the connection is held to its token's exp (notice, refresh, close).
    tokens.ensure_started(current_app._get_current_object())
    tokens.track(settings, sid, user_id, claims.expires_at)
    metrics.CONNECTIONS.inc()


@socketio.on("disconnect")
def on_disconnect(*_reason: Any) -> None:
    user_id = session.get("user_id")
    if user_id:
        heartbeat.end_connection(request.sid, user_id)
