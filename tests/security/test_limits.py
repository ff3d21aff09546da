"""Rate limits (per user, per address; in Redis) and size limits.

A web process of the same deployment runs with low limits here (and trusts one proxy, so each
test can act from addresses of its own with X-Forwarded-For); its own Redis database keeps
its counters apart from the shared stack's.
"""

from __future__ import annotations

import itertools
import math
import time

import pytest
import redis
import requests

from tests.conftest import start_web
from tests.harness.ports import free_port
from tests.harness.sio_client import RecordingClient
from tests.harness.waiting import wait_until

LIMITS = {
    "RATE_LIMIT_SEND_MESSAGE": "5/10s",
    "RATE_LIMIT_SUBSCRIBE": "4/10s",
    "RATE_LIMIT_CONNECT_USER": "4/10s",
    "RATE_LIMIT_CONNECT_IP": "8/10s",
    "RATE_LIMIT_JOIN_TOPIC": "3/10s",
    "RATE_LIMIT_LEAVE_TOPIC": "3/10s",
    "RATE_LIMIT_MARK_AS_READ": "3/10s",
    "RATE_LIMIT_SET_PRESENCE": "3/10s",
    "RATE_LIMIT_SYNC": "3/10s",
    "RATE_LIMIT_MARK_AS_UNREAD": "3/10s",
    "RATE_LIMIT_TEST_PUSH": "2/4s",
    # No worker reads this web's broker: a test push answers 202 after this wait.
    "TEST_PUSH_WAIT": "0.1",
    "PUSH_MAX_SUBSCRIPTIONS": "3",
    "TRUSTED_PROXIES": "1",
    "DEV_LOGIN": "0",  # refused behind a proxy
}


@pytest.fixture(scope="module")
def limited_redis_url(stack, redis_server):
    """The Redis database of the low-limit web process: its counters, and its broker (no
    worker reads it: what that web enqueues stays there, to be counted)."""
    return redis_server.new_db_url()


@pytest.fixture(scope="module")
def limited(stack, limited_redis_url, run_dir):
    env = {**stack.env, **LIMITS, "REDIS_URL": limited_redis_url}
    port = free_port()
    web = start_web(f"web-limits-{stack.backend}", env, port, run_dir)
    yield f"http://127.0.0.1:{port}"
    web.stop()


_addresses = itertools.count()


def _address() -> str:
    """A client address no other call has used (via the trusted proxy's X-Forwarded-For):
    a random pick could repeat one whose attempts still count in the window."""
    n = next(_addresses)
    return f"198.18.{n // 250}.{n % 250 + 1}"


def _connect(url, user, address, name="client"):
    client = RecordingClient(name=name)
    ok, error = client.try_connect(
        url, user.token if user else "garbage", headers={"X-Forwarded-For": address}
    )
    return client, ok, error


def _rest(url, user, method, path, address, **kwargs):
    headers = {"Authorization": f"Bearer {user.token}", "X-Forwarded-For": address}
    return requests.request(method, url + path, headers=headers, timeout=10, **kwargs)


def test_send_message_is_rate_limited_per_user_with_an_honest_hint(beacon, limited, reliability):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    client, ok, _ = _connect(limited, alice, _address())
    other, ok2, _ = _connect(limited, bob, _address())
    try:
        assert ok and ok2
        acks = [client.call("send_message", topic.ref(message=f"m{i}")) for i in range(6)]
        assert all(a["ok"] for a in acks[:5]), acks
        refused = acks[5]
        assert refused["ok"] is False and refused["error"] == "rate_limited", refused
        assert 0 < refused["retry_after"] <= 2.0 and "retry" in refused["message"]
        assert other.call("send_message", topic.ref(message="bob is not limited"))["ok"]
        time.sleep(refused["retry_after"])  # honouring the hint is the behaviour under test
        assert client.call("send_message", topic.ref(message="after the hint"))["ok"]
    finally:
        client.disconnect()
        other.disconnect()
    reliability.record(
        "limits",
        "send_message: 6 in a burst with RATE_LIMIT_SEND_MESSAGE=5/10s",
        expected="the 6th refused `rate_limited` with retry_after; accepted after waiting it; "
        "other users unaffected",
        observed=f"5 ok, 6th rate_limited (retry_after {refused['retry_after']} s), "
        "ok after the hint; bob unaffected",
        count=8,
    )


