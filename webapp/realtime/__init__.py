"""Emitting Socket.IO events from any process; this package is also the one place that
touches python-socketio / python-engineio internals (``fanout``, ``audience``,
``session_gate``), pinned in requirements.txt and checked by ``tests/test_engineio_contract.py``
and ``tests/test_session_gate_contract.py``, which fail loudly when an upgrade changes them.

In the web tier the app's ``socketio`` server emits (and, through the Redis message queue,
reaches clients of every other web process). Workers and beat have no server: they publish
through a write-only ``SocketIO(message_queue=...)`` on the same queue.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import socketio as socketio_lib
from flask_socketio import SocketIO

from webapp.extensions import socketio
from webapp.redis_client import MESSAGE_QUEUE_OPTIONS

_writers: dict[str, SocketIO] = {}
_lock = threading.Lock()


def user_room(user_id: object) -> str:
    return f"user:{user_id}"


def topic_room(topic_id: object) -> str:
    return f"topic:{topic_id}"


def abandoned(sids: Iterable[str]) -> list[str]:
    """The sids among ``sids`` (connections of this web process) whose Engine.IO socket is gone
    or closed, though no disconnect handler ran or runs for them.

    python-socketio ignores an Engine.IO close that arrives while the connect handler runs (the
    socket is still pending then), and marks the socket connected when the handler returns: a
    long-polling client that posts the connect packet and, on another request, a close leaves
    such a connection behind (tests/faults/test_connect_close_race.py). A socket whose connect
    or disconnect handler is still running is left to it. No yield in here.
    """
    server = getattr(socketio, "server", None)
    if server is None:
        return []
    manager, namespace = server.manager, "/"
    busy = {
        *manager.pending_connect.get(namespace, ()),
        *manager.pending_disconnect.get(namespace, ()),
    }
    registered = manager.rooms.get(namespace, {}).get(None, {})
    found = []
    for sid in sids:
        if sid in busy:
            continue
        eio_sid = registered.get(sid)
        sock = server.eio.sockets.get(eio_sid) if eio_sid is not None else None
        if sock is None or sock.closed:
            found.append(sid)
    return found


def unsent() -> int:
    """Packets queued for this web process's connections and not written yet (each Engine.IO
    socket's queue, pinned by tests/test_engineio_contract.py): a stopping process lets them
    go out before it closes the connections (``wsgi.py``)."""
    server = getattr(socketio, "server", None)
    if server is None:
        return 0
    return sum(sock.queue.qsize() for sock in list(server.eio.sockets.values()))


def forget(sid: str) -> None:
    """Take an abandoned connection out of this process's rooms (no disconnect event)."""
    socketio.server.manager.disconnect(sid, "/", ignore_queue=True)


def _writer(redis_url: str) -> SocketIO:
    writer = _writers.get(redis_url)
    if writer is None:
        with _lock:
            writer = _writers.get(redis_url)
            if writer is None:
                # The manager is named rather than picked from the URL by Flask-SocketIO, which
                # knows redis:// but would hand redis+sentinel:// to kombu.
                manager = socketio_lib.RedisManager(
                    redis_url,
                    channel="flask-socketio",
                    write_only=True,
                    redis_options=dict(MESSAGE_QUEUE_OPTIONS),
                )
                writer = SocketIO(message_queue=redis_url, client_manager=manager)
                _writers[redis_url] = writer
    return writer


def emit(
    redis_url: str,
    event: str,
    data: Any,
    *,
    to: str | list[str] | None = None,
    skip: list[str] | None = None,
) -> None:
    """Emit ``event`` to a room (or rooms, or everyone when ``to`` is None), except to the
    connections (sids) in ``skip``.

    An empty room list reaches nobody (python-socketio would take it for "everyone").
    """
    if to is not None and not to:
        return
    if getattr(socketio, "server", None) is not None:
        socketio.emit(event, data, to=to, skip_sid=skip or None)
    else:
        _writer(redis_url).emit(event, data, to=to, skip_sid=skip or None)


def _server(redis_url: str) -> Any:
    """The web process's python-socketio server, or a worker's write-only one."""
    if getattr(socketio, "server", None) is not None:
        return socketio.server
    return _writer(redis_url).server


def leave_room(redis_url: str, sid: str, room: str) -> None:
    """Take a connection out of a room, on whichever web process holds it (python-socketio
    publishes the change on the message queue, ordered with the events)."""
    _server(redis_url).leave_room(sid, room, namespace="/")


def close_room(redis_url: str, room: str) -> None:
    """Take every connection out of a room, on every web process."""
    _server(redis_url).close_room(room, namespace="/")


def disconnect(redis_url: str, sid: str) -> None:
    """Close a connection on whichever web process holds it (its disconnect handler runs)."""
    _server(redis_url).disconnect(sid, namespace="/")


def rooms_of(sid: str) -> list[str]:
    """The rooms a connection of this web process is in."""
    return list(socketio.server.rooms(sid, namespace="/"))


def queue_message(manager: Any, event: str, data: Any, room: str) -> dict[str, Any]:
    """What ``PubSubManager.emit`` publishes for ``event`` with JSON ``data`` to ``room`` (a
    library internal: ``tests/test_engineio_contract.py`` compares the two)."""
    return {
        "method": "emit",
        "event": event,
        "data": [data],
        "binary": False,
        "namespace": "/",
        "room": room,
        "skip_sid": None,
        "callback": None,
        "host_id": manager.host_id,
    }


def emit_each(redis_url: str, event: str, items: list[tuple[Any, str]]) -> None:
    """Emit ``event`` with its own data to each room.

    From a worker, python-socketio would publish one message per emit, a Redis round trip
    each (most of an unread task's cost for a topic of ten); here they go in one pipeline, as
    the messages ``PubSubManager.emit`` itself builds (python-socketio is pinned, and the
    unread tests see these events arrive). Anything unusual falls back to ``emit``.
    """
    manager = None
    if getattr(socketio, "server", None) is None and len(items) > 1:
        manager = getattr(_writer(redis_url).server, "manager", None)
    if manager is None or not hasattr(manager, "_redis_connect"):
        for data, room in items:
            emit(redis_url, event, data, to=room)
        return
    try:
        if not manager.connected:
            manager._redis_connect()
        pipe = manager.redis.pipeline(transaction=False)
        for data, room in items:
            pipe.publish(
                manager.channel, manager.json.dumps(queue_message(manager, event, data, room))
            )
        pipe.execute()
    except Exception:  # the library's own path reconnects and retries
        manager.connected = False
        for data, room in items:
            emit(redis_url, event, data, to=room)
