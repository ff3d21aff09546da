"""A client that never reads its socket but keeps answering pings (issue 14).

Without a bound, every event for such a client waits in the web process (engine.io's queue,
the fast path's partial frame), so its memory grows with everything sent to it. Here a raw
websocket client with a tiny receive buffer joins a topic, then reads nothing and only sends
an Engine.IO PONG every half second (what a client that "answers pings" blindly does), while
the topic is flooded with large ``new_message`` events. The web process must drop it once more
than ``MAX_PENDING_BYTES`` wait for it, through the normal disconnect path (presence offline),
keep its RSS bounded, and go on delivering everything to a normal member of the topic.

The flood is emitted the way workers emit (the Redis message queue), so the web process only
fans it out: stored 50 KB messages would grow its RSS by ~45 MiB of database and allocator
caches whatever the slow client does, hiding what waits for it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from pathlib import Path

import pytest
import requests
import websocket

from tests.conftest import start_web
from tests.harness.ports import free_port
from tests.harness.waiting import wait_until
from webapp import realtime

MAX_PENDING = 256 * 1024
BODY = 50_000  # characters per message: a ~50 KB new_message frame
FLOOD = 400  # ~20 MB of frames: what an unbounded server keeps for the slow client
RSS_BOUND = 8 * 1024 * 1024


@pytest.fixture(scope="module", params=["fast-path", "library-path"])
def bounded_web(request, stack, redis_server, run_dir):
    """A web process of the deployment with the limit; ``library-path``: FAST_FANOUT off, so
    every frame waits in engine.io's queue instead of the fast path's partial write."""
    env = {
        **stack.env,
        "REDIS_URL": redis_server.new_db_url(),
        "MAX_PENDING_BYTES": str(MAX_PENDING),
        "FAST_FANOUT": "1" if request.param == "fast-path" else "0",
    }
    port = free_port()
    web = start_web(f"web-slow-reader-{request.param}-{stack.backend}", env, port, run_dir)
    yield web, port, env["REDIS_URL"], request.param
    web.stop()


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class SlowReader:
    """Engine.IO/Socket.IO over a raw websocket: handshake, join a topic, then never read."""

    def __init__(self, port: int, token: str, topic_id: str) -> None:
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket",
            # Set before connect, so the window the client advertises stays tiny: the server's
            # socket buffer fills after a few KB and everything else waits in the server.
            sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),),
            timeout=10,
        )
        assert self.ws.recv().startswith("0{"), "no Engine.IO OPEN packet"
        self.ws.send("40" + json.dumps({"token": token}))
        self._read_until("40{")
        self.ws.send("420" + json.dumps(["join_topic", {"topic_id": topic_id}]))
        ack = self._read_until("430")
        assert json.loads(ack[3:])[0]["ok"], ack
        self.stop = threading.Event()
        self.send_error: BaseException | None = None
        self.pongs = 0
        self._thread = threading.Thread(target=self._answer_pings, daemon=True)
        self._thread.start()

    def _read_until(self, prefix: str) -> str:
        while True:
            message = self.ws.recv()
            if message == "2":
                self.ws.send("3")
            elif message.startswith(prefix):
                return message

    def _answer_pings(self) -> None:
        # Never reads the PING: answers it blindly, which keeps engine.io's ping check happy.
        while not self.stop.wait(0.5):
            try:
                self.ws.send("3")
                self.pongs += 1
            except (OSError, websocket.WebSocketException) as exc:
                self.send_error = exc
                return

    def closed_by_server(self) -> str:
        """Read what was left, until the server's end of stream ('eof') or a reset."""
        self.stop.set()
        self._thread.join(5)
        sock = self.ws.sock
        sock.settimeout(15)
        try:
            while sock.recv(1 << 16):
                pass
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            return "still open"
        return "eof"

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(Exception):
            self.ws.sock.close()


def test_a_client_that_stops_reading_is_dropped_and_memory_stays_bounded(
    beacon, bounded_web, reliability
):
    web, port, redis_url, path = bounded_web
    url = f"http://127.0.0.1:{port}"
    bob, slow = beacon.user("bob"), beacon.user("slow")
    topic = beacon.topic(bob, slow)
    member = beacon.new_client("bob")
    member.connect(url, bob.token)
    assert member.call("join_topic", {"topic_id": topic.topic_id})["ok"]

    def online() -> set[str]:
        answer = requests.get(
            f"{url}/api/users/online", headers={"Authorization": f"Bearer {bob.token}"}, timeout=10
        )
        return {u["user_id"] for u in answer.json()["users"]}

    log_from = web.log_size()
    reader = SlowReader(port, slow.token, topic.topic_id)
    try:
        assert slow.id in online()
        rss_before = _rss(web.pid)
        rss_peak = rss_before
        sent = 0
        dropped_at = None
        while sent < FLOOD:  # all of them, dropped or not
            mark = member.mark()
            body = f"flood {sent} " + "x" * BODY
            event = {"topic_id": topic.topic_id, "body": body}
            realtime.emit(redis_url, "new_message", event, to=realtime.topic_room(topic.topic_id))
            # Paced by the normal member: the web process keeps up with Redis.
            member.wait_for_event("new_message", lambda p, b=body: p["body"] == b, after=mark)
            sent += 1
            rss_peak = max(rss_peak, _rss(web.pid))
            if dropped_at is None and "slow client dropped" in web.log_text(log_from):
                dropped_at = sent
        growth = rss_peak - rss_before
        assert dropped_at is not None, (
            f"the slow reader was never dropped: {sent} messages of {BODY} characters sent "
            f"(~{sent * BODY / 2**20:.0f} MiB for it), web RSS grew by {growth / 2**20:.1f} MiB"
        )
        line = next(x for x in web.log_text(log_from).splitlines() if "slow client dropped" in x)
        assert f"user={slow.id}" in line and "sid=" in line, line

        # The normal disconnect path: presence offline; the server ended the stream.
        wait_until(lambda: slow.id not in online(), message="the dropped user is still online")
        ending = reader.closed_by_server()
        assert ending in {"eof", "reset"}, ending
        metrics = requests.get(f"{url}/metrics", timeout=10).text
        assert "beacon_slow_clients_dropped_total 1.0" in metrics

        # The normal member got everything, before and after the drop, in order.
        assert [m["body"].split(" ", 2)[1] for m in member.events("new_message")] == [
            str(i) for i in range(sent)
        ]
        assert member.connected and slow.id not in online()
        assert growth < RSS_BOUND, f"web RSS grew by {growth / 2**20:.1f} MiB"
    finally:
        reader.close()
    observed = (
        f"dropped after {dropped_at} messages (~{dropped_at * BODY / 2**20:.1f} MiB sent to it); "
        f"stream {ending}; offline; web RSS peak +{growth / 2**20:.1f} MiB "
        f"(from {rss_before / 2**20:.0f} MiB); bob got all {sent}"
    )
    print(observed)
    reliability.record(
        "limits",
        f"a client that stops reading but answers pings (MAX_PENDING_BYTES={MAX_PENDING}, "
        f"{path}), flooded with {BODY // 1000} KB messages",
        expected="dropped once more than the limit waits for it (log line with user and sid, "
        "metric), presence offline; web RSS bounded; other members get every message",
        observed=observed,
        count=1,
    )
