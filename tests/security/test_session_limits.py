"""Strangers cost bounded resources (issue 14, item 3): unauthenticated Engine.IO sessions are
closed after ``AUTH_TIMEOUT`` or ``MAX_CONNECT_ATTEMPTS`` refused connect packets, refused at
the handshake past ``MAX_PENDING_SESSIONS``, and a user's connections are capped
(``MAX_CONNECTIONS_PER_USER``, counted in Redis across web processes).

Raw Engine.IO websockets (``RawSocket``) play the stranger: they answer pings and send
Socket.IO connect packets by hand. Web processes of the shared deployment run here with low
bounds, on a Redis database of their own (their counters stay apart from the shared stack's).
"""

from __future__ import annotations

import json
import time

import pytest
import requests
import websocket

from tests.conftest import start_web
from tests.harness.ports import free_port
from tests.harness.sio_client import RecordingClient
from tests.harness.waiting import wait_until

AUTH_TIMEOUT = 1.5
ATTEMPTS = 3  # MAX_CONNECT_ATTEMPTS's default
PER_USER = 3
PENDING = 4

BOUNDS = {
    "AUTH_TIMEOUT": str(AUTH_TIMEOUT),
    "MAX_CONNECT_ATTEMPTS": str(ATTEMPTS),
    "MAX_CONNECTIONS_PER_USER": str(PER_USER),
    "RATE_LIMIT_CONNECT_USER": "off",
    "RATE_LIMIT_CONNECT_IP": "off",
}


def _web(stack, run_dir, name: str, env: dict[str, str]):
    port = free_port()
    return start_web(f"{name}-{stack.backend}", env, port, run_dir), f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def gated(stack, redis_server, run_dir):
    """Two web processes on one Redis database (the per-user cap is counted across them)."""
    env = {**stack.env, **BOUNDS, "REDIS_URL": redis_server.new_db_url()}
    first, first_url = _web(stack, run_dir, "web-gated-1", env)
    second, second_url = _web(stack, run_dir, "web-gated-2", env)
    yield first_url, second_url
    first.stop()
    second.stop()


@pytest.fixture(scope="module")
def crowded(stack, redis_server, run_dir):
    """A web process that holds at most PENDING unauthenticated sessions (long timeout; the
    default MAX_CONNECT_ATTEMPTS)."""
    env = {
        **stack.env,
        "REDIS_URL": redis_server.new_db_url(),
        "MAX_PENDING_SESSIONS": str(PENDING),
        "AUTH_TIMEOUT": "120",
    }
    web, url = _web(stack, run_dir, "web-crowded", env)
    yield url
    web.stop()


class RawSocket:
    """One Engine.IO websocket driven by hand, as a stranger would."""

    def __init__(self, url: str) -> None:
        ws_url = url.replace("http://", "ws://", 1) + "/socket.io/?EIO=4&transport=websocket"
        self.ws = websocket.create_connection(ws_url, timeout=30)
        opening = self.ws.recv()
        assert opening.startswith("0{"), opening
        self.opened = time.monotonic()

    def attempt(self, auth: dict | None) -> str:
        """Send one Socket.IO connect packet; the answer's error code, or "connected"."""
        self.ws.send("40" + (json.dumps(auth) if auth is not None else ""))
        while True:
            frame = self.next_frame()
            if frame is None:
                return "closed"
            if frame.startswith("44"):  # {"message": text, "data": {"error": code, ...}}
                return str((json.loads(frame[2:]).get("data") or {}).get("error"))
            if frame.startswith("40"):
                return "connected"

    def next_frame(self) -> str | None:
        """The next frame other than a ping (answered); None once the server closed."""
        while True:
            try:
                frame = self.ws.recv()
            except (websocket.WebSocketConnectionClosedException, ConnectionError):
                return None
            if frame == "2":
                self.ws.send("3")
            elif frame in ("", "1"):  # end of stream, or Engine.IO close
                return None
            else:
                return frame

    def wait_closed(self, limit: float = AUTH_TIMEOUT + 10) -> float:
        """Block until the server closes the session (pings answered), at most ``limit``
        seconds from its opening; how long it was open."""
        self.ws.settimeout(max(0.1, limit - (time.monotonic() - self.opened)))
        try:
            while self.next_frame() is not None:
                pass
        except websocket.WebSocketTimeoutException:
            pass  # still open: the caller's bound fails
        return time.monotonic() - self.opened

    def close(self) -> None:
        self.ws.close()


def _handshake(url: str) -> requests.Response:
    return requests.get(f"{url}/socket.io/?EIO=4&transport=polling", timeout=10)


def _websocket_opening(url: str) -> str:
    """The first frame of a websocket-only Engine.IO handshake, or "refused". gevent-websocket
    accepts the upgrade before the app answers, so a refused session is an accepted websocket
    closed at once without the open packet, rather than an HTTP 401."""
    ws_url = url.replace("http://", "ws://", 1) + "/socket.io/?EIO=4&transport=websocket"
    try:
        ws = websocket.create_connection(ws_url, timeout=10)
    except websocket.WebSocketBadStatusException:
        return "refused"
    try:
        return ws.recv() or "refused"
    except (websocket.WebSocketConnectionClosedException, ConnectionError):
        return "refused"
    finally:
        ws.close()


