"""HTTP/1.1 to hosts users chose (push services, webhook receivers): keep-alive pools per
origin, one deadline per request, the connect-time address guard.

Requests never follow redirects (that would let a URL bounce the worker into the internal
network) and are bounded by one deadline from connect to the answer's last byte (a socket
timeout alone bounds each read, so a server that trickles a byte at a time held a worker for
hours): every socket call gets the time left as its timeout. TLS runs over memory buffers
(``SSLObject``) so that it, too, only waits in those calls: gevent's ``SSLSocket`` restarts its
timeout for every chunk of a record. https is verified against
``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` if set, else certifi's bundle. Each request goes out
with one ``sendall``, head and body.
"""

from __future__ import annotations

import email.utils
import functools
import http.client
import io
import ipaddress
import math
import os
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from webapp.platform.outbound import dns
from webapp.platform.outbound.addresses import host_is_allowlisted, is_public_address

_SPACE_OR_CONTROL = re.compile(r"[\x00-\x20\x7f]")
BODY_READ_LIMIT = 4096  # never buffer more than this of an answer
MAX_ORIGINS = 16  # origins with a connection pool (oldest dropped first)


class Target(NamedTuple):
    """Where a request to a URL goes."""

    scheme: str  # "https" or "http"
    host: str  # hostname or IP, lowercased, no brackets
    port: int
    origin: str  # scheme://host[:port]: the pool's key (and Web Push's VAPID aud)
    path: str  # the request target: path and query


def parse_target(endpoint: str) -> Target:
    """Split a URL; ``ValueError`` if it is not an http(s) URL we can post to."""
    parts = urlsplit(endpoint)
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("https", "http") or not host or not host.isascii():
        raise ValueError("endpoint is not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("endpoint has credentials")
    port = parts.port  # ValueError on a bad port
    default = 443 if scheme == "https" else 80
    shown = f"[{host}]" if ":" in host else host
    origin = f"{scheme}://{shown}" if port in (None, default) else f"{scheme}://{shown}:{port}"
    if not endpoint.isascii() or _SPACE_OR_CONTROL.search(endpoint):
        raise ValueError("endpoint has characters a request line cannot carry")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(scheme, host, default if port is None else port, origin, path)


def network_error(exc: BaseException, connected: bool) -> str:
    """The kind of a network failure, named as ``requests`` named them (reasons stay stable)."""
    if isinstance(exc, ssl.SSLError):
        kind = "SSLError"  # certificate verification failures included
    elif isinstance(exc, TimeoutError):
        kind = "ReadTimeout" if connected else "ConnectTimeout"
    else:
        kind = "ConnectionError"  # refused, reset, DNS, a malformed answer
    return f"network error: {kind}"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from ``now``: delta-seconds or an HTTP-date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


class RequestError(Exception):
    """A request failed on the network; the message names the kind only (no URL)."""


class ForbiddenAddressError(ConnectionError):
    """A URL's host resolved, at connect time, to an address we must not talk to."""

    reason = "endpoint host resolved to a non-public address at connect time; nothing sent"


def ca_bundle() -> str | None:
    """The CA bundle https is verified against: the one the environment names, else certifi's.

    ``None`` (no certifi) means the system's default trust store.
    """
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        return bundle
    try:
        import certifi
    except ImportError:  # pragma: no cover - certifi comes with requests
        return None
    return certifi.where()


def tls_context() -> ssl.SSLContext:
    """Certificate and host name verification, TLS 1.2 or later (``ssl`` module defaults)."""
    context = ssl.create_default_context(cafile=ca_bundle())
    context.set_alpn_protocols(["http/1.1"])
    return context


def peer_check(allowed_hosts: tuple[str, ...]) -> Callable[[str, int, socket.socket], None]:
    """Raises ``ForbiddenAddressError`` if a new connection reached a non-public address."""

    def check(host: str, port: int, sock: socket.socket) -> None:
        if host_is_allowlisted(host, port, allowed_hosts):
            return
        try:
            peer = ipaddress.ip_address(str(sock.getpeername()[0]).split("%", 1)[0])
        except (OSError, ValueError, IndexError):
            peer = None
        if peer is None or not is_public_address(peer):
            raise ForbiddenAddressError(ForbiddenAddressError.reason)

    return check


def _time_left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("request deadline passed")
    return left


def _open(host: str, port: int, deadline: float) -> socket.socket:
    """TCP to ``host`` (each address in turn), bounded by the deadline as a whole."""
    error: OSError | None = None
    for family, kind, proto, _, address in dns.getaddrinfo(
        host, port, timeout=_time_left(deadline)
    ):
        left = _time_left(deadline)
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left)
            sock.connect(address)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error if error is not None else OSError("getaddrinfo returned no address")


