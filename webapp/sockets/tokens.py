"""Open connections are held to their token: expiry notice, refresh, and closing.

The token is verified at connect only, so without this a socket outlived its token's ``exp``
and its user's deletion. Each connection's ``exp`` is kept in one heap per web process (not a
timer greenlet per connection), and one sweep greenlet per process pops what is due every
``TOKEN_SWEEP_INTERVAL``: ``token_expiring`` once, ``TOKEN_EXPIRING_NOTICE`` seconds before
``exp``; ``token_expired`` and a disconnect once ``exp`` + ``JWT_LEEWAY`` has passed. A client
extends its connection with ``refresh_token`` (same user only). The sweep also closes the
connections of users who no longer exist (``access_revoked``). It works in batches and yields
between them, so thousands of connections falling due at once never hold the event loop long.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Flask, request
from sqlalchemy import select

from config import Settings
from webapp.auth import decode_token
from webapp.errors import Forbidden, Unauthorized
from webapp.extensions import db, socketio
from webapp.models import User
from webapp.platform import context
from webapp.platform.validation import require_object

log = logging.getLogger(__name__)

NOTICE, EXPIRE = 0, 1  # heap entry kinds
BATCH = 200  # connections handled between two yields to the event loop
USER_CHUNK = 500  # user ids per existence query


def expires_at(exp: float) -> str:
    """``exp`` (Unix seconds) as the protocol's ISO 8601 time with a UTC offset."""
    return datetime.fromtimestamp(exp, UTC).isoformat()


@dataclass
class Tracked:
    """One open connection: its user and its current token's ``exp``."""

    user_id: str
    exp: int
    noticed: bool = False


class ExpiryBook:
    """This process's connections ordered by when something is due (lazy-deletion heap).

    A refresh or a disconnect leaves the old heap entries in place; an entry is acted on only
    if its connection is still tracked with the same ``exp``. ``compact`` drops the stale ones
    when they outnumber the live ones, so churn does not grow the heap without bound.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conns: dict[str, Tracked] = {}
        # (due, kind, seq, sid, exp): the sequence number keeps equal times in arrival order.
        self._heap: list[tuple[float, int, int, str, int]] = []
        self._seq = itertools.count()

    def _push(self, sid: str, exp: int, notice: float, leeway: float) -> None:
        heapq.heappush(self._heap, (exp - notice, NOTICE, next(self._seq), sid, exp))
        heapq.heappush(self._heap, (exp + leeway, EXPIRE, next(self._seq), sid, exp))

    def track(self, sid: str, user_id: str, exp: int, notice: float, leeway: float) -> None:
        with self._lock:
            self._conns[sid] = Tracked(user_id, exp)
            self._push(sid, exp, notice, leeway)

    def refresh(self, sid: str, exp: int, notice: float, leeway: float) -> bool:
        """Follow a new token's ``exp``; False when the connection is no longer tracked."""
        with self._lock:
            conn = self._conns.get(sid)
            if conn is None:
                return False
            if exp != conn.exp:  # the same token again keeps its one notice
                conn.exp, conn.noticed = exp, False
                self._push(sid, exp, notice, leeway)
            return True

    def forget(self, sid: str) -> Tracked | None:
        """Stop tracking ``sid``; the caller that gets it back is the one that closes it."""
        with self._lock:
            return self._conns.pop(sid, None)

    def expired(self, sid: str, leeway: float, now: float) -> bool:
        with self._lock:
            conn = self._conns.get(sid)
            return conn is not None and now >= conn.exp + leeway

    def pop_due(self, now: float, limit: int) -> list[tuple[int, str, Tracked]]:
        """Up to ``limit`` actions due at ``now``: ``(NOTICE or EXPIRE, sid, connection)``.

        An expired connection is no longer tracked once returned; a notice is marked sent.
        """
        due: list[tuple[int, str, Tracked]] = []
        with self._lock:
            while self._heap and self._heap[0][0] <= now and len(due) < limit:
                _due, kind, _seq, sid, exp = heapq.heappop(self._heap)
                conn = self._conns.get(sid)
                if conn is None or conn.exp != exp:
                    continue  # disconnected or refreshed since
                if kind == EXPIRE:
                    del self._conns[sid]
                elif conn.noticed:
                    continue
                else:
                    conn.noticed = True
                due.append((kind, sid, conn))
        return due

    def users(self) -> dict[str, list[str]]:
        """user id -> the sids tracked for it."""
        with self._lock:
            by_user: dict[str, list[str]] = {}
            for sid, conn in self._conns.items():
                by_user.setdefault(conn.user_id, []).append(sid)
            return by_user

    def compact(self) -> None:
        with self._lock:
            if len(self._heap) <= 4 * len(self._conns) + 1024:
                return
            self._heap = [
                entry
                for entry in self._heap
                if (conn := self._conns.get(entry[3])) is not None and conn.exp == entry[4]
            ]
            heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._conns)


