"""REST: topics with unread counts, paged messages, who is online, health, JSON errors."""

from __future__ import annotations

import uuid

from tests.harness.waiting import wait_until


def test_topics_and_paged_messages(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    client = beacon.client(alice)
    ids = [
        client.call("send_message", topic.ref(message=f"m{i}"))["message"]["id"] for i in range(5)
    ]
    wait_until(lambda: beacon.unread(bob, topic) == 5, message="bob's count is not 5")

    topics = beacon.api(bob, "GET", "/api/topics").json()["topics"]
    mine = [t for t in topics if t["topic_id"] == topic.topic_id]
    assert mine and mine[0]["unread_count"] == 5 and mine[0]["room_id"] == topic.room_id

    first = beacon.api(bob, "GET", f"/api/topics/{topic.topic_id}/messages?limit=2").json()
    assert [m["id"] for m in first["messages"]] == ids[::-1][:2]
    second = beacon.api(
        bob, "GET", f"/api/topics/{topic.topic_id}/messages?limit=2&before={first['next_before']}"
    ).json()
    assert [m["id"] for m in second["messages"]] == ids[::-1][2:4]
    last = beacon.api(
        bob, "GET", f"/api/topics/{topic.topic_id}/messages?limit=2&before={second['next_before']}"
    ).json()
    assert [m["id"] for m in last["messages"]] == ids[:1] and last["next_before"] is None


def test_rest_errors_are_json(beacon):
    user = beacon.user("rest")
    cases = [
        ("GET", "/api/topics/not-a-uuid/messages", 400, "invalid_topic_id"),
        ("GET", f"/api/topics/{uuid.uuid4()}/messages", 404, "topic_not_found"),
        ("GET", f"/api/topics/{uuid.uuid4()}/messages?limit=0", 400, "invalid_limit"),
        ("GET", f"/api/topics/{uuid.uuid4()}/messages?before=x", 400, "invalid_before"),
        ("GET", "/api/nothing-here", 404, "not_found"),
        ("POST", "/api/topics", 405, "method_not_allowed"),
    ]
    for method, path, status, code in cases:
        response = beacon.api(user, method, path)
        assert response.status_code == status, (path, response.text)
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json()["error"] == code, (path, response.json())


def test_health_and_readiness(beacon):
    assert beacon.api(None, "GET", "/healthz").json() == {"status": "ok"}
    ready = beacon.api(None, "GET", "/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "redis": "ok"}