@pytest.mark.parametrize("event", ["join_topic", "leave_topic", "mark_as_read", "set_presence"])
def test_topic_events_are_rate_limited_per_user(beacon, limited, reliability, event):
    """The topic events, and set_presence (a topic-free payload, counted the same way)."""
    reader, bystander = beacon.user("reader"), beacon.user("bystander")
    topic = beacon.topic(reader, bystander)

    def payload(state: str = "idle") -> dict:
        return {"state": state} if event == "set_presence" else topic.ref()

    address = _address()
    client, ok, _ = _connect(limited, reader, address)
    other, ok2, _ = _connect(limited, bystander, _address())
    try:
        assert ok and ok2
        acks = [client.call(event, payload()) for _ in range(3)]
        acks.append(client.call(event, payload("active")))
        assert all(a["ok"] for a in acks[:3]), acks
        refused = acks[3]
        assert refused["ok"] is False and refused["error"] == "rate_limited", refused
        assert 0 < refused["retry_after"] <= 3.4 and "retry" in refused["message"], refused
        if event == "set_presence":  # the refused call changed nothing: the reader is idle
            online = _rest(limited, bystander, "GET", "/api/users/online", address).json()
            assert {u["user_id"]: u["status"] for u in online["users"]}[reader.id] == "idle"
        assert other.call(event, payload())["ok"]  # per user: the bystander is not limited
        time.sleep(refused["retry_after"])  # honouring the hint is the behaviour under test
        assert client.call(event, payload())["ok"]
    finally:
        client.disconnect()
        other.disconnect()
    setting = f"RATE_LIMIT_{event.upper()}"
    reliability.record(
        "limits",
        f"{event}: 4 in a burst with {setting}=3/10s",
        expected="the 4th refused `rate_limited` with retry_after; accepted after waiting it; "
        "other users unaffected",
        observed=f"3 ok, 4th rate_limited (retry_after {refused['retry_after']} s), "
        "ok after the hint; other user unaffected",
        count=6,
    )


