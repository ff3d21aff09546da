"""Fan-out of one event to many connections: one encoding per event, one write per recipient.

python-socketio encodes an event once per emit, then hands each recipient's copy to that
connection's writer greenlet through a queue; the writer wakes up, re-frames the packet and
writes it. At 1,000 clients and 20 messages a second that is 20,000 queue round trips, greenlet
switches and frame encodings a second, about 30 us of Python each on top of a 5 us ``send``:
the web process's main cost (``global_message_alert`` goes to every device of a topic's members,
or every client with ``ALERT_AUDIENCE=everyone``; ``user_status_change`` to every client by
default). Measured with ``bench/load.py`` (figures in ``bench/README.md``).

This module keeps the library's path for anything unusual and adds a fast path for the common
case: when a connection is a plain websocket whose writer is idle with nothing queued, the
event's pre-built frame is written straight to its socket (non-blocking). Order per connection
is kept: the fast path writes only when nothing is queued or being written on that connection,
the writer takes the same per-connection lock for its own writes, and a partial write (a slow
reader's full socket buffer) is finished by a greenlet that holds the lock meanwhile, so
neither this emit nor the other recipients wait for a slow client. Everything else (polling
clients, an upgrade in progress, acks with callbacks, binary payloads, a connection that missed
its pings or is closing) takes python-socketio's own path.

Every connection's outgoing data is bounded (``MAX_PENDING_BYTES``): a client that stops
reading (while still answering pings) would otherwise grow the process without end, since
engine.io queues every packet for it. Each connection's queue counts the bytes put in and taken
out (O(1) per packet), plus the fast path's unfinished partial frame; past the limit the
connection is shut down (its blocked writes fail at once) and closed through engine.io, so the
usual disconnect handler runs (presence offline). Besides the counted bytes, the writer holds
at most the one batch it took from the queue, itself within the limit. Acks (answers to the
client's own requests, such as a ``sync`` of a megabyte) are counted apart, against
``ACK_ALLOWANCE`` times the limit.

Installed by ``install(server)`` on the web process only (gevent; the fast path also needs
gevent-websocket). It relies on engine.io internals, pinned in requirements.txt and checked by
``tests/test_engineio_contract.py``: ``_async['queue']`` makes every socket's queue,
``Socket.send`` puts packets and ``Socket.poll`` gets them, the websocket wrapper's app is the
engine.io ``Socket``'s bound handler.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.lock
import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet
from socketio.manager import Manager

from webapp import metrics

log = logging.getLogger(__name__)


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


def _packet_size(pkt: Any) -> int:
    """Bytes an engine.io packet occupies on the wire, about (type digit + text or bytes)."""
    data = getattr(pkt, "data", None)
    if isinstance(data, (str, bytes)):
        return 1 + len(data)
    return 1 if data is None else 64  # a ping, or the handshake's small dict


# An ack answers the client's own (rate-limited) request and may be big (a ``sync`` answer
# can pass a megabyte): acks are counted apart, against this many times the limit, so one big
# answer does not look like a client that stopped reading.
ACK_ALLOWANCE = 8


def _is_ack(pkt: Any) -> bool:
    """A Socket.IO ACK packet (text): engine.io MESSAGE whose payload starts with its type."""
    data = getattr(pkt, "data", None)
    return (
        getattr(pkt, "packet_type", None) == eio_packet.MESSAGE
        and isinstance(data, str)
        and data[:1] == str(sio_packet.ACK)
    )


def _pending_queue_class(
    base: type, server: socketio.Server, limit: int, user_of: Callable[[str], str | None]
) -> type:
    class PendingQueue(base):  # type: ignore[misc, valid-type]
        """A connection's outgoing queue that knows how many bytes wait in it.

        ``pending`` counts the packets in the queue and the fast path's unfinished partial
        frame. Past ``limit`` the connection is dropped (``_drop``); what is put after that is
        discarded, as it could never be delivered (the ``None`` that stops the writer is kept).
        """

        max_pending = limit

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.pending = 0
            self.acks = 0  # bytes of acks waiting (ACK_ALLOWANCE)
            self.overflowed = False

        def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
            if item is not None:
                if self.overflowed:
                    return
                if _is_ack(item):
                    self.acks += _packet_size(item)
                    if self.acks > self.max_pending * ACK_ALLOWANCE:
                        self._overflow()
                else:
                    self.add(_packet_size(item))
            super().put(item, block, timeout)

        def get(self, block: bool = True, timeout: float | None = None) -> Any:
            item = super().get(block, timeout)
            if item is not None:
                if _is_ack(item):
                    self.acks -= _packet_size(item)
                else:
                    self.pending -= _packet_size(item)
            return item

        def add(self, size: int) -> None:
            """Count ``size`` more bytes waiting; drop the connection past the limit."""
            self.pending += size
            if self.pending > self.max_pending:
                self._overflow()

        def _overflow(self) -> None:
            if not self.overflowed:
                self.overflowed = True
                gevent.spawn(_drop, server, self, user_of)

    return PendingQueue


def _drop(server: socketio.Server, queue: Any, user_of: Callable[[str], str | None]) -> None:
    """Close the connection whose queue overflowed, through engine.io's normal close."""
    eio = server.eio
    sock = next((s for s in list(eio.sockets.values()) if s.queue is queue), None)
    if sock is None or sock.closed or sock.closing:
        return
    sid = server.manager.sid_from_eio_sid(sock.sid, "/")
    metrics.SLOW_CLIENTS_DROPPED.inc()
    log.warning(
        "slow client dropped: user=%s sid=%s pending=%d bytes (MAX_PENDING_BYTES=%d)",
        user_of(sid) if sid else None,
        sid,
        queue.pending,
        queue.max_pending,
    )
    ws = getattr(sock, "beacon_ws", None)
    raw = getattr(ws, "_raw", None)
    if raw is not None:
        try:
            # Blocked writes (the writer, a partial frame's greenlet) fail now, and the reader
            # sees the end of the stream: every greenlet of the connection ends.
            raw.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    # The disconnect handlers run here (presence offline); no CLOSE packet: nobody reads it.
    sock.close(wait=False, abort=True, reason=eio.reason.SERVER_DISCONNECT)


