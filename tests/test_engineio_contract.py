"""The python-engineio / python-socketio internals ``webapp/realtime/fanout.py`` relies on.

The per-connection bound on outgoing data (``MAX_PENDING_BYTES``) replaces engine.io's queue
class and closes sockets itself; the fast path wraps engine.io's gevent websocket class. None
of that is public API: these tests run the library's own code in-process (no server, no
network) and fail, naming what changed, if an upgrade moves it. Versions are pinned in
requirements.txt.
"""

from __future__ import annotations

import gevent
import pytest
import socketio
from engineio import packet as eio_packet
from engineio import socket as eio_socket
from engineio.async_drivers import gevent as eio_gevent

from webapp import metrics
from webapp.realtime import fanout as broadcast

LIMIT = 64 * 1024


@pytest.fixture
def bounded() -> socketio.Server:
    server = socketio.Server(async_mode="gevent")
    assert broadcast.install(server, max_pending_bytes=LIMIT, user_of=lambda sid: "u-1")
    return server


def _dropped() -> float:
    return metrics.registry.get_sample_value("beacon_slow_clients_dropped_total") or 0.0


def _socket(server: socketio.Server, sid: str = "eio-1") -> eio_socket.Socket:
    # engine.io's Server._handle_connect makes its sockets exactly so.
    sock = eio_socket.Socket(server.eio, sid)
    server.eio.sockets[sid] = sock
    return sock


def test_the_gevent_driver_has_the_classes_we_replace():
    assert {"queue", "websocket", "queue_empty"} <= set(eio_gevent._async), (
        "engine.io's gevent driver no longer lists its queue/websocket classes in _async"
    )


def test_every_socket_gets_its_queue_from_the_async_queue_class(bounded):
    sock = _socket(bounded)
    assert hasattr(sock.queue, "add") and sock.queue.pending == 0, (
        "engine.io sockets no longer create their queue through server._async['queue']"
    )


def test_send_puts_and_poll_gets_through_the_counted_queue(bounded):
    sock = _socket(bounded)
    sock.send(eio_packet.Packet(eio_packet.MESSAGE, "x" * 999))
    sock.send(eio_packet.Packet(eio_packet.MESSAGE, b"y" * 99))
    assert sock.queue.pending == 1000 + 100, "Socket.send no longer calls queue.put(packet)"
    packets = sock.poll()
    assert len(packets) == 2 and sock.queue.pending == 0, "Socket.poll no longer uses queue.get"


def test_a_queue_past_the_limit_closes_its_socket_through_the_disconnect_path(bounded):
    reasons: list[object] = []
    bounded.eio.on("disconnect", lambda sid, reason: reasons.append((sid, reason)))
    sock = _socket(bounded)
    before = _dropped()
    for _ in range(LIMIT // 1000 + 1):
        sock.send(eio_packet.Packet(eio_packet.MESSAGE, "z" * 999))
    assert sock.queue.overflowed
    held = sock.queue.pending
    sock.send(eio_packet.Packet(eio_packet.MESSAGE, "more"))  # discarded: nobody will read it
    assert sock.queue.pending == held
    gevent.sleep(0)  # the drop runs in its own greenlet, not in the emitting one
    gevent.wait(timeout=1)
    assert sock.closed, "Socket.close(wait=False, abort=True, reason=...) no longer closes"
    assert reasons == [("eio-1", bounded.eio.reason.SERVER_DISCONNECT)]
    assert _dropped() == before + 1
    queued = [sock.queue.get(block=False) for _ in range(sock.queue.qsize())]
    assert queued[-1] is None, "close() no longer wakes the writer with a None"
    assert sock.queue.pending == 0


def test_the_socketio_manager_maps_engineio_sids(bounded):
    assert bounded.manager.sid_from_eio_sid("unknown", "/") is None


def test_the_websocket_wrapper_sees_the_engineio_socket_as_its_app(bounded):
    sock = _socket(bounded)
    ws_class = bounded.eio._async["websocket"]
    ws = ws_class(sock._websocket_handler, bounded.eio)
    assert getattr(ws.app, "__self__", None) is sock, (
        "engine.io no longer hands its websocket class the Socket's bound handler"
    )


def test_emit_each_publishes_what_the_library_publishes() -> None:
    """``realtime.emit_each`` builds the message queue's messages itself (one pipeline for many
    rooms): they must be what python-socketio's own ``emit`` publishes."""
    import socketio

    from webapp import realtime

    manager = socketio.RedisManager("redis://127.0.0.1:9/0", write_only=True)
    published: list[dict] = []
    manager._publish = published.append  # type: ignore[method-assign]
    manager.emit("unread_update", {"topic_id": "t", "unread_count": 3}, room="user:1")
    assert published == [
        realtime.queue_message(
            manager, "unread_update", {"topic_id": "t", "unread_count": 3}, "user:1"
        )
    ]


def test_acks_are_told_from_events_by_their_first_character() -> None:
    """The bound on a connection's outgoing bytes counts acks apart (``fanout._is_ack``): an
    ACK's text packet must start with its type, and an event's must not."""
    from socketio import packet as sio_packet

    ack = sio_packet.Packet(sio_packet.ACK, data=[{"ok": True}], id=7).encode()
    event = sio_packet.Packet(sio_packet.EVENT, data=["sync", {"ok": True}]).encode()
    assert broadcast._is_ack(eio_packet.Packet(eio_packet.MESSAGE, ack))
    assert not broadcast._is_ack(eio_packet.Packet(eio_packet.MESSAGE, event))
    assert not broadcast._is_ack(eio_packet.Packet(eio_packet.PING))
