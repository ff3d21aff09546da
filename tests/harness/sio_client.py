"""A real Socket.IO client that records everything the server sends.

``socketio.test_client`` never touches Redis, so it cannot prove multi-process or
worker-emitted events. Tests instead drive real servers with python-socketio's threaded client
(websocket transport via websocket-client, polling allowed as fallback) and assert on the
recorded events. Waiting is condition-based (no fixed sleeps).
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import requests
import socketio
import websocket
from requests.adapters import HTTPAdapter

AuthMode = Literal["auth", "header", "query"]


@dataclass(frozen=True)
class ReceivedEvent:
    """One event as received: name, payload (single argument, tuple if several), arrival time."""

    index: int
    name: str
    payload: Any
    args: tuple[Any, ...] = field(default=())
    time: float = 0.0  # time.monotonic()


def _payload(args: tuple[Any, ...]) -> Any:
    if not args:
        return None
    return args[0] if len(args) == 1 else args


class RecordingClient:
    """python-socketio ``Client`` plus a thread-safe record of every received event.

    ``connect``, ``disconnect`` and ``connect_error`` are recorded under those names as well
    (their payloads: None, the disconnect reason, the server's refusal data).
    Reconnection is off by default so a dropped connection is visible to the test.
    """

    def __init__(
        self,
        *,
        reconnection: bool = False,
        transports: list[str] | None = None,
        name: str = "client",
        **client_kwargs: Any,
    ) -> None:
        self.name = name
        self.transports = transports
        self.sio = socketio.Client(
            reconnection=reconnection, logger=False, engineio_logger=False, **client_kwargs
        )
        self._records: list[ReceivedEvent] = []
        self._cond = threading.Condition()
        self.last_connect_error: Any = None

        @self.sio.on("*")
        def _any(event: str, *args: Any) -> None:
            self._record(event, args)

        @self.sio.event
        def connect() -> None:
            self._record("connect", ())

        @self.sio.event
        def connect_error(*args: Any) -> None:
            self.last_connect_error = _payload(args)
            self._record("connect_error", args)

        @self.sio.event
        def disconnect(*args: Any) -> None:
            self._record("disconnect", args)

    def _record(self, name: str, args: tuple[Any, ...]) -> None:
        with self._cond:
            self._records.append(
                ReceivedEvent(
                    index=len(self._records),
                    name=name,
                    payload=_payload(args),
                    args=args,
                    time=time.monotonic(),
                )
            )
            self._cond.notify_all()

    # -- connection ------------------------------------------------------------------------
    @staticmethod
    def _build(
        base_url: str, token: str | None, auth_mode: AuthMode
    ) -> tuple[str, dict[str, str], dict[str, Any] | None]:
        url, headers, auth = base_url, {}, None
        if token is None:
            return url, headers, auth
        if auth_mode == "auth":
            auth = {"token": token}
        elif auth_mode == "header":
            headers["Authorization"] = f"Bearer {token}"
        elif auth_mode == "query":
            parts = urllib.parse.urlsplit(base_url)
            query = urllib.parse.parse_qsl(parts.query)
            query.append(("token", token))
            url = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
        else:
            raise ValueError(f"unknown auth_mode {auth_mode!r}")
        return url, headers, auth

    def connect(
        self,
        base_url: str,
        token: str | None,
        *,
        auth_mode: AuthMode = "auth",
        wait: bool = True,
        timeout: float = 10.0,
        headers: dict[str, str] | None = None,
        transports: list[str] | None = None,
    ) -> RecordingClient:
        """Connect to ``base_url`` (``http://127.0.0.1:P``) presenting ``token``.

        ``auth_mode`` picks where the token goes: ``auth={"token": ...}`` (the browser way),
        ``Authorization: Bearer`` header, or ``?token=`` query. ``token=None`` sends none.
        Raises ``socketio.exceptions.ConnectionError`` when refused; see :meth:`try_connect`.
        """
        url, auth_headers, auth = self._build(base_url, token, auth_mode)
        self.sio.connect(
            url,
            headers={**(headers or {}), **auth_headers},
            auth=auth,
            transports=transports or self.transports,
            wait=wait,
            wait_timeout=timeout,
        )
        return self

    def try_connect(
        self,
        base_url: str,
        token: str | None,
        *,
        auth_mode: AuthMode = "auth",
        timeout: float = 10.0,
        headers: dict[str, str] | None = None,
        transports: list[str] | None = None,
    ) -> tuple[bool, Any]:
        """Connect without raising: ``(True, None)`` or ``(False, error_data)``.

        ``error_data`` is the server's ``connect_error`` payload when it refused the
        connection (e.g. ``{"message": ...}``), otherwise the exception text.
        """
        self.last_connect_error = None
        try:
            self.connect(
                base_url,
                token,
                auth_mode=auth_mode,
                timeout=timeout,
                headers=headers,
                transports=transports,
            )
        except socketio.exceptions.ConnectionError as exc:
            error = self.last_connect_error
            return False, error if error is not None else str(exc)
        return True, None

    def disconnect(self, timeout: float = 10.0) -> None:
        """Disconnect (or abort a pending reconnection) and wait until really closed."""
        self.sio.shutdown()
        deadline = time.monotonic() + timeout
        while self.sio.connected and time.monotonic() < deadline:
            time.sleep(0.02)

    @property
    def connected(self) -> bool:
        return bool(self.sio.connected)

    @property
    def sid(self) -> str | None:
        """Socket.IO session id of the default namespace."""
        return self.sio.get_sid()

    @property
    def transport(self) -> str | None:
        """``"websocket"`` or ``"polling"``: the transport currently in use."""
        return self.sio.transport()

    def __enter__(self) -> RecordingClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.disconnect()

    # -- sending ---------------------------------------------------------------------------
    def emit(self, event: str, data: Any = None) -> None:
        """Fire-and-forget emit (no ack)."""
        self.sio.emit(event, data)

    def call(self, event: str, data: Any = None, timeout: float = 10.0) -> Any:
        """Emit and return the server's ack payload; raises ``socketio.exceptions.TimeoutError``."""
        return self.sio.call(event, data, timeout=timeout)

    # -- received events -------------------------------------------------------------------
    def mark(self) -> int:
        """Position in the record now: pass as ``after=`` to only consider later events."""
        with self._cond:
            return len(self._records)

    def received(self, name: str | None = None, *, after: int = 0) -> list[ReceivedEvent]:
        """Snapshot of the full records (optionally one event name, from position ``after``)."""
        with self._cond:
            records = self._records[after:]
        return [r for r in records if name is None or r.name == name]

    def events(self, name: str, *, after: int = 0) -> list[Any]:
        """Snapshot of the payloads received for ``name``, oldest first."""
        return [r.payload for r in self.received(name, after=after)]

    def clear(self) -> None:
        """Forget everything recorded so far."""
        with self._cond:
            self._records.clear()

    def wait_for_event(
        self,
        name: str,
        predicate: Callable[[Any], bool] | None = None,
        timeout: float = 10.0,
        *,
        after: int = 0,
    ) -> Any:
        """Return the payload of the first ``name`` event (at/after ``after``) matching
        ``predicate``, waiting up to ``timeout`` for it; events already received count.

        Raises ``TimeoutError`` listing what was received instead.
        """
        deadline = time.monotonic() + timeout
        checked = after
        with self._cond:
            while True:
                for record in self._records[checked:]:
                    if record.name == name and (predicate is None or predicate(record.payload)):
                        return record.payload
                checked = max(checked, len(self._records))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [(r.name, r.payload) for r in self._records[after:]][-20:]
                    raise TimeoutError(
                        f"{self.name}: no {name!r} event"
                        f"{' matching the predicate' if predicate else ''} within "
                        f"{timeout:.1f}s; received (last 20): {seen!r}"
                    )
                self._cond.wait(remaining)

    def assert_no_event(
        self,
        name: str,
        predicate: Callable[[Any], bool] | None = None,
        *,
        after: int = 0,
    ) -> None:
        """Assert that no matching ``name`` event has been received (snapshot, no waiting).

        To make "nothing was emitted" meaningful without sleeping, first wait for an event
        you *do* expect that the server sends after the one that must not come (Socket.IO
        keeps order within one connection), then call this.
        """
        unexpected = [
            p for p in self.events(name, after=after) if predicate is None or predicate(p)
        ]
        if unexpected:
            raise AssertionError(f"{self.name}: unexpected {name!r} event(s): {unexpected!r}")

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return f"<RecordingClient {self.name} {state}, {self.mark()} events>"


# -- clients from another loopback address ------------------------------------------------------
# Linux routes all of 127.0.0.0/8 to lo, so a client bound to 127.0.0.2 reaches a server on
# 127.0.0.1 and the server sees 127.0.0.2 (per-address limits, a balancer's address hash).


class _SourceAdapter(HTTPAdapter):
    def __init__(self, source_ip: str) -> None:
        self.source_ip = source_ip  # read by init_poolmanager, which __init__ calls
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, source_address=(self.source_ip, 0), **kwargs)


def bound_session(source_ip: str, ca: str | os.PathLike[str] | None = None) -> requests.Session:
    """A requests session whose connections leave from ``source_ip``, trusting ``ca`` when
    given. Environment settings are off: these machines export REQUESTS_CA_BUNDLE, which
    would otherwise win over the session's ``verify``, and no proxy applies to loopback."""
    session = requests.Session()
    session.trust_env = False
    if ca is not None:
        session.verify = os.fspath(ca)
    adapter = _SourceAdapter(source_ip)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _bound_websocket(source_ip: str) -> type[websocket.WebSocket]:
    class BoundWebSocket(websocket.WebSocket):
        """websocket-client's connection opened from ``source_ip``: websocket-client cannot
        bind, but takes a connected (and, for wss://, TLS-wrapped) socket."""

        def connect(self, url: str, **options: Any) -> None:
            if options.get("socket") is None:
                timeout = options.get("timeout", self.sock_opt.timeout)
                options["socket"] = self._open(url, timeout)
            super().connect(url, **options)

        def _open(self, url: str, timeout: float | None) -> socket.socket:
            parts = urllib.parse.urlsplit(url)
            secure = parts.scheme == "wss"
            host = parts.hostname or "localhost"
            sock = socket.create_connection(
                (host, parts.port or (443 if secure else 80)),
                timeout=timeout,
                source_address=(source_ip, 0),
            )
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not secure:
                return sock
            sslopt = self.sock_opt.sslopt  # engineio puts the session's verify in ca_certs
            context = ssl.create_default_context(cafile=sslopt.get("ca_certs"))
            if sslopt.get("cert_reqs") == ssl.CERT_NONE:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            try:
                return context.wrap_socket(sock, server_hostname=host)
            except BaseException:
                sock.close()
                raise

    return BoundWebSocket


def bound_client_options(
    source_ip: str, ca: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """``RecordingClient(**bound_client_options(ip, ca))``: both transports connect from
    ``source_ip`` (and trust ``ca``), on every connection attempt, reconnections included:
    polling through a fresh :func:`bound_session` each time, the WebSocket through
    websocket-client's ``class_`` hook."""
    return {
        "http_session": lambda: bound_session(source_ip, ca),
        "websocket_extra_options": {"class_": _bound_websocket(source_ip)},
    }