def test_a_session_that_never_authenticates_is_closed_after_auth_timeout(
    beacon, gated, reliability
):
    url = gated[0]
    user = beacon.user("patient")
    member = RecordingClient(name="member")
    member.connect(url, user.token)  # authenticated before the stranger came: kept
    silent = RawSocket(url)  # sends nothing, answers pings
    refused_once = RawSocket(url)
    try:
        assert refused_once.attempt({"token": "garbage"}) == "invalid_token"
        silent_for = silent.wait_closed()
        refused_for = refused_once.wait_closed()
        assert AUTH_TIMEOUT <= silent_for <= AUTH_TIMEOUT + 5, silent_for
        assert AUTH_TIMEOUT <= refused_for <= AUTH_TIMEOUT + 5, refused_for
        assert member.connected and member.call("refresh_token", {"token": user.token})["ok"]
    finally:
        silent.close()
        refused_once.close()
        member.disconnect()
    reliability.record(
        "limits",
        f"Engine.IO sessions with no authenticated connection (AUTH_TIMEOUT={AUTH_TIMEOUT:g}s)",
        expected="closed by the server after AUTH_TIMEOUT (+ up to 1 s), silent or refused "
        "alike; authenticated sessions kept",
        observed=f"silent closed after {silent_for:.1f}s, refused after {refused_for:.1f}s; "
        "the authenticated one kept",
        count=3,
    )


def test_a_session_is_closed_after_max_connect_attempts(beacon, crowded, reliability):
    url = crowded  # AUTH_TIMEOUT is long there: only the attempts can close the session
    user = beacon.user("retrier")
    guesser = RawSocket(url)
    try:
        codes = [guesser.attempt({"token": f"guess-{i}"}) for i in range(ATTEMPTS)]
        # The session is closed once the last refusal is sent: no further token check, not
        # even of a valid token.
        try:
            extra = guesser.attempt({"token": user.token})
        except (websocket.WebSocketConnectionClosedException, ConnectionError):
            extra = "closed"
    finally:
        guesser.close()
    assert codes == ["invalid_token"] * ATTEMPTS, codes
    assert extra == "closed", extra
    # A client that fails fewer times on one session still gets in (a token refreshed late).
    late = RawSocket(url)
    try:
        retries = [late.attempt({"token": "expired"}) for _ in range(ATTEMPTS - 1)]
        retries.append(late.attempt({"token": user.token}))
    finally:
        late.close()
    assert retries == ["invalid_token"] * (ATTEMPTS - 1) + ["connected"], retries
    reliability.record(
        "limits",
        f"connect packets refused on one session (MAX_CONNECT_ATTEMPTS={ATTEMPTS})",
        expected=f"the session closed after the {ATTEMPTS}rd refusal; fewer refusals then a "
        "valid token connect",
        observed=f"{ATTEMPTS} invalid_token then closed; {ATTEMPTS - 1} refusals then connected",
        count=2 * ATTEMPTS,
    )


def test_unauthenticated_sessions_per_process_are_capped(beacon, crowded, reliability):
    user = beacon.user("latecomer")
    strangers = [RawSocket(crowded) for _ in range(PENDING)]
    client = RecordingClient(name="refused-while-full")
    try:
        refused = _handshake(crowded)
        assert refused.status_code == 401, (refused.status_code, refused.text)
        assert refused.json()["error"] == "too_many_pending_sessions", refused.text
        assert _websocket_opening(crowded) == "refused"
        ok, _error = client.try_connect(crowded, user.token)
        assert not ok
        # An authenticated session no longer counts, nor does a closed one.
        assert strangers[0].attempt({"token": user.token}) == "connected"
        strangers[1].close()
        wait_until(
            lambda: _handshake(crowded).status_code == 200,
            message="no session was let in after two pending ones left",
        )
        late = RecordingClient(name="after-a-slot-freed")
        late.connect(crowded, user.token)
        late.disconnect()
    finally:
        for sock in strangers:
            sock.close()
        client.disconnect()
    reliability.record(
        "limits",
        f"unauthenticated Engine.IO sessions per web process (MAX_PENDING_SESSIONS={PENDING})",
        expected="the handshake refused while full (polling: HTTP 401 "
        "`too_many_pending_sessions`; websocket: closed without the open packet); accepted "
        "again once one authenticates or closes",
        observed="polling 401 too_many_pending_sessions, websocket closed unopened, a client "
        "refused; accepted after slots freed",
        count=4,
    )


def test_connections_per_user_are_capped_across_web_processes(beacon, gated, reliability):
    first, second = gated
    user, other = beacon.user("many-tabs"), beacon.user("one-tab")
    clients = []

    def connect(url: str, who, name: str) -> tuple[bool, object]:
        client = RecordingClient(name=name)
        clients.append(client)
        return client.try_connect(url, who.token)

    try:
        opened = [connect(first if i % 2 else second, user, f"tab{i}") for i in range(PER_USER)]
        assert all(ok for ok, _ in opened), opened
        refusals = [connect(url, user, "one-too-many") for url in (first, second)]
        for ok, error in refusals:
            assert not ok and error["data"]["error"] == "too_many_connections", error
            assert error["data"]["max_connections"] == PER_USER and error["message"]
        assert connect(first, other, "someone-else")[0]  # other users unaffected
        assert all(c.connected for c in clients[:PER_USER])
        clients[0].disconnect()
        wait_until(
            lambda: connect(second, user, "after-one-closed")[0],
            message="a connection slot was not given back after a disconnect",
        )
    finally:
        for client in clients:
            client.disconnect()
    reliability.record(
        "limits",
        f"connections per user (MAX_CONNECTIONS_PER_USER={PER_USER}, over 2 web processes)",
        expected="past the cap refused `too_many_connections` with max_connections, on either "
        "process; open connections kept; a slot freed by a disconnect",
        observed=f"{PER_USER} connected, the next refused on both processes; another user "
        "unaffected; connected again after one closed",
        count=PER_USER + 4,
    )
