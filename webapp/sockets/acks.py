"""Turn a handler's result or refusal into the ack every client event answers with."""

from __future__ import annotations

import itertools
import logging
import uuid
from collections.abc import Callable
from functools import wraps
from typing import Any

import redis
from flask import g, session
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import SQLAlchemyError

from webapp.errors import BeaconError, Unauthorized
from webapp.extensions import db
from webapp.models import User
from webapp.platform import inflight
from webapp.platform.validation import check_payload
from webapp.sockets import tokens

log = logging.getLogger(__name__)

Handler = Callable[[User, Any], dict[str, Any]]
_arrivals = itertools.count(1)


def arrival() -> int:
    """The order in which the current event reached this process. python-socketio runs each
    event in a greenlet of its own, started in arrival order; the number is taken before the
    handler's first yield, so it keeps that order while the handlers finish in any."""
    return g.beacon_arrival


def current_user() -> User:
    """The connection's user; refused (and the connection closed) once its token expired or
    the user was deleted, even before the periodic sweep gets to it."""
    user_id = session.get("user_id")
    if not user_id:
        raise Unauthorized("unauthorized", "this connection is not signed in")
    tokens.check_expiry()
    user = db.session.get(User, uuid.UUID(user_id))
    if user is None or user.deleted_at is not None:
        tokens.revoke_current()
        raise Unauthorized("unknown_user", "the connection's user no longer exists")
    return user


def acked(handler: Handler) -> Callable[..., dict[str, Any]]:
    """Wrap ``handler(user, payload)`` so it always answers ``{"ok": ...}``, never raises."""

    @wraps(handler)
    def wrapper(payload: Any = None, *_ignored: Any) -> dict[str, Any]:
        g.beacon_arrival = next(_arrivals)
        with inflight.tracked():
            return _answer(handler, payload)

    return wrapper


def _answer(handler: Handler, payload: Any) -> dict[str, Any]:
    """``handler``'s result as an ack, or its refusal."""
    try:
        return {"ok": True, **handler(current_user(), check_payload(payload))}
    except BeaconError as exc:
        db.session.rollback()
        return {"ok": False, **exc.to_dict()}
    except (SQLAlchemyError, redis.RedisError, BrokerError):
        db.session.rollback()
        log.exception("%s failed: a backing service is unavailable", handler.__name__)
        return {
            "ok": False,
            "error": "unavailable",
            "message": "the service is temporarily unavailable; try again",
        }
    except Exception:
        db.session.rollback()
        log.exception("%s failed", handler.__name__)
        return {"ok": False, "error": "internal_error", "message": "unexpected server error"}