def _websocket_class(base: type) -> type:
    class FanoutWebSocket(base):  # type: ignore[misc, valid-type]
        """engine.io's gevent-websocket wrapper, plus a write lock and ``try_write``."""

        def __init__(self, handler: Any, server: Any) -> None:
            super().__init__(handler, server)
            self._write_lock = gevent.lock.Semaphore()
            self._raw: Any = None
            self._queue: Any = None  # the engine.io socket's PendingQueue, when bounded

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
                if hasattr(owner.queue, "add"):
                    self._queue = owner.queue
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
                rest = memoryview(frame)[sent:]
                if self._queue is not None:
                    self._queue.add(len(rest))  # a slow reader's bytes count until written
                gevent.spawn(self._finish, rest)
            return True

        def _finish(self, rest: memoryview) -> None:
            try:
                self._sock.handler.socket.sendall(rest)
            except Exception:  # noqa: BLE001  (the reader/writer see the dead socket)
                pass
            finally:
                if self._queue is not None:
                    self._queue.pending -= len(rest)
                self._write_lock.release()

    return FanoutWebSocket


def install(
    server: socketio.Server,
    *,
    max_pending_bytes: int = 0,
    user_of: Callable[[str], str | None] = lambda _sid: None,
) -> bool:
    """Bound each connection's outgoing data to ``max_pending_bytes`` (0: unbounded; gevent
    only), and use the fast path's websocket wrapper (gevent + gevent-websocket only).
    ``user_of(sid)`` names the user in the line logged when a connection is dropped."""
    eio = server.eio
    if eio.async_mode != "gevent":
        return False
    if max_pending_bytes > 0:
        queue_class = _pending_queue_class(eio._async["queue"], server, max_pending_bytes, user_of)
        eio._async = {**eio._async, "queue": queue_class}
    try:
        import geventwebsocket  # noqa: F401
    except ImportError:
        return False
    eio._async = {**eio._async, "websocket": _websocket_class(eio._async["websocket"])}
    return True
