"""This web process's liveness in Redis, and the sweep of web processes that died.

Started on the first connection (not at import), so CLI commands and workers that build the
app never run it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid

from flask import Flask

from webapp import metrics
from webapp.extensions import db, socketio
from webapp.services import context
from webapp.services.presence import LocalConnections
from webapp.services.user_status import (
    apply_transition,
    rebuild_presence,
    sweep_stale_connections,
)
from webapp.sockets import tokens

log = logging.getLogger(__name__)

PROCESS_ID = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
# This process's own list of its live connections, to rebuild Redis from when it forgets.
CONNECTIONS = LocalConnections()
_started = False
_lock = threading.Lock()


def ensure_started(app: Flask) -> None:
    """Beat once now (so this process counts as alive before it registers connections)."""
    global _started
    if _started:
        return
    with _lock:
        if _started:
            return
        context.presence().heartbeat(PROCESS_ID)
        socketio.start_background_task(_loop, app)
        _started = True


def _loop(app: Flask) -> None:
    settings = app.extensions["beacon_settings"]
    interval = settings.presence_heartbeat_interval
    sweep_every = max(1, round(settings.presence_sweep_interval / interval))
    beats = 0
    while True:
        socketio.sleep(interval)
        beats += 1
        with app.app_context():
            try:
                end_closed_connections()
                remembered = context.presence().heartbeat(PROCESS_ID)
                if not remembered or CONNECTIONS.needs_rebuild:
                    came, went = rebuild_presence(PROCESS_ID, CONNECTIONS)
                    log.info(
                        "presence rebuilt (%s): %d connections, %d users back online, %d offline",
                        "Redis had forgotten this process" if not remembered else "catch-up",
                        len(CONNECTIONS),
                        len(came),
                        len(went),
                    )
                if beats % sweep_every == 0:
                    sweep_stale_connections()
            except Exception:
                # Redis or the database is away: rebuild once they answer again.
                CONNECTIONS.bookkeeping_failed()
                log.warning("presence heartbeat failed; retrying in %.1fs", interval, exc_info=True)


def _closed_connections() -> list[tuple[str, str]]:
    """``(sid, user)`` of the connections counted here whose socket is gone, though no
    disconnect event came for them.

    python-socketio ignores an Engine.IO close that arrives while the connect handler runs (the
    socket is still pending then), and marks the socket connected when the handler returns: a
    long-polling client that posts the connect packet and, on another request, a close leaves
    such a connection, online for good (tests/faults/test_connect_close_race.py). A socket whose
    connect or disconnect handler is still running is left to it. No yield in here.
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
    closed = []
    for sid, conn in CONNECTIONS.snapshot().items():
        if sid in busy:
            continue
        eio_sid = registered.get(sid)
        sock = server.eio.sockets.get(eio_sid) if eio_sid is not None else None
        if sock is None or sock.closed:
            closed.append((sid, conn.user_id))
    return closed


def end_closed_connections() -> None:
    """Do for each connection ``_closed_connections`` finds what its disconnect handler would
    have done (the heartbeat runs this every beat, in an app context)."""
    for sid, user_id in _closed_connections():
        if CONNECTIONS.remove(sid) is None:
            continue
        tokens.forget(sid)
        metrics.CONNECTIONS.dec()
        socketio.server.manager.disconnect(sid, "/", ignore_queue=True)
        log.info("connection %s of user %s closed while connecting: ended", sid, user_id)
        try:
            if context.presence().disconnect(user_id, sid, PROCESS_ID):
                apply_transition(user_id)
        except Exception:
            db.session.rollback()
            CONNECTIONS.bookkeeping_failed(user_id)
            log.warning("disconnect bookkeeping failed for user %s", user_id, exc_info=True)