BOOK = ExpiryBook()
_started = False
_lock = threading.Lock()


def track(settings: Settings, sid: str, user_id: str, exp: int) -> None:
    """Called by the connect handler once the connection is registered."""
    BOOK.track(sid, user_id, exp, settings.token_expiring_notice, settings.jwt_leeway)


def forget(sid: str) -> None:
    """Called by the disconnect handler."""
    BOOK.forget(sid)


def ensure_started(app: Flask) -> None:
    """Start this process's sweep on its first connection (CLI and workers never run it)."""
    global _started
    if _started:
        return
    with _lock:
        if not _started:
            socketio.start_background_task(_loop, app)
            _started = True


def _loop(app: Flask) -> None:
    settings: Settings = app.extensions["beacon_settings"]
    while True:
        socketio.sleep(settings.token_sweep_interval)
        try:
            with app.app_context():
                sweep()
        except Exception:
            log.warning("token sweep failed; retrying next interval", exc_info=True)


def sweep(now: float | None = None) -> None:
    """Send the notices and close the connections that are due, then those of deleted users."""
    now = time.time() if now is None else now
    while batch := BOOK.pop_due(now, BATCH):
        for kind, sid, conn in batch:
            if kind == NOTICE:
                _send(sid, "token_expiring", {"expires_at": expires_at(conn.exp)})
            else:
                log.info("closing connection %s of user %s: token expired", sid, conn.user_id)
                _close(sid, "token_expired", {"expires_at": expires_at(conn.exp)})
        socketio.sleep(0)
    BOOK.compact()
    _close_deleted_users()


def _close_deleted_users() -> None:
    by_user = BOOK.users()
    ids = list(by_user)
    for start in range(0, len(ids), USER_CHUNK):
        chunk = ids[start : start + USER_CHUNK]
        try:
            found = {
                str(user_id)
                for user_id in db.session.execute(
                    select(User.id).where(
                        User.id.in_([uuid.UUID(i) for i in chunk]), User.deleted_at.is_(None)
                    )
                ).scalars()
            }
        finally:
            db.session.rollback()  # hold no transaction across the yields below
        for user_id in chunk:
            if user_id in found:
                continue
            for sid in by_user[user_id]:
                if BOOK.forget(sid) is not None:
                    log.info("closing connection %s: user %s no longer exists", sid, user_id)
                    _close(sid, "access_revoked", _revoked())
        socketio.sleep(0)


def _revoked() -> dict[str, str]:
    return {"error": "unknown_user", "message": "the connection's user no longer exists"}


def _send(sid: str, event: str, data: dict[str, Any]) -> None:
    # The connection is on this process: no round trip through the message queue.
    socketio.server.emit(event, data, to=sid, namespace="/", ignore_queue=True)


def _close(sid: str, event: str, data: dict[str, Any]) -> None:
    """Tell the connection why, then disconnect it (the frames leave in that order)."""
    try:
        _send(sid, event, data)
        socketio.server.disconnect(sid, namespace="/")
    except Exception:
        log.warning("could not close connection %s", sid, exc_info=True)


def _close_later(sid: str, event: str, data: dict[str, Any]) -> None:
    """Close after the current event's ack has been sent (its handler is still running)."""
    socketio.start_background_task(_close, sid, event, data)


def check_expiry() -> None:
    """Refuse an event of a connection whose token expired, and close it.

    Between ``exp`` + leeway and the next sweep the socket is still open; its events are
    refused from that moment on, not from the sweep.
    """
    sid = request.sid
    if BOOK.expired(sid, context.settings().jwt_leeway, time.time()):
        conn = BOOK.forget(sid)
        if conn is not None:
            _close_later(sid, "token_expired", {"expires_at": expires_at(conn.exp)})
        raise Unauthorized("token_expired", "the connection's token has expired")


def revoke_current() -> None:
    """The current connection's user no longer exists: close it after this event's ack."""
    sid = request.sid
    if BOOK.forget(sid) is not None:
        _close_later(sid, "access_revoked", _revoked())


def refresh(user: User, payload: Any) -> dict[str, Any]:
    """``refresh_token {token}``: the connection follows a new token of the same user."""
    settings = context.settings()
    data = require_object(payload, allowed={"token"})
    claims = decode_token(settings, data.get("token"))
    if claims.user_id != user.id:
        raise Forbidden(
            "token_mismatch", "the token belongs to another user; a connection keeps its user"
        )
    if not BOOK.refresh(
        request.sid, claims.expires_at, settings.token_expiring_notice, settings.jwt_leeway
    ):
        raise Unauthorized("token_expired", "the connection's token has expired")
    return {"expires_at": expires_at(claims.expires_at)}