@pytest.mark.parametrize("action", ["sync", "mark_as_unread"])
def test_sync_and_mark_as_unread_share_one_limit_over_socket_and_rest(
    beacon, limited, reliability, action
):
    """``sync`` / ``GET /api/sync`` and ``mark_as_unread`` / ``POST /api/topics/<id>/unread``
    count against one per-user limit each, whichever transport: 2 socket calls and 1 REST call
    use up 3/10s, then both are refused (``rate_limited`` with retry_after; 429 with
    Retry-After); another user is not limited; after the hint the call goes through."""
    reader, bystander = beacon.user("reader"), beacon.user("bystander")
    topic = beacon.topic(reader, bystander)
    sent = beacon.client(bystander, "sender").call("send_message", topic.ref(message="m"))
    assert sent["ok"], sent
    message_id = sent["message"]["id"]
    address = _address()

    def over_socket(client: RecordingClient) -> dict:
        if action == "sync":
            return client.call("sync", {"since": 0})
        return client.call("mark_as_unread", topic.ref(message_id=message_id))

    def over_rest(user) -> requests.Response:
        if action == "sync":
            return _rest(limited, user, "GET", "/api/sync?since=0", address)
        path = f"/api/topics/{topic.topic_id}/unread"
        return _rest(limited, user, "POST", path, address, json={"message_id": message_id})

    client, ok, _ = _connect(limited, reader, address)
    other, ok2, _ = _connect(limited, bystander, _address())
    try:
        assert ok and ok2
        acks = [over_socket(client), over_socket(client)]
        assert all(a["ok"] for a in acks), acks
        assert over_rest(reader).status_code == 200
        refused = over_socket(client)
        assert refused["ok"] is False and refused["error"] == "rate_limited", refused
        assert 0 < refused["retry_after"] <= 3.4 and "retry" in refused["message"], refused
        rest_refused = over_rest(reader)
        assert rest_refused.status_code == 429, rest_refused.text
        data = rest_refused.json()
        assert data["error"] == "rate_limited" and 0 < data["retry_after"] <= 3.4, data
        assert int(rest_refused.headers["Retry-After"]) == max(1, math.ceil(data["retry_after"]))
        assert over_socket(other)["ok"]  # per user: the bystander is not limited
        time.sleep(refused["retry_after"])  # honouring the hint is the behaviour under test
        assert over_socket(client)["ok"]
    finally:
        client.disconnect()
        other.disconnect()
    setting = f"RATE_LIMIT_{action.upper()}"
    route = "GET /api/sync" if action == "sync" else "POST /api/topics/<id>/unread"
    reliability.record(
        "limits",
        f"{action} and `{route}`: 2 socket + 1 REST, then both, with {setting}=3/10s",
        expected="one limit for both transports: the 4th call refused `rate_limited` with "
        "retry_after, REST 429 with Retry-After; accepted after waiting it; other users "
        "unaffected",
        observed=f"3 ok, then rate_limited (retry_after {refused['retry_after']} s) and 429 "
        f"(Retry-After {rest_refused.headers['Retry-After']}), ok after the hint; other user "
        "unaffected",
        count=7,
    )


def test_typing_is_limited_per_user_and_topic(beacon, limited, reliability):
    """One ``typing`` per user and topic every 2 s (fixed): a second one within 2 s is refused
    ``rate_limited`` with retry_after and emits nothing; the same user in another topic, and
    another user in the same topic, are not limited; after the hint it goes through."""
    typist, peer = beacon.user("typist"), beacon.user("peer")
    topic, second = beacon.topic(typist, peer), beacon.topic(typist, peer)
    client, ok, _ = _connect(limited, typist, _address())
    listener, ok2, _ = _connect(limited, peer, _address())
    try:
        assert ok and ok2
        for joined in (topic, second):
            assert listener.call("join_topic", joined.ref())["ok"]
        assert client.call("typing", topic.ref()) == {"ok": True, "topic_id": topic.topic_id}
        refused = client.call("typing", topic.ref())
        assert refused["ok"] is False and refused["error"] == "rate_limited", refused
        assert 0 < refused["retry_after"] <= 2.0 and "retry" in refused["message"], refused
        assert client.call("typing", second.ref())["ok"]  # per topic
        assert listener.call("typing", topic.ref())["ok"]  # per user
        # The refused notice emitted nothing: the next one (another topic) came right after
        # the first, on the listener's connection.
        listener.wait_for_event(
            "user_typing", lambda p: p["topic_id"] == second.topic_id and p["user_id"] == typist.id
        )
        heard = [p["topic_id"] for p in listener.events("user_typing") if p["user_id"] == typist.id]
        assert heard == [topic.topic_id, second.topic_id], heard
        time.sleep(refused["retry_after"])  # honouring the hint is the behaviour under test
        assert client.call("typing", topic.ref())["ok"]
    finally:
        client.disconnect()
        listener.disconnect()
    reliability.record(
        "limits",
        "typing: 2 in one topic within 2 s (fixed: one per user and topic every 2 s)",
        expected="the 2nd refused `rate_limited` with retry_after, nothing emitted; another "
        "topic and another user unaffected; accepted after waiting it",
        observed=f"ok, then rate_limited (retry_after {refused['retry_after']} s) and no "
        "`user_typing`; other topic and other user ok; ok after the hint",
        count=5,
    )


