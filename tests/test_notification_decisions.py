"""Notification decisions (why a message did or did not push a user) and the test push: the
real web process, push worker, Redis, database and push service."""

from __future__ import annotations

import uuid

from tests.harness.waiting import wait_until
from tests.push_helpers import decision, delivered, subscribe


def test_each_member_gets_the_decision_that_was_made(beacon):
    people = {
        name: beacon.user(name)
        for name in ("alice", "bob", "carol", "dave", "erin", "frank", "gina", "hank")
    }
    topic = beacon.topic(*people.values())
    for name in ("bob", "carol", "erin", "frank", "gina", "hank"):
        subscribe(beacon, people[name])
    prefs = "/api/notifications/preferences"
    assert beacon.api(
        people["erin"], "PUT", f"{prefs}/topics/{topic.topic_id}", json={"level": "none"}
    ).ok
    assert beacon.api(people["frank"], "PATCH", prefs, json={"level": "mentions"}).ok
    assert beacon.api(
        people["gina"], "PUT", f"{prefs}/rooms/{topic.room_id}", json={"level": "none"}
    ).ok
    assert beacon.api(people["hank"], "PATCH", prefs, json={"snooze_minutes": 60}).ok
    bob_client = beacon.client(people["bob"])  # online and active
    sender = beacon.client(people["alice"])
    message = sender.call("send_message", topic.ref(message="lunch?"))["message"]["id"]

    expected = {
        "alice": ("sender", None, None),
        "bob": ("online", None, "active"),
        "carol": ("pushed", None, None),
        "dave": ("no_device", None, None),
        "erin": ("level", "topic", None),
        "frank": ("level", "user", None),
        "gina": ("level", "room", None),
        "hank": ("dnd", None, "snooze"),
    }
    for name, (kind, rule, detail) in expected.items():
        found = decision(beacon, people[name], message)
        assert (found["decision"], found["rule"], found["detail"]) == (kind, rule, detail), name
        assert found["topic_id"] == topic.topic_id and found["created_at"]
    carol = decision(beacon, people["carol"], message)
    [delivery] = carol["deliveries"]
    assert delivery == {**delivery, "channel": "webpush", "outcome": "delivered", "status": 201}
    assert bob_client.connected


