"""Web entry point. gevent must patch the standard library before anything else is imported."""

from gevent import monkey

monkey.patch_all()

import logging  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent import pywsgi  # noqa: E402
from geventwebsocket.handler import WebSocketHandler  # noqa: E402

from config import load_settings  # noqa: E402
from webapp import create_app, gc_tuning, realtime  # noqa: E402
from webapp.platform import inflight  # noqa: E402

try:
    _settings = load_settings()
except ValueError as exc:  # a setting the loader refuses: the reason, not a traceback
    raise SystemExit(f"beacon: refusing to start: {exc}") from None
app = create_app(_settings)
if app.extensions["beacon_settings"].gc_tuning:
    gc_tuning.tune()


class _Handler(WebSocketHandler):
    """Flask-SocketIO's gevent handler, with Nagle off on each connection: pywsgi writes a
    small answer's headers and body in two sends, and the second waited for the client's
    delayed ACK (40 ms on Linux) on every REST call (bench/README.md)."""

    def __init__(self, sock: socket.socket, *args: object, **kwargs: object) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().__init__(sock, *args, **kwargs)


# How long a stopping process waits for the events and requests it is handling (below the
# unit's TimeoutStopSec, deploy/systemd/beacon-web@.service).
STOP_GRACE = 5.0
FLUSH = 0.5
log = logging.getLogger("beacon.web")


def _counted(wsgi_app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    """Count REST requests as in flight (Socket.IO's transport requests are long-lived; its
    events are counted where they are handled, ``sockets/acks.py``)."""

    def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith("/socket.io/"):
            return wsgi_app(environ, start_response)
        with inflight.tracked():
            return wsgi_app(environ, start_response)

    return counted


def _stop(server: pywsgi.WSGIServer) -> None:
    """SIGTERM (systemd, a deploy): take no new connections (a balancer sends them to another
    process), let the events and requests being handled finish and their answers go out, for
    up to STOP_GRACE seconds, then close the rest and exit. Clients reconnect to another
    process; presence forgets this process's connections after the heartbeat TTL, so users
    who come straight back elsewhere do not flap offline."""
    log.info("stopping: no new connections, %d events and requests to finish", inflight.count())
    # Not server.close(): it would end serve_forever, and the process with it, at once.
    server.stop_accepting()
    server.socket.close()  # refused, not left waiting in the backlog
    deadline = time.monotonic() + STOP_GRACE
    # The work, then what it wrote: an ack is queued for its connection's writer, and closing
    # the connection before that writes it would lose it.
    while (inflight.count() or realtime.unsent()) and time.monotonic() < deadline:
        gevent.sleep(0.05)
    # A packet taken off its queue may still be on its way out (a long-poll's response, a
    # writer's send): a moment for those writes before the process ends with the sockets.
    gevent.sleep(FLUSH)
    log.info(
        "stopped (%d events and requests cut short, %d packets unsent)",
        inflight.count(),
        realtime.unsent(),
    )
    server.stop(timeout=0)


def serve() -> None:
    """What ``socketio.run`` does under gevent (a pywsgi server with gevent-websocket's
    handler), with ``_Handler``, and a graceful stop on SIGTERM."""
    settings = app.extensions["beacon_settings"]
    server = pywsgi.WSGIServer(
        (settings.host, settings.port), _counted(app), handler_class=_Handler, log=None
    )
    gevent.signal_handler(signal.SIGTERM, _stop, server)
    server.serve_forever()


if __name__ == "__main__":
    serve()
