"""Engine.IO sessions that have not authenticated are bounded in time, in tries and in number.

An Engine.IO session (the transport under Socket.IO) opens before any token is shown; the
client then sends Socket.IO ``connect`` packets, each one a JWT check and Redis round trips in
the connect handler. Unbounded, a stranger could hold sessions forever (answering pings) and
retry ``connect`` endlessly. Per web process, a session with no authenticated connection is
closed after ``AUTH_TIMEOUT`` seconds or after ``MAX_CONNECT_ATTEMPTS`` refused connect packets,
and past ``MAX_PENDING_SESSIONS`` such sessions new ones are refused at the handshake.

python-socketio has no hook for this, so the handlers engine.io calls for a session
(``connect``, ``message``, ``disconnect``) are wrapped, and the Socket.IO manager says whether
the session's connection passed the connect handler. Those are library internals (pinned in
requirements.txt), kept to this module and checked by ``tests/test_session_gate_contract.py``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import socketio

log = logging.getLogger(__name__)

NAMESPACE = "/"
REFUSED = {
    "error": "too_many_pending_sessions",
    "message": "too many connections are being set up; try again shortly",
}


@dataclass
class Pending:
    """A session with no authenticated Socket.IO connection (yet, or any more)."""

    since: float
    failures: int = 0  # connect packets refused
    in_flight: int = 0  # connect packets whose handler is running
    closing: bool = False


class SessionGate:
    """This process's unauthenticated Engine.IO sessions, in the order they became so.

    ``max_attempts`` and ``max_pending`` of 0 and ``auth_timeout`` of 0 disable that bound.
    """

    def __init__(
        self,
        server: socketio.Server,
        *,
        auth_timeout: float,
        max_attempts: int,
        max_pending: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = server
        self.auth_timeout = auth_timeout
        self.max_attempts = max_attempts
        self.max_pending = max_pending
        self.clock = clock
        self.pending: OrderedDict[str, Pending] = OrderedDict()
        self._sweeping = False
        self._refusal_logged = 0.0
        handlers = server.eio.handlers
        self._eio_connect = handlers["connect"]
        self._eio_message = handlers["message"]
        self._eio_disconnect = handlers["disconnect"]
        self._disconnect = server.disconnect

    def install(self) -> None:
        eio = self.server.eio
        eio.on("connect", self.on_eio_connect)
        eio.on("message", self.on_eio_message)
        eio.on("disconnect", self.on_eio_disconnect)
        self.server.disconnect = self.disconnect  # type: ignore[method-assign]

    # engine.io handlers ---------------------------------------------------------------------
    def on_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        """A new session: refused (engine.io answers HTTP 401 with ``REFUSED``) when full."""
        if self.max_pending and len(self.pending) >= self.max_pending:
            now = self.clock()
            if now - self._refusal_logged > 10:
                self._refusal_logged = now
                log.warning(
                    "refusing new sessions: %d are not authenticated (MAX_PENDING_SESSIONS)",
                    len(self.pending),
                )
            return dict(REFUSED)
        self._start_sweep()
        self.pending[eio_sid] = Pending(self.clock())
        return self._eio_connect(eio_sid, environ)

    def on_eio_message(self, eio_sid: str, data: Any) -> Any:
        state = self.pending.get(eio_sid)
        kind = data[:1] if isinstance(data, str) else ""
        if state is None or kind != "0":  # not a Socket.IO CONNECT of a pending session
            result = self._eio_message(eio_sid, data)
            if kind == "1" and state is None:  # the client left its namespace
                self._recheck(eio_sid)
            return result
        if state.closing or (
            self.max_attempts and state.failures + state.in_flight >= self.max_attempts
        ):
            self._close(eio_sid, state, "too many connect attempts")
            return None
        state.in_flight += 1
        try:
            return self._eio_message(eio_sid, data)
        finally:
            state.in_flight -= 1
            if self.authenticated(eio_sid):
                if self.pending.get(eio_sid) is state:
                    del self.pending[eio_sid]
            else:
                state.failures += 1
                if self.max_attempts and state.failures >= self.max_attempts:
                    self._close(eio_sid, state, "too many connect attempts")

    def on_eio_disconnect(self, eio_sid: str, *args: Any) -> Any:
        try:
            return self._eio_disconnect(eio_sid, *args)
        finally:
            self.pending.pop(eio_sid, None)

    def disconnect(self, sid: str, namespace: str | None = None, **kwargs: Any) -> None:
        """``Server.disconnect``: the session stays open, unauthenticated, until it leaves."""
        eio_sid = self.server.manager.eio_sid_from_sid(sid, namespace or NAMESPACE)
        self._disconnect(sid, namespace, **kwargs)
        if eio_sid is not None:
            self._recheck(eio_sid)

    # state ----------------------------------------------------------------------------------
    def authenticated(self, eio_sid: str) -> bool:
        """The session's Socket.IO connection passed the connect handler."""
        manager = self.server.manager
        sid = manager.sid_from_eio_sid(eio_sid, NAMESPACE)
        return sid is not None and manager.is_connected(sid, NAMESPACE)

    def _recheck(self, eio_sid: str) -> None:
        """A session that lost its connection is pending again, its time starting now."""
        sock = self.server.eio.sockets.get(eio_sid)
        if sock is None or sock.closed or sock.closing or self.authenticated(eio_sid):
            return
        if eio_sid not in self.pending:
            self.pending[eio_sid] = Pending(self.clock())

    def _close(self, eio_sid: str, state: Pending, why: str) -> None:
        state.closing = True
        sock = self.server.eio.sockets.get(eio_sid)
        if sock is None or sock.closed or sock.closing:
            self.pending.pop(eio_sid, None)
            return
        log.info("closing unauthenticated session %s: %s", eio_sid, why)
        # The disconnect handlers run here (on_eio_disconnect forgets it); the Engine.IO CLOSE
        # packet goes out, but nothing waits for a client that does not read.
        sock.close(wait=False, reason=self.server.eio.reason.SERVER_DISCONNECT)
        self.pending.pop(eio_sid, None)

    # the timeout ----------------------------------------------------------------------------
    def _start_sweep(self) -> None:
        if self._sweeping or not self.auth_timeout:
            return
        self._sweeping = True
        self.server.start_background_task(self._sweep_loop)

    def _sweep_loop(self) -> None:
        interval = max(0.05, min(1.0, self.auth_timeout / 10))
        while True:
            self.server.sleep(interval)
            try:
                self.sweep()
            except Exception:
                log.warning("pending session sweep failed", exc_info=True)

    def sweep(self) -> int:
        """Close the sessions pending longer than ``auth_timeout``; how many were closed.

        The oldest come first, so this stops at the first one still in time. A session whose
        connect handler is running is left to it (its outcome decides).
        """
        deadline = self.clock() - self.auth_timeout
        due = []
        for eio_sid, state in self.pending.items():
            if state.since > deadline:
                break
            if not state.in_flight:
                due.append((eio_sid, state))
        for eio_sid, state in due:
            self._close(eio_sid, state, f"not authenticated after {self.auth_timeout:g}s")
        return len(due)


def install(
    server: socketio.Server, *, auth_timeout: float, max_attempts: int, max_pending: int
) -> SessionGate:
    """Bound the unauthenticated sessions of ``server`` (see the module's docstring)."""
    gate = SessionGate(
        server, auth_timeout=auth_timeout, max_attempts=max_attempts, max_pending=max_pending
    )
    gate.install()
    return gate