class _DeadlineSocket:
    """A connection's socket (``conn.sock``): every call waits at most until ``deadline``.

    Only what http.client and the pool use: ``sendall``, ``recv_into`` (through ``makefile``),
    ``fileno``, ``close``. With ``tls``, bytes go through an ``SSLObject`` over memory buffers.
    """

    __slots__ = ("_sock", "_tls", "_incoming", "_outgoing", "deadline")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._tls: ssl.SSLObject | None = None
        self._incoming: ssl.MemoryBIO | None = None
        self._outgoing: ssl.MemoryBIO | None = None
        self.deadline = deadline

    def start_tls(self, context: ssl.SSLContext, host: str) -> None:
        """The TLS handshake (certificate and host name verified), within the deadline."""
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_hostname=host)
        self._tls_call(self._tls.do_handshake)

    def sendall(self, data: bytes) -> None:
        if self._tls is None:
            self._sock.settimeout(_time_left(self.deadline))
            self._sock.sendall(data)
        else:
            view = memoryview(data)
            while view:
                view = view[self._tls_call(self._tls.write, view) :]

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int:
        if self._tls is None:
            self._sock.settimeout(_time_left(self.deadline))
            return self._sock.recv_into(buffer, nbytes)
        try:
            return self._tls_call(self._tls.read, nbytes or len(buffer), buffer)
        except ssl.SSLEOFError:
            return 0  # closed without close_notify, as SSLSocket's suppress_ragged_eofs

    def _tls_call(self, operation: Callable[..., Any], *args: Any) -> Any:
        """Run an ``SSLObject`` operation, moving bytes between the socket and its buffers."""
        incoming, outgoing = self._incoming, self._outgoing
        assert incoming is not None and outgoing is not None
        while True:
            try:
                result = operation(*args)
            except ssl.SSLWantReadError:
                wanted = True
            else:
                wanted = False
            if outgoing.pending:  # handshake messages, records to send
                data = outgoing.read()
                self._sock.settimeout(_time_left(self.deadline))
                self._sock.sendall(data)
            if not wanted:
                return result
            self._sock.settimeout(_time_left(self.deadline))
            data = self._sock.recv(65536)
            if data:
                incoming.write(data)
            else:
                incoming.write_eof()

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        if mode != "rb":
            raise ValueError("only 'rb' is supported")
        return io.BufferedReader(socket.SocketIO(self, "rb"))  # type: ignore[arg-type]

    def _decref_socketios(self) -> None:
        """Called when a ``makefile`` reader is closed; the socket's life is ``close``'s."""

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()


class _Connection(http.client.HTTPConnection):
    """One keep-alive HTTP/1.1 connection to an origin.

    ``connect`` checks the peer address (when guarded) before any byte is sent, the TLS
    handshake included. ``request`` sends the head and the body with one ``sendall``:
    http.client writes them separately, which costs a second trip through the kernel's TCP
    stack on both sides (on loopback the sender pays for the receiver's side as well).
    ``sock`` is a ``_DeadlineSocket``: set its ``deadline`` before each request.
    """

    sock: _DeadlineSocket | None  # type: ignore[assignment]
    auto_open = 0  # Pools.post connects, with the request's deadline

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None,
        check: Callable[[str, int, socket.socket], None] | None,
    ) -> None:
        super().__init__(host, port)
        self._tls = tls
        self._check = check
        self._held: list[bytes] | None = None

    def connect(self, deadline: float) -> None:  # type: ignore[override]
        raw = _open(self.host, self.port, deadline)
        try:
            if self._check is not None:
                self._check(self.host, self.port, raw)
            sock = _DeadlineSocket(raw, deadline)
            if self._tls is not None:
                sock.start_tls(self._tls, self.host)
        except BaseException:
            raw.close()
            raise
        self.sock = sock

    def request(  # type: ignore[override]
        self, method: str, url: str, body: bytes, headers: dict[str, str]
    ) -> None:
        self._held = []
        try:
            super().request(method, url, body, headers)
            data = b"".join(self._held)
        finally:
            self._held = None
        super().send(data)

    def send(self, data: Any) -> None:
        if self._held is not None:
            self._held.append(data)
        else:
            super().send(data)


class _HTTPSConnection(_Connection):
    default_port = 443  # no ":443" in the Host header


