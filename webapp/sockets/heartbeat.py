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

from webapp import metrics, realtime
from webapp.extensions import db, socketio
from webapp.presence import attention
from webapp.presence.store import LocalConnections, presence
from webapp.presence.user_status import (
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
        presence().heartbeat(PROCESS_ID)
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
                remembered = presence().heartbeat(PROCESS_ID)
                if not remembered or CONNECTIONS.needs_rebuild:
                    _drop_left_topics()
                    came, went = rebuild_presence(PROCESS_ID, CONNECTIONS)
                    log.info(
                        "presence rebuilt (%s): %d connections, %d users back online, %d offline",
                        "Redis had forgotten this process" if not remembered else "catch-up",
                        len(CONNECTIONS),
                        len(came),
                        len(went),
                    )
                attention.idle_quiet_connections(CONNECTIONS, settings.presence_idle_after)
                if beats % sweep_every == 0:
                    sweep_stale_connections()
            except Exception:
                # Redis or the database is away: rebuild once they answer again.
                CONNECTIONS.bookkeeping_failed()
                log.warning("presence heartbeat failed; retrying in %.1fs", interval, exc_info=True)


def _drop_left_topics() -> None:
    """Forget the topics a connection no longer is in the room of: the integration API
    removes members through python-socketio's queue, which this process's own books miss
    (a rebuild must not mark them active there again)."""
    for sid, conn in CONNECTIONS.snapshot().items():
        rooms = set(realtime.rooms_of(sid))
        for topic_id in conn.topics:
            if realtime.topic_room(topic_id) not in rooms:
                CONNECTIONS.leave(sid, topic_id)


def end_connection(sid: str, user_id: str) -> bool:
    """What ending a connection does to this process's books and to presence: the disconnect
    handler's work, and the heartbeat's for connections that never got one. False when the
    connection was ended already."""
    if CONNECTIONS.remove(sid) is None:
        return False
    tokens.forget(sid)
    metrics.CONNECTIONS.dec()
    try:
        if presence().disconnect(user_id, sid, PROCESS_ID):
            apply_transition(user_id)
    except Exception:
        # Redis or the database is away: the heartbeat's rebuild finishes this when they
        # answer again (the user goes offline then, unless connected elsewhere).
        db.session.rollback()
        CONNECTIONS.bookkeeping_failed(user_id)
        log.warning("disconnect bookkeeping failed for user %s", user_id, exc_info=True)
    return True


def end_closed_connections() -> None:
    """End the connections whose socket closed without a disconnect event
    (``realtime.abandoned``); the heartbeat runs this every beat, in an app context."""
    connections = CONNECTIONS.snapshot()
    for sid in realtime.abandoned(connections):
        user_id = connections[sid].user_id
        if CONNECTIONS.user_of(sid) is None:
            continue  # its disconnect handler ran meanwhile
        realtime.forget(sid)
        end_connection(sid, user_id)
        log.info("connection %s of user %s closed while connecting: ended", sid, user_id)
