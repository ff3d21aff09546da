"""Emitting Socket.IO events from any process.

In the web tier the app's ``socketio`` server emits (and, through the Redis message queue,
reaches clients of every other web process). Workers and beat have no server: they publish
through a write-only ``SocketIO(message_queue=...)`` on the same queue.
"""

from __future__ import annotations

import threading
from typing import Any

from flask_socketio import SocketIO

from webapp.extensions import socketio

_writers: dict[str, SocketIO] = {}
_lock = threading.Lock()


def user_room(user_id: object) -> str:
    return f"user:{user_id}"


def topic_room(topic_id: object) -> str:
    return f"topic:{topic_id}"


def _writer(redis_url: str) -> SocketIO:
    writer = _writers.get(redis_url)
    if writer is None:
        with _lock:
            writer = _writers.get(redis_url)
            if writer is None:
                writer = SocketIO(message_queue=redis_url)
                _writers[redis_url] = writer
    return writer


def emit(redis_url: str, event: str, data: Any, *, to: str | list[str] | None = None) -> None:
    """Emit ``event`` to a room (or rooms, or everyone when ``to`` is None)."""
    if getattr(socketio, "server", None) is not None:
        socketio.emit(event, data, to=to)
    else:
        _writer(redis_url).emit(event, data, to=to)
