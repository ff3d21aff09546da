"""The python-socketio / python-engineio internals ``webapp/realtime/session_gate.py`` relies on.

The gate wraps the handlers engine.io calls for a session (``connect``, ``message``,
``disconnect``), refuses a handshake by returning a value from ``connect``, reads the
Socket.IO manager to know whether a session's connection passed the connect handler, and
closes sessions with ``Socket.close(wait=False, reason=...)``. None of that is public API:
these tests drive the library's own code in-process over long-polling requests (no network)
and fail, naming what changed, if an upgrade moves it. Versions are pinned in
requirements.txt.
"""

from __future__ import annotations

import io
import json
from typing import Any

import gevent
import pytest
import socketio

from webapp.realtime import session_gate


def _request(server: socketio.Server, method: str, query: str, body: str = "") -> tuple[str, str]:
    data = body.encode()
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": "/socket.io/",
        "QUERY_STRING": query,
        "CONTENT_TYPE": "text/plain;charset=UTF-8",
        "CONTENT_LENGTH": str(len(data)),
        "wsgi.input": io.BytesIO(data),
        "wsgi.url_scheme": "http",
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "REMOTE_ADDR": "127.0.0.1",
    }
    status: list[str] = []
    answer = server.handle_request(environ, lambda s, _headers: status.append(s))
    return status[0], b"".join(answer).decode()


def _open(server: socketio.Server) -> str:
    status, body = _request(server, "GET", "EIO=4&transport=polling")
    assert status.startswith("200") and body.startswith("0{"), (status, body)
    return json.loads(body[1:])["sid"]


def _post(server: socketio.Server, eio_sid: str, packet: str) -> None:
    status, body = _request(server, "POST", f"EIO=4&transport=polling&sid={eio_sid}", packet)
    assert status.startswith("200"), (status, body)


def _settle(condition: Any) -> None:
    """Let the handler greenlets engine.io started run until ``condition()`` holds."""
    for _ in range(500):
        if condition():
            return
        gevent.sleep(0.002)
    raise AssertionError("the handler greenlet did not finish")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def gated() -> tuple[socketio.Server, session_gate.SessionGate, Clock]:
    server = socketio.Server(async_mode="gevent", monitor_clients=False)

    @server.on("connect")
    def connect(_sid: str, _environ: dict, auth: Any) -> bool:
        return auth == {"token": "good"}

    clock = Clock()
    gate = session_gate.SessionGate(
        server, auth_timeout=10, max_attempts=2, max_pending=1, clock=clock
    )
    gate.install()
    gate._sweeping = True  # the test calls sweep() itself
    return server, gate, clock


def test_the_engineio_server_calls_the_socketio_handlers_we_wrap():
    server = socketio.Server(async_mode="gevent")
    handlers = server.eio.handlers
    for event, method in (
        ("connect", "_handle_eio_connect"),
        ("message", "_handle_eio_message"),
        ("disconnect", "_handle_eio_disconnect"),
    ):
        assert getattr(handlers.get(event), "__func__", None) is getattr(socketio.Server, method), (
            f"engine.io's {event!r} handler is no longer socketio.Server.{method}"
        )


def test_a_value_returned_by_the_connect_handler_refuses_the_handshake(gated):
    server, gate, _clock = gated
    eio_sid = _open(server)
    assert list(gate.pending) == [eio_sid]
    status, body = _request(server, "GET", "EIO=4&transport=polling")
    assert status.startswith("401"), "engine.io no longer refuses a handshake its handler refused"
    assert json.loads(body) == session_gate.REFUSED, "the refusal body is no longer our JSON"
    assert eio_sid in server.eio.sockets


def test_refused_connect_packets_close_the_session(gated):
    server, gate, _clock = gated
    eio_sid = _open(server)
    _post(server, eio_sid, '40{"token":"bad"}')
    _settle(lambda: gate.pending[eio_sid].failures == 1 and not gate.pending[eio_sid].in_flight)
    assert not server.eio.sockets[eio_sid].closed
    _post(server, eio_sid, '40{"token":"bad"}')
    _settle(lambda: eio_sid not in gate.pending)
    sock = server.eio.sockets.get(eio_sid)
    assert sock is None or sock.closed, "Socket.close(wait=False, reason=...) no longer closes"
    _open(server)  # the slot is free again


def test_the_manager_says_when_a_session_is_authenticated(gated):
    server, gate, clock = gated
    eio_sid = _open(server)
    assert not gate.authenticated(eio_sid)
    _post(server, eio_sid, '40{"token":"good"}')
    _settle(lambda: eio_sid not in gate.pending)
    assert gate.authenticated(eio_sid), "manager.sid_from_eio_sid/is_connected changed"
    sid = server.manager.sid_from_eio_sid(eio_sid, "/")
    # A server-side disconnect leaves the Engine.IO session open: pending again, from now.
    clock.now += 60
    server.disconnect(sid)
    assert not gate.authenticated(eio_sid)
    assert eio_sid in gate.pending and gate.pending[eio_sid].since == clock.now
    clock.now += 11
    assert gate.sweep() == 1
    assert eio_sid not in gate.pending and server.eio.sockets[eio_sid].closed


def test_a_client_that_leaves_its_namespace_is_pending_again(gated):
    server, gate, _clock = gated
    eio_sid = _open(server)
    _post(server, eio_sid, '40{"token":"good"}')
    _settle(lambda: eio_sid not in gate.pending)
    _post(server, eio_sid, "41")
    _settle(lambda: eio_sid in gate.pending)


def test_the_timeout_closes_only_sessions_that_are_due(gated):
    server, gate, clock = gated
    gate.max_pending = 0
    first = _open(server)
    clock.now += 5
    second = _open(server)
    clock.now += 5
    assert gate.sweep() == 1
    assert server.eio.sockets[first].closed and not server.eio.sockets[second].closed
    assert list(gate.pending) == [second]
    # The engine.io disconnect handler forgets a session the client closed.
    _request(server, "POST", f"EIO=4&transport=polling&sid={second}", "1")
    assert not gate.pending
