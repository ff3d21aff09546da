"""Fan-out of one event to many connections: one encoding per event, one write per recipient.

python-socketio encodes an event once per emit, then hands each recipient's copy to that
connection's writer greenlet through a queue; the writer wakes up, re-frames the packet and
writes it. At 1,000 clients and 20 messages a second that is 20,000 queue round trips, greenlet
switches and frame encodings a second, about 30 us of Python each on top of a 5 us ``send``:
the web process's main cost (``global_message_alert`` and ``user_status_change`` go to every
client). Measured with ``bench/load.py`` (figures in ``bench/README.md``).

This module keeps the library's path for anything unusual and adds a fast path for the common
case: when a connection is a plain websocket whose writer is idle with nothing queued, the
event's pre-built frame is written straight to its socket (non-blocking). Order per connection
is kept: the fast path writes only when nothing is queued or being written on that connection,
the writer takes the same per-connection lock for its own writes, and a partial write (a slow
reader's full socket buffer) is finished by a greenlet that holds the lock meanwhile, so
neither this emit nor the other recipients wait for a slow client. Everything else (polling
clients, an upgrade in progress, acks with callbacks, binary payloads, a connection that missed
its pings or is closing) takes python-socketio's own path.

Installed by ``install(server)`` on the web process only (gevent + gevent-websocket).
"""

from __future__ import annotations

import socket
import time
from typing import Any

import gevent
import gevent.lock
import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet
from socketio.manager import Manager


def _text_frame(payload: bytes) -> bytes:
    """A final, unmasked websocket text frame (RFC 6455 section 5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n <= 0xFFFF:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload


class FanoutManager(Manager):
    """``Manager.emit`` with the direct-write fast path (placed after PubSubManager in the MRO,
    so it serves local emits and events arriving from other processes through Redis alike)."""

    def emit(  # type: ignore[override]
        self,
        event: str,
        data: Any,
        namespace: str,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        room = to or room
        if callback or namespace not in self.rooms:
            return super().emit(
                event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs
            )
        if isinstance(data, tuple):
            args = list(data)
        elif data is not None:
            args = [data]
        else:
            args = []
        encoded = self.server.packet_class(
            sio_packet.EVENT, namespace=namespace, data=[event, *args]
        ).encode()
        if isinstance(encoded, list):  # binary attachments: the library's path
            return super().emit(
                event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs
            )
        eio_pkt = eio_packet.Packet(eio_packet.MESSAGE, encoded)
        text = eio_pkt.encode()
        frame = _text_frame(text.encode("utf-8"))
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        eio = self.server.eio
        sockets = eio.sockets
        ping_timeout = eio.ping_timeout
        now = time.time()
        for sid, eio_sid in self.get_participants(namespace, room):
            if sid in skip:
                continue
            sock = sockets.get(eio_sid)
            ws = getattr(sock, "beacon_ws", None)
            if (
                ws is None
                or sock.closing
                or sock.closed
                or sock.upgrading
                or not sock.upgraded
                or (sock.last_ping and now - sock.last_ping > ping_timeout)
                or not sock.queue.empty()
                or not ws.try_write(frame)
            ):
                self.server._send_eio_packet(eio_sid, eio_pkt)
        return None


class FanoutRedisManager(socketio.RedisManager, FanoutManager):
    """The Redis message queue (same channel and wire format) with the fast local fan-out."""


def _websocket_class(base: type) -> type:
    class FanoutWebSocket(base):  # type: ignore[misc, valid-type]
        """engine.io's gevent-websocket wrapper, plus a write lock and ``try_write``."""

        def __init__(self, handler: Any, server: Any) -> None:
            super().__init__(handler, server)
            self._write_lock = gevent.lock.Semaphore()
            self._raw: Any = None

        def __call__(self, environ: Any, start_response: Any) -> Any:
            ws = environ.get("wsgi.websocket")
            owner = getattr(self.app, "__self__", None)  # the engine.io Socket
            if ws is not None and owner is not None:
                try:
                    self._raw = ws.handler.socket._sock  # non-blocking OS socket
                except AttributeError:
                    self._raw = None
                else:
                    # Small frames must leave now: with Nagle on, a frame written while the
                    # previous one is unacknowledged waits for the client's delayed ACK
                    # (40 ms on Linux), which was most of the delivery latency.
                    self._raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._raw is not None:
                    owner.beacon_ws = self
            try:
                return super().__call__(environ, start_response)
            finally:
                if owner is not None:
                    owner.beacon_ws = None

        def send(self, message: Any) -> Any:  # the writer greenlet's path
            with self._write_lock:
                return super().send(message)

        def try_write(self, frame: bytes) -> bool:
            """Write ``frame`` now if nothing else is being written; False: use the queue."""
            if self._write_lock.locked() or self._sock.closed:
                return False
            try:
                sent = self._raw.send(frame)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                return False  # the writer's path notices and closes the connection
            if sent < len(frame):
                self._write_lock.acquire()
                gevent.spawn(self._finish, memoryview(frame)[sent:])
            return True

        def _finish(self, rest: memoryview) -> None:
            try:
                self._sock.handler.socket.sendall(rest)
            except Exception:  # noqa: BLE001  (the reader/writer see the dead socket)
                pass
            finally:
                self._write_lock.release()

    return FanoutWebSocket


def install(server: socketio.Server) -> bool:
    """Use the fast path's websocket wrapper on this server (gevent + gevent-websocket only)."""
    eio = server.eio
    if eio.async_mode != "gevent":
        return False
    try:
        import geventwebsocket  # noqa: F401
    except ImportError:
        return False
    eio._async = {**eio._async, "websocket": _websocket_class(eio._async["websocket"])}
    return True