def test_subscribe_is_rate_limited_with_retry_after(beacon, limited, reliability):
    user, other = beacon.user("sub"), beacon.user("other")
    address = _address()
    sub = beacon.push.new_subscription()
    body = {"endpoint": sub["endpoint"], "keys": sub["keys"]}
    statuses = [
        _rest(limited, user, "POST", "/api/notifications/subscribe", address, json=body).status_code
        for _ in range(4)
    ]
    assert statuses == [201, 200, 200, 200]
    refused = _rest(limited, user, "POST", "/api/notifications/subscribe", address, json=body)
    assert refused.status_code == 429, refused.text
    data = refused.json()
    assert data["error"] == "rate_limited" and data["retry_after"] > 0
    assert int(refused.headers["Retry-After"]) == max(1, math.ceil(data["retry_after"]))
    mine = beacon.push.new_subscription()
    other_body = {"endpoint": mine["endpoint"], "keys": mine["keys"]}
    assert (
        _rest(
            limited, other, "POST", "/api/notifications/subscribe", address, json=other_body
        ).status_code
        == 201
    )
    reliability.record(
        "limits",
        "subscribe: 5 in a burst with RATE_LIMIT_SUBSCRIBE=4/10s",
        expected="429 JSON `rate_limited` + Retry-After header; other users unaffected",
        observed=f"201, 200, 200, 200, then 429 (Retry-After {refused.headers['Retry-After']})",
        count=6,
    )


def test_test_push_is_rate_limited_per_user_with_retry_after(
    beacon, limited, limited_redis_url, reliability
):
    """``POST /api/notifications/test`` with ``RATE_LIMIT_TEST_PUSH=2/4s``: the third in a
    burst is 429 ``rate_limited`` with ``Retry-After`` and enqueues no send; another user is
    not limited; after the hint it goes through. (No worker reads this web's broker: an
    accepted test push answers 202 with its job id, and its send stays queued, counted.)"""
    user, other = beacon.user("tester"), beacon.user("other")
    address = _address()
    queued = redis.Redis.from_url(limited_redis_url)

    def test_push(who) -> requests.Response:
        return _rest(limited, who, "POST", "/api/notifications/test", address)

    before = queued.llen("push")
    answers = [test_push(user) for _ in range(3)]
    assert [a.status_code for a in answers[:2]] == [202, 202], [a.text for a in answers]
    assert answers[0].json() == {"job_id": answers[0].json()["job_id"], "done": False}
    refused = answers[2]
    assert refused.status_code == 429, refused.text
    data = refused.json()
    assert data["error"] == "rate_limited" and 0 < data["retry_after"] <= 2.0, data
    assert "test notifications" in data["message"], data
    assert int(refused.headers["Retry-After"]) == max(1, math.ceil(data["retry_after"]))
    assert queued.llen("push") - before == 2  # the refused one enqueued nothing
    assert test_push(other).status_code == 202  # per user: the other user is not limited
    time.sleep(data["retry_after"])  # honouring the hint is the behaviour under test
    after = test_push(user)
    assert after.status_code == 202, after.text
    assert queued.llen("push") - before == 4
    reliability.record(
        "limits",
        "`POST /api/notifications/test`: 3 in a burst with RATE_LIMIT_TEST_PUSH=2/4s",
        expected="the 3rd refused 429 JSON `rate_limited` + Retry-After, no send enqueued; "
        "accepted after waiting it; other users unaffected",
        observed=f"202, 202, then 429 (Retry-After {refused.headers['Retry-After']}), no send "
        "enqueued; 202 after the hint; other user 202",
        count=5,
    )


