"""Sockets whose connection is being refused must receive nothing (issue 14, suspicion 1).

python-socketio registers a socket in the namespace (``pre_connect``) before it runs the
connect handler, and a broadcast (``to=None``) goes to every socket registered there. Here raw
Engine.IO websockets send Socket.IO connect packets with bad tokens over and over (the server
answers each with ``44``, a connect error, and the socket stays open for the next attempt)
while messages flow with ``ALERT_AUDIENCE=everyone`` and users come and go (so
``user_status_change`` and ``global_message_alert`` go to every connected client): not one
event frame (``42...``) may reach those sockets.

The web process here also counts connection attempts per address (``RATE_LIMIT_CONNECT_IP``,
checked in Redis before the token): the round trip gives other greenlets the chance to
broadcast while the refused socket is registered, as any slow step of the handler would.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from typing import Any

import jwt
import pytest
import websocket

from tests.conftest import JWT_SECRET, start_web
from tests.harness.ports import free_port
from tests.harness.sio_client import RecordingClient
from tests.harness.waiting import wait_until

SOCKETS = 4
ATTEMPTS = 150  # connect packets per socket

WINDOW_ENV = {
    "ALERT_AUDIENCE": "everyone",
    "RATE_LIMIT_CONNECT_IP": "1000000/1s",
    "RATE_LIMIT_CONNECT_USER": "off",
    "RATE_LIMIT_SEND_MESSAGE": "off",
    # Each socket retries ATTEMPTS times, for longer than AUTH_TIMEOUT: lift those bounds
    # (tests/security/test_session_limits.py tests them).
    "MAX_CONNECT_ATTEMPTS": "0",
    "AUTH_TIMEOUT": "0",
}


@pytest.fixture(scope="module")
def everyone_web(stack, run_dir):
    """A web process of the shared deployment whose alerts go to every connected client."""
    port = free_port()
    web = start_web(f"web-everyone-{stack.backend}", {**stack.env, **WINDOW_ENV}, port, run_dir)
    yield f"http://127.0.0.1:{port}"
    web.stop()


def _bad_auths() -> list[tuple[str, dict[str, Any] | None]]:
    now = int(time.time())
    unknown = jwt.encode(
        {"sub": str(uuid.uuid4()), "iat": now, "nbf": now, "exp": now + 600},
        JWT_SECRET,
        algorithm="HS256",
    )
    return [
        ("garbage token", {"token": "garbage"}),
        ("no token", None),
        ("token of no user", {"token": unknown}),
    ]


class RawSocket:
    """One Engine.IO websocket driven by hand: every frame it receives is kept."""

    def __init__(self, url: str) -> None:
        ws_url = url.replace("http://", "ws://", 1) + "/socket.io/?EIO=4&transport=websocket"
        self.ws = websocket.create_connection(ws_url, timeout=15)
        opening = self.ws.recv()
        assert opening.startswith("0{"), opening
        self.event_frames: list[str] = []
        self.answers: Counter[str] = Counter()

    def attempt(self, auth: dict[str, Any] | None) -> str:
        """Send one connect packet; return the error code of the server's answer."""
        self.ws.send("40" + (json.dumps(auth) if auth is not None else ""))
        while True:
            frame = self.ws.recv()
            if frame == "2":  # Engine.IO ping
                self.ws.send("3")
            elif frame.startswith("42"):
                self.event_frames.append(frame)
            elif frame.startswith("44"):
                return str(json.loads(frame[2:]).get("error"))
            elif frame.startswith("40"):
                return "connected"
            else:
                raise AssertionError(f"unexpected frame {frame[:200]!r}")

    def close(self) -> None:
        self.ws.close()


def test_refused_sockets_receive_no_broadcast(beacon, everyone_web, reliability):
    sender, watcher = beacon.user("sender"), beacon.user("watcher")
    topic = beacon.topic(sender)
    sender_client = beacon.new_client("sender")
    sender_client.connect(everyone_web, sender.token)
    watcher_client = beacon.new_client("watcher")
    watcher_client.connect(everyone_web, watcher.token)
    churners = [beacon.user("churn") for _ in range(3)]
    mark = watcher_client.mark()

    stop = threading.Event()
    errors: list[BaseException] = []

    def send_messages() -> None:
        try:
            n = 0
            while not stop.is_set():
                ack = sender_client.call("send_message", topic.ref(message=f"m{n}"))
                assert ack["ok"], ack
                n += 1
        except BaseException as exc:  # noqa: BLE001  (reported by the test)
            errors.append(exc)

    def churn() -> None:
        try:
            while not stop.is_set():
                for user in churners:
                    client = RecordingClient(name="churn")
                    client.connect(everyone_web, user.token)
                    client.disconnect()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    auths = _bad_auths()
    sockets = [RawSocket(everyone_web) for _ in range(SOCKETS)]
    answers: Counter[str] = Counter()
    leaked: list[tuple[str, str]] = []

    def attack(sock: RawSocket) -> None:
        try:
            for i in range(ATTEMPTS):
                name, auth = auths[i % len(auths)]
                before = len(sock.event_frames)
                code = sock.attempt(auth)
                sock.answers[f"{name}: {code}"] += 1
                leaked.extend((name, f) for f in sock.event_frames[before:])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    traffic = [threading.Thread(target=send_messages), threading.Thread(target=churn)]
    attackers = [threading.Thread(target=attack, args=(s,)) for s in sockets]
    for t in traffic:
        t.start()
    # The flow is on before the first bad connect packet is sent.
    watcher_client.wait_for_event("global_message_alert", after=mark, timeout=15)
    watcher_client.wait_for_event("user_status_change", after=mark, timeout=15)
    for t in attackers:
        t.start()
    for t in attackers:
        t.join(timeout=300)
    stop.set()
    for t in traffic:
        t.join(timeout=30)
    for sock in sockets:
        answers.update(sock.answers)
        sock.close()
    assert not errors, errors

    alerts = len(watcher_client.events("global_message_alert", after=mark))
    statuses = len(watcher_client.events("user_status_change", after=mark))
    observed = Counter({k: v for k, v in answers.items()})
    if leaked:
        observed["event frames received while refused"] = len(leaked)
    reliability.record(
        "input",
        "bad-token connect packets looped on open websockets while every client gets broadcasts "
        "(ALERT_AUDIENCE=everyone, presence churn)",
        expected="each refused (44); not one event frame (42) reaches a refused socket",
        observed=observed,
    )
    assert sum(answers.values()) == SOCKETS * ATTEMPTS
    assert "connected" not in " ".join(answers), answers
    assert alerts > 0 and statuses > 0, (alerts, statuses)
    assert not leaked, (
        f"{len(leaked)} event frames reached sockets whose connection was being refused "
        f"(alerts meanwhile: {alerts}, status changes: {statuses}); first: {leaked[:3]!r}"
    )
    wait_until(lambda: watcher_client.connected, message="the watcher was dropped")
