"""Web entry point. gevent must patch the standard library before anything else is imported."""

from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402

from gevent import pywsgi  # noqa: E402
from geventwebsocket.handler import WebSocketHandler  # noqa: E402

from config import load_settings  # noqa: E402
from webapp import create_app, gc_tuning  # noqa: E402

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


def serve() -> None:
    """What ``socketio.run`` does under gevent (a pywsgi server with gevent-websocket's
    handler), with ``_Handler``."""
    settings = app.extensions["beacon_settings"]
    server = pywsgi.WSGIServer(
        (settings.host, settings.port), app, handler_class=_Handler, log=None
    )
    server.serve_forever()


if __name__ == "__main__":
    serve()