def test_subscriptions_per_user_are_capped(beacon, limited, reliability):
    user = beacon.user("collector")
    address = _address()
    statuses = []
    for _ in range(4):
        sub = beacon.push.new_subscription()
        body = {"endpoint": sub["endpoint"], "keys": sub["keys"]}
        statuses.append(
            _rest(limited, user, "POST", "/api/notifications/subscribe", address, json=body)
        )
    assert [r.status_code for r in statuses] == [201, 201, 201, 409]
    assert statuses[-1].json()["error"] == "too_many_subscriptions"
    listed = _rest(limited, user, "GET", "/api/notifications/subscriptions", address).json()
    assert len(listed["subscriptions"]) == 3
    reliability.record(
        "limits",
        "push subscriptions per user (PUSH_MAX_SUBSCRIPTIONS=3)",
        expected="the 4th refused 409 `too_many_subscriptions`, 3 kept",
        observed="201, 201, 201, 409 too_many_subscriptions",
        count=4,
    )


def test_connection_attempts_are_rate_limited_per_user(beacon, limited, reliability):
    user = beacon.user("tabs")
    clients = []
    try:
        results = []
        for i in range(5):
            client, ok, error = _connect(limited, user, _address(), f"tab{i}")
            clients.append(client)
            results.append((ok, error))
        assert all(ok for ok, _ in results[:4]), results
        ok, error = results[4]
        assert not ok and error["data"]["error"] == "rate_limited", error
        assert error["data"]["retry_after"] > 0 and error["message"]
        assert all(c.connected for c in clients[:4])  # existing connections are untouched
    finally:
        for client in clients:
            client.disconnect()
    reliability.record(
        "limits",
        "connection attempts per user (RATE_LIMIT_CONNECT_USER=4/10s)",
        expected="the 5th refused `rate_limited` with retry_after; open connections kept",
        observed="4 connected, 5th refused rate_limited "
        f"(retry_after {error['data']['retry_after']} s)",
        count=5,
    )


def test_connection_attempts_are_rate_limited_per_address(beacon, limited, reliability):
    user = beacon.user("fromafar")
    address = _address()
    codes = []
    for i in range(8):  # token guessing from one address: each attempt counts
        client, ok, error = _connect(limited, None, address, f"guess{i}")
        client.disconnect()
        codes.append(error["data"]["error"])
    assert codes == ["invalid_token"] * 8
    client, ok, error = _connect(limited, user, address, "valid-but-late")
    client.disconnect()
    assert not ok and error["data"]["error"] == "rate_limited", error
    elsewhere, ok, _ = _connect(limited, user, _address(), "elsewhere")
    elsewhere.disconnect()
    assert ok
    reliability.record(
        "limits",
        "connection attempts per address (RATE_LIMIT_CONNECT_IP=8/10s, before the token check)",
        expected="the 9th refused `rate_limited`, even with a valid token; other addresses "
        "unaffected",
        observed="8 invalid_token, then rate_limited; another address connected",
        count=10,
    )


def test_message_length_limit(beacon, reliability):
    alice = beacon.user("alice")
    topic = beacon.topic(alice)
    client = beacon.client(alice)
    limit = int(beacon.env["MAX_MESSAGE_LENGTH"])
    too_long = client.call("send_message", topic.ref(message="x" * (limit + 1)))
    assert too_long["error"] == "message_too_long" and too_long["max_length"] == limit
    emoji = client.call("send_message", topic.ref(message="💥" * (limit + 1)))
    assert emoji["error"] == "message_too_long"
    assert client.call("send_message", topic.ref(message="y" * limit))["ok"]
    reliability.record(
        "limits",
        f"message length (MAX_MESSAGE_LENGTH={limit} characters)",
        expected="limit+1 refused `message_too_long` with max_length; exactly limit accepted",
        observed="ASCII and emoji over the limit refused; exactly the limit stored",
        count=3,
    )


