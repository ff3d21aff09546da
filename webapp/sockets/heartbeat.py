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

from webapp.extensions import socketio
from webapp.services import context
from webapp.services.presence import LocalConnections
from webapp.services.user_status import rebuild_presence, sweep_stale_connections

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