def test_a_push_that_failed_on_every_device_says_failed(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    gone, _ = subscribe(beacon, bob)
    refused, _ = subscribe(beacon, bob)
    beacon.push.set_behaviour(gone, sticky=410)
    beacon.push.set_behaviour(refused, sticky=403)
    message = beacon.client(alice).call("send_message", topic.ref(message="hi"))["message"]["id"]
    found = decision(beacon, bob, message)
    assert found["decision"] == "failed"
    assert sorted(d["outcome"] for d in found["deliveries"]) == ["expired", "failed"]


def test_decisions_are_the_callers_own_and_members_only(beacon):
    alice, bob, mallory = beacon.user("alice"), beacon.user("bob"), beacon.user("mallory")
    topic, theirs = beacon.topic(alice, bob), beacon.topic(alice, mallory)
    subscribe(beacon, bob)
    sender = beacon.client(alice)
    message = sender.call("send_message", topic.ref(message="for bob"))["message"]["id"]
    other = sender.call("send_message", theirs.ref(message="for mallory"))["message"]["id"]
    assert decision(beacon, bob, message)["decision"] == "pushed"
    assert decision(beacon, mallory, other)["decision"] == "no_device"
    seen = beacon.api(mallory, "GET", "/api/notifications/decisions").json()["decisions"]
    assert [d["message_id"] for d in seen] == [other]
    refused = beacon.api(
        mallory, "GET", "/api/notifications/decisions", params={"topic_id": topic.topic_id}
    )
    assert refused.status_code == 403 and refused.json()["error"] == "not_a_member"
    only = beacon.api(
        bob, "GET", "/api/notifications/decisions", params={"topic_id": topic.topic_id}
    )
    assert [d["message_id"] for d in only.json()["decisions"]] == [message]
    for params, code in (
        ({"limit": 0}, "invalid_limit"),
        ({"before": "x"}, "invalid_before"),
        ({"topic_id": "x"}, "invalid_topic_id"),
    ):
        answer = beacon.api(bob, "GET", "/api/notifications/decisions", params=params)
        assert answer.status_code == 400 and answer.json()["error"] == code


def test_paging_with_before(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    sender = beacon.client(alice)
    sent = [
        sender.call("send_message", topic.ref(message=f"m{i}"))["message"]["id"] for i in range(5)
    ]
    decision(beacon, bob, sent[-1])
    wait_until(
        lambda: len(beacon.api(bob, "GET", "/api/notifications/decisions").json()["decisions"]) == 5
    )
    first = beacon.api(bob, "GET", "/api/notifications/decisions", params={"limit": 3}).json()
    assert [d["message_id"] for d in first["decisions"]] == sent[:1:-1] and first[
        "next_before"
    ] == sent[2]
    rest = beacon.api(
        bob,
        "GET",
        "/api/notifications/decisions",
        params={"limit": 3, "before": first["next_before"]},
    ).json()
    assert [d["message_id"] for d in rest["decisions"]] == sent[1::-1] and rest[
        "next_before"
    ] is None


def test_a_big_fan_out_records_in_batches(beacon):
    """5,000 members: the decisions go to Redis in a few script calls, not one per member."""
    from bench.stack import create_topics, create_users
    from webapp.delivery import decisions, planning
    from webapp.extensions import db
    from webapp.models import Message
    from webapp.redis_client import get_redis

    users = create_users(beacon.app, 5000, prefix="fan")
    [topic] = create_topics(beacon.app, [list(range(5000))], users)
    redis = get_redis(beacon.env["REDIS_URL"])
    with beacon.app.app_context():
        message = Message(
            topic_id=uuid.UUID(topic.topic_id), sender_id=uuid.UUID(users[0].id), body="all"
        )
        db.session.add(message)
        db.session.commit()
        before = redis.info("commandstats")
        plan = planning.plan_fanout(message.id)
        assert len(plan.decided) == 5000  # the sender and 4,999 members
        decisions.record(plan.decided)  # as the fan-out task does, once the batches are out
        after = redis.info("commandstats")

    def calls(name: str) -> int:
        return after.get(f"cmdstat_{name}", {}).get("calls", 0) - before.get(
            f"cmdstat_{name}", {}
        ).get("calls", 0)

    assert calls("lpush") == 5000
    assert 1 <= calls("evalsha") + calls("eval") <= 10
    sample = users[1234]
    assert redis.llen(f"beacon:decisions:messages:{sample.id}") == 1


def test_a_test_push_reaches_every_device_and_reports_each(beacon):
    alice = beacon.user("alice")
    working, _ = subscribe(beacon, alice, label="laptop")
    gone, _ = subscribe(beacon, alice)
    beacon.push.set_behaviour(gone, sticky=410)
    answer = beacon.api(alice, "POST", "/api/notifications/test")
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["done"] is True and result["job_id"]
    assert sorted(d["outcome"] for d in result["deliveries"]) == ["delivered", "expired"]
    [payload] = delivered(beacon, working)
    assert payload["type"] == "test"
    # The expired device is gone, as after any push.
    listed = beacon.api(alice, "GET", "/api/notifications/subscriptions").json()["subscriptions"]
    assert len(listed) == 1


def test_a_slow_test_push_answers_202_then_an_event(beacon):
    """TEST_PUSH_WAIT is 2 s in the tests; the push service holds its answer for 3."""
    alice = beacon.user("alice")
    slow, _ = subscribe(beacon, alice)
    beacon.push.set_behaviour(slow, script=[{"status": 201, "delay": 3}])
    client = beacon.client(alice)
    answer = beacon.api(alice, "POST", "/api/notifications/test")
    assert answer.status_code == 202, answer.text
    job = answer.json()["job_id"]
    assert answer.json() == {"job_id": job, "done": False}
    result = client.wait_for_event("test_push_result", lambda p: p["job_id"] == job, timeout=20)
    assert [d["outcome"] for d in result["deliveries"]] == ["delivered"]
    # Limited per user (RATE_LIMIT_TEST_PUSH, 3 a minute by default).
    codes = [beacon.api(alice, "POST", "/api/notifications/test").status_code for _ in range(3)]
    assert codes[-1] == 429, codes