def test_oversized_payloads_are_refused_without_harming_others(beacon, reliability):
    alice, bob, mallory = beacon.user("alice"), beacon.user("bob"), beacon.user("mallory")
    topic = beacon.topic(alice, bob, mallory)
    bystander = beacon.client(bob, "bob")
    assert bystander.call("join_topic", {"topic_id": topic.topic_id})["ok"]
    big = "x" * (70 * 1024)

    # Socket.IO: over max_http_buffer_size (64 KiB) the sender's connection is closed.
    sender = beacon.client(mallory, "mallory")
    sender.emit("send_message", topic.ref(message=big))
    wait_until(lambda: not sender.connected, message="the oversized sender stayed connected")
    # Over HTTP long-polling too.
    poller = beacon.new_client("mallory-polling")
    poller.connect(beacon.url, mallory.token, transports=["polling"])
    poller.emit("send_message", topic.ref(message=big))
    wait_until(lambda: not poller.connected, message="the oversized poller stayed connected")

    # REST: 413 JSON.
    response = beacon.api(
        mallory,
        "POST",
        "/api/notifications/subscribe",
        data=b'{"endpoint": "' + big.encode() + b'"}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 413, response.status_code
    assert response.json()["error"] == "request_entity_too_large" and response.json()["message"]

    # Others are unaffected; nothing was stored.
    assert bystander.connected
    alice_client = beacon.client(alice, "alice")
    assert alice_client.call("send_message", topic.ref(message="still working"))["ok"]
    bystander.wait_for_event("new_message", lambda p: p["body"] == "still working")
    page = beacon.api(alice, "GET", f"/api/topics/{topic.topic_id}/messages").json()
    assert [m["body"] for m in page["messages"]] == ["still working"]
    reliability.record(
        "limits",
        "payloads over 64 KiB (Socket.IO websocket and polling, REST body)",
        expected="sender's connection closed / REST 413 JSON; nothing stored; other clients "
        "unaffected",
        observed="both transports closed the sender only; REST 413 request_entity_too_large; "
        "bystander kept receiving",
        count=3,
    )


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("30/10s", (30, 10.0)),
        ("30/10", (30, 10.0)),
        ("100/1m", (100, 60.0)),
        ("1000/1h", (1000, 3600.0)),
        ("off", None),
        ("0", None),
    ],
)
def test_rate_limit_settings_are_parsed(raw, expected):
    from config import load_settings

    limit = load_settings({"RATE_LIMIT_SEND_MESSAGE": raw}).rate_limit_send_message
    assert (None if limit is None else (limit.limit, limit.period)) == expected


@pytest.mark.parametrize(
    "env",
    [
        {"RATE_LIMIT_SUBSCRIBE": "ten/minute"},
        {"RATE_LIMIT_SUBSCRIBE": "-1/10s"},
        {"RATE_LIMIT_SUBSCRIBE": "5/0s"},
        {"RATE_LIMIT_MARK_AS_READ": "many/10s"},
        {"RATE_LIMIT_SYNC": "-1/10s"},
        {"RATE_LIMIT_MARK_AS_UNREAD": "3/0s"},
        {"AUTH_TIMEOUT": "-1"},
        {"MAX_CONNECT_ATTEMPTS": "three"},
        {"MAX_PENDING_SESSIONS": "-5"},
        {"MAX_CONNECTIONS_PER_USER": "-1"},
        # A visibility timeout shorter than a retry countdown would run tasks twice.
        {"BROKER_VISIBILITY_TIMEOUT": "30", "PUSH_RETRY_MAX": "60"},
        {"BROKER_VISIBILITY_TIMEOUT": "30", "DB_RETRY_BACKOFF_MAX": "30"},
        {"BROKER_VISIBILITY_TIMEOUT": "30", "PUSH_RETRY_MAX": "5", "WEBHOOK_TIMEOUT": "30"},
        {"WEBHOOK_TIMEOUT": "0"},
        {"WEBHOOK_DISABLE_AFTER": "0"},
    ],
)
def test_unsafe_or_malformed_settings_are_refused_at_start(env):
    from config import load_settings

    with pytest.raises(ValueError):
        load_settings(env)
