"""A join racing its connection's close must not leave the user "active in the topic" (issue
14, suspicion 2).

``send_message`` excludes from the unread increment every user with a live connection joined
to the topic (the topic-activity hash ``beacon:presence:topic:<topic>``, ``sid -> user``). The
disconnect handler removes a connection's entries; a ``join_topic`` handler still running
when the connection closes (python-socketio runs each event in its own greenlet) could add
its entry after that, for a connection that no longer exists, and the user would never be
counted unread in that topic again.

Raw websockets connect, send ``join_topic`` and close at once, 200 times; then, with every
connection gone, a new message must count for each user and the hash must hold no sid of
theirs.
"""

from __future__ import annotations

import json
import threading
from collections import Counter

import pytest
import redis
import websocket

from tests.conftest import start_web
from tests.harness.ports import free_port
from tests.harness.waiting import wait_until
from webapp.presence.store import PREFIX, TOPIC_PREFIX

USERS = 5
ROUNDS = 40  # per user: 200 in all


@pytest.fixture(scope="module")
def unlimited_web(stack, run_dir):
    """A web process of the shared deployment without the per-user connection limit."""
    port = free_port()
    env = {**stack.env, "RATE_LIMIT_CONNECT_USER": "off"}
    web = start_web(f"web-joinrace-{stack.backend}", env, port, run_dir)
    yield f"http://127.0.0.1:{port}"
    web.stop()


def join_then_close(url: str, token: str, topic_id: str) -> str:
    """Connect a raw websocket, send ``join_topic`` and close without waiting for the ack."""
    ws_url = url.replace("http://", "ws://", 1) + "/socket.io/?EIO=4&transport=websocket"
    ws = websocket.create_connection(ws_url, timeout=15)
    try:
        assert ws.recv().startswith("0{")
        ws.send("40" + json.dumps({"token": token}))
        while True:
            frame = ws.recv()
            if frame.startswith("40"):
                break
            if frame.startswith("44"):
                return "refused: " + str(json.loads(frame[2:]).get("error"))
        ws.send("421" + json.dumps(["join_topic", {"topic_id": topic_id}]))
        return "joined and closed"
    finally:
        ws.close()


def test_join_racing_close_leaves_no_dead_sid(beacon, unlimited_web, reliability):
    sender = beacon.user("sender")
    users = [beacon.user("joiner") for _ in range(USERS)]
    topic = beacon.topic(sender, *users)
    store = redis.Redis.from_url(beacon.env["REDIS_URL"], decode_responses=True)
    topic_key = f"{TOPIC_PREFIX}{topic.topic_id}"
    answers: Counter[str] = Counter()
    errors: list[BaseException] = []

    def run(user) -> None:  # noqa: ANN001
        try:
            for _ in range(ROUNDS):
                answers[join_then_close(unlimited_web, user.token, topic.topic_id)] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert answers == {"joined and closed": USERS * ROUNDS}, answers

    ids = {u.id for u in users}
    wait_until(
        lambda: not any(store.hlen(f"{PREFIX}:conns:{i}") for i in ids),
        timeout=15,
        message="the users' connections did not all end",
    )
    dead = {sid: uid for sid, uid in store.hgetall(topic_key).items() if uid in ids}
    before = {u.id: beacon.unread(u, topic) for u in users}
    sender_client = beacon.client(sender, "sender")
    ack = sender_client.call("send_message", topic.ref(message="after the storm"))
    assert ack["ok"], ack
    try:
        wait_until(
            lambda: all(beacon.unread(u, topic) == before[u.id] + 1 for u in users),
            timeout=15,
            message="not counted",
        )
        uncounted: list[str] = []
    except TimeoutError:
        uncounted = [u.username for u in users if beacon.unread(u, topic) == before[u.id]]
    observed = Counter(answers)
    observed["dead sids left in the topic's activity hash"] = len(dead)
    observed["users not counted unread afterwards"] = len(uncounted)
    reliability.record(
        "faults",
        "join_topic sent, then the websocket closed at once (the join races the disconnect)",
        expected="no sid of a gone connection in the topic-activity hash; the next message "
        "counts unread for every user",
        observed=observed,
        count=USERS * ROUNDS,
    )
    assert not dead, f"{len(dead)} dead sids still mark users active in the topic: {dead}"
    assert not uncounted, f"not counted unread: {uncounted}"