def _is_dropped(sock: _DeadlineSocket | None) -> bool:
    """Whether an idle keep-alive connection was closed (or sent something) meanwhile.

    A zero-timeout poll never blocks, so it calls the system's own ``poll`` even in a gevent
    worker: gevent's cooperative one set up watchers for it, a tenth of the worker's CPU."""
    if sock is None:
        return True
    try:
        poll = _system_poll()
        if poll is not None:
            poller = poll()
            poller.register(sock, select.POLLIN)
            return bool(poller.poll(0))
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


@functools.cache
def _system_poll() -> Callable[[], Any] | None:
    """``select.poll`` as the system has it (not on every platform), gevent-patched or not."""
    from gevent import monkey

    return monkey.get_original("select", "poll") if hasattr(select, "poll") else None


class _Pool:
    """Idle keep-alive connections to one origin, most recently used first.

    A request takes a connection for itself (or a new one when none is idle) and hands it
    back when the answer was read to the end, so concurrent requests from threads or gevent
    greenlets never share a connection; the lock is never held during I/O.
    """

    def __init__(
        self,
        target: Target,
        *,
        maxsize: int,
        tls: ssl.SSLContext | None,
        check: Callable[[str, int, socket.socket], None] | None,
    ) -> None:
        self._target = target
        self._maxsize = maxsize
        self._tls = tls
        self._check = check
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def get(self) -> _Connection:
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                cls = _HTTPSConnection if self._tls is not None else _Connection
                return cls(
                    self._target.host,
                    self._target.port,
                    tls=self._tls,
                    check=self._check,
                )
            if not _is_dropped(conn.sock):
                return conn
            conn.close()

    def put(self, conn: _Connection) -> None:
        if conn.sock is not None:
            with self._lock:
                if not self._closed and len(self._idle) < self._maxsize:
                    self._idle.append(conn)
                    return
        conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class Answer(NamedTuple):
    """An answer: status, reason phrase, ``Retry-After`` as sent, the body's
    first ``BODY_READ_LIMIT + 1`` bytes."""

    status: int
    reason: str
    retry_after: str | None
    body: bytes


class Pools:
    """One keep-alive pool per origin (at most ``MAX_ORIGINS``, oldest dropped first)."""

    def __init__(
        self,
        *,
        maxsize: int,
        timeout: float,
        allowed_hosts: tuple[str, ...] | None,
    ) -> None:
        self._maxsize = maxsize
        self._timeout = timeout
        self._tls = tls_context()
        self._check = None if allowed_hosts is None else peer_check(tuple(allowed_hosts))
        self._pools: dict[str, _Pool] = {}
        self._lock = threading.Lock()

    def post(self, target: Target, headers: dict[str, str], body: bytes) -> Answer:
        """POST ``body``; raises ``ForbiddenAddressError``, or ``RequestError`` with the kind
        of network failure (never the URL). ``timeout`` bounds it all, connect to last byte."""
        deadline = time.monotonic() + self._timeout
        pool = self._pool(target)
        conn = pool.get()
        connected = conn.sock is not None
        try:
            if conn.sock is not None:
                conn.sock.deadline = deadline
            else:
                conn.connect(deadline)  # here, so that a failure is known to be a connect failure
                connected = True
            conn.request("POST", target.path, body, headers)
            response = conn.getresponse()
            answer = Answer(
                response.status,
                response.reason or "",
                response.getheader("Retry-After"),
                response.read(BODY_READ_LIMIT + 1),
            )
        except ForbiddenAddressError:
            conn.close()
            raise
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            # The exception text may hold the URL: report only the kind of failure.
            raise RequestError(network_error(exc, connected)) from None
        if response.isclosed():
            pool.put(conn)  # read to the end: reusable, unless the server closes it
        else:
            response.close()  # a longer answer is cut off, not buffered; drop the connection
            conn.close()
        return answer

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()

    def _pool(self, target: Target) -> _Pool:
        pool = self._pools.get(target.origin)
        if pool is not None:
            return pool
        evicted = None
        with self._lock:
            pool = self._pools.get(target.origin)
            if pool is None:
                if len(self._pools) >= MAX_ORIGINS:
                    evicted = self._pools.pop(next(iter(self._pools)))  # oldest first
                pool = _Pool(
                    target,
                    maxsize=self._maxsize,
                    tls=self._tls if target.scheme == "https" else None,
                    check=self._check,
                )
                self._pools[target.origin] = pool
        if evicted is not None:
            evicted.close()
        return pool
