"""Coalescing end to end: a burst in one topic gives an offline user one push with the count.

A stack of its own (the session's pushes every message: PUSH_COALESCE_WINDOW=0), on SQLite:
the window lives in Redis, the database does not change it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import Stack, shared_services_stack
from tests.harness.processes import wait_log_contains
from tests.push_helpers import decision, delivered, subscribe

WINDOW = 6  # seconds; a burst of 20 messages takes well under one second


@pytest.fixture(scope="module")
def coalescing(request) -> Iterator[Stack]:
    with shared_services_stack(
        request,
        "sqlite",
        "beacon_coalescing",
        name="coalescing",
        PUSH_COALESCE_WINDOW=str(WINDOW),
    ) as stack:
        yield stack


@pytest.fixture
def beacon(coalescing: Stack) -> Iterator[Stack]:
    yield coalescing
    coalescing.close_clients()


def _flush_line(beacon, user, topic, since=None):
    return wait_log_contains(
        beacon.workers["push"],
        f"push flush user={user.id} topic={topic.topic_id}",
        timeout=WINDOW + 20,
        since=since,
    )


def _window_with_one_held(beacon):
    """Alice writes twice to offline Bob: the first is pushed, the second held (each waited
    for: fan-outs run concurrently). Returns (alice, bob, topic, Bob's subscription, sender,
    the held message's id)."""
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    sub, _ = subscribe(beacon, bob)
    sender = beacon.client(alice)
    assert sender.call("send_message", topic.ref(message="first"))["ok"]
    delivered(beacon, sub)
    held = sender.call("send_message", topic.ref(message="still there?"))["message"]["id"]
    line = wait_log_contains(beacon.workers["push"], f"fan-out message={held} ", timeout=20)
    assert " held=1 " in line, line
    return alice, bob, topic, sub, sender, held


def _not_held(found):
    """A held message's decision, once its window ended (or a read ended it)."""
    return found["decision"] != "coalesced"


def test_burst_of_20_gives_two_pushes_the_last_with_the_count(beacon):
    alice, bob = beacon.user("alice", "Alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    sub, _ = subscribe(beacon, bob)
    sender = beacon.client(alice)
    ids = []
    for i in range(20):
        ack = sender.call("send_message", topic.ref(message=f"message {i}"))
        assert ack["ok"], ack
        ids.append(ack["message"]["id"])

    line = _flush_line(beacon, bob, topic)
    assert line.rstrip().endswith("messages=20 subscriptions=1"), line
    first, last = delivered(beacon, sub, count=2)
    # Fan-outs run concurrently (gevent pool): whichever reaches Redis first goes at once.
    assert first["count"] == 1 and first["message_id"] in ids
    assert first["title"].startswith("Alice in ")
    assert last["count"] == 20 and last["message_id"] == ids[-1]
    assert last["title"].startswith("20 new messages in ")
    assert last["body"] == "Alice: message 19"
    raw = beacon.push.messages(sub)
    assert len(raw) == 2
    # One Topic header for the topic: the push service (and the device's tag) replace the older.
    assert raw[0]["topic"] == raw[1]["topic"] and raw[0]["topic"]

    history = beacon.api(bob, "GET", "/api/notifications/history").json()["pushes"]
    assert [(p["message_count"], p["outcome"]) for p in history] == [
        (20, "delivered"),
        (1, "delivered"),
    ]
    # Why each message did or did not ring: one pushed at once, the rest carried by the last.
    decided = [decision(beacon, bob, i, lambda d: d["deliveries"]) for i in ids]
    assert sorted(d["decision"] for d in decided) == ["coalesced"] * 19 + ["pushed"]
    carried = {d["carried_by"] for d in decided if d["decision"] == "coalesced"}
    assert carried == {ids[-1]}
    assert all(d["deliveries"][0]["outcome"] == "delivered" for d in decided)


def test_first_mention_in_a_window_is_not_held(beacon):
    _, bob, topic, sub, sender, held = _window_with_one_held(beacon)
    ack = sender.call("send_message", topic.ref(message=f"@{bob.username} answer please"))
    assert ack["ok"], ack
    first, mention = delivered(beacon, sub, count=2)  # long before the window ends
    assert first["count"] == 1
    assert mention["type"] == "mention" and mention["count"] == 3
    assert beacon.push.messages(sub)[1]["urgency"] == "high"
    # The mention's push covered what the window held: its flush has nothing left to send.
    line = _flush_line(beacon, bob, topic)
    assert line.rstrip().endswith("nothing held"), line
    assert len(beacon.push.messages(sub)) == 2
    # Its decision says so, and the held message names it as its carrier.
    pushed = decision(beacon, bob, ack["message"]["id"])
    assert (pushed["decision"], pushed["detail"]) == ("pushed", "carries_held")
    assert decision(beacon, bob, first["message_id"])["detail"] is None
    carried = decision(beacon, bob, held, lambda d: d["deliveries"])
    assert (carried["decision"], carried["carried_by"]) == ("coalesced", ack["message"]["id"])


def test_no_flush_push_once_the_user_is_back(beacon):
    _, bob, topic, sub, _, held = _window_with_one_held(beacon)
    bob_client = beacon.client(bob)  # back online before the window ends
    bob_client.wait_for_event("user_status_change", lambda d: d.get("user_id") == bob.id)
    line = _flush_line(beacon, bob, topic)
    assert "skipped: the user is active" in line, line
    assert len(beacon.push.messages(sub)) == 1
    assert json.loads(beacon.push.messages(sub)[0]["payload"])["body"] == "first"
    found = decision(beacon, bob, held, _not_held)
    assert (found["decision"], found["detail"], found["deliveries"]) == ("online", "active", [])


def test_reading_during_the_window_drops_the_held_push(beacon):
    _, bob, topic, sub, _, held = _window_with_one_held(beacon)
    reader = beacon.client(bob)
    assert reader.call("mark_as_read", topic.ref())["ok"]
    reader.disconnect()
    # Reading ends the chain (mark_as_read resets the window): its flush finds nothing held.
    line = _flush_line(beacon, bob, topic)
    assert line.rstrip().endswith("nothing held"), line
    assert len(beacon.push.messages(sub)) == 1
    assert decision(beacon, bob, held, _not_held)["decision"] == "read_first"


def test_muting_during_the_window_drops_the_held_push(beacon):
    _, bob, topic, sub, _, held = _window_with_one_held(beacon)
    muted = beacon.api(
        bob,
        "PUT",
        f"/api/notifications/preferences/topics/{topic.topic_id}",
        json={"level": "none"},
    )
    assert muted.status_code == 200, muted.text
    line = _flush_line(beacon, bob, topic)
    assert "skipped: the user's preferences or do-not-disturb" in line, line
    assert len(beacon.push.messages(sub)) == 1
    found = decision(beacon, bob, held, _not_held)
    assert (found["decision"], found["rule"]) == ("level", "topic")
