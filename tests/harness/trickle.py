"""A loopback HTTP(S) server that answers, or trickles its answer one byte at a time.

Why: a socket timeout bounds each read, so a push service that sends a byte every 0.3 s never
trips it; tests of the sender's one deadline per request need such a service, real.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

# What a connection does once it has read a request ("handshake": before any TLS).
OK = "ok"  # 201, keep-alive
TRICKLE_HEADERS = "headers"  # a status line, then a header one byte at a time, forever
TRICKLE_BODY = "body"  # status line and headers at once, then the body one byte at a time
TRICKLE_HANDSHAKE = "handshake"  # a TLS record header promising 16 KiB, one byte at a time


@dataclass
class Held:
    """One connection the trickling server accepted."""

    mode: str
    requested_at: float | None = None  # monotonic: the request (head and body) was read
    closed_at: float | None = None  # monotonic: the client closed (or reset) it


@dataclass
class TrickleServer:
    """A loopback TCP server whose n-th connection behaves as ``modes[n]`` (the last repeats).

    Each connection runs in a thread of its own; a trickling one sends a byte every
    ``interval`` seconds until the client goes away, and records when it did.
    """

    modes: list[str]
    tls: ssl.SSLContext | None = None
    interval: float = 0.3
    held: list[Held] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def __enter__(self) -> TrickleServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def endpoint(self, path: str = "/push/abc", scheme: str = "http") -> str:
        host = "localhost" if scheme == "https" else "127.0.0.1"
        return f"{scheme}://{host}:{self.port}{path}"

    def holding(self) -> int:
        """Connections trickling right now (their request was read, the client is still on)."""
        with self._lock:
            return sum(1 for h in self.held if h.mode != OK and h.closed_at is None)

    def close(self) -> None:
        self._stopped.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self._listener.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                held = Held(self.modes[min(len(self.held), len(self.modes) - 1)])
                self.held.append(held)
            threading.Thread(target=self._serve, args=(conn, held), daemon=True).start()

    def _serve(self, conn: socket.socket, held: Held) -> None:
        try:
            if held.mode == TRICKLE_HANDSHAKE:
                held.requested_at = time.monotonic()
                self._trickle(conn, held, b"\x16\x03\x03\x40\x00", b"\x00")
                return
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            reader = conn.makefile("rb")
            while True:
                length = 0
                while (line := reader.readline(65537)) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                if not line:
                    return
                reader.read(length)
                held.requested_at = time.monotonic()
                if held.mode == OK:
                    conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
                    continue
                if held.mode == TRICKLE_HEADERS:
                    self._trickle(conn, held, b"HTTP/1.1 201 Created\r\nX-Slow: ", b"a")
                else:
                    head = b"HTTP/1.1 201 Created\r\nContent-Length: 100000\r\n\r\n"
                    self._trickle(conn, held, head, b"z")
                return
        except (OSError, ValueError):
            pass
        finally:
            held.closed_at = held.closed_at or time.monotonic()
            conn.close()

    def _trickle(self, conn: socket.socket, held: Held, first: bytes, then: bytes) -> None:
        """Send ``first``, then ``then`` every ``interval`` until the client closes."""
        conn.sendall(first)
        conn.settimeout(self.interval)
        while not self._stopped.is_set():
            try:
                if not conn.recv(1):  # the client closed its end
                    break
            except TimeoutError:
                conn.sendall(then)
            except (OSError, ssl.SSLError):  # reset by the client
                break
        held.closed_at = time.monotonic()
