"""The message flow: new_message, global alerts, unread counts, mark as read, refusals."""

from __future__ import annotations

from sqlalchemy import func, select

from tests.harness.waiting import wait_until


def _for_topic(topic, **match):
    return lambda p: p["topic_id"] == topic.topic_id and all(p[k] == v for k, v in match.items())


def _message_count(beacon, topic) -> int:
    import uuid

    from webapp.extensions import db
    from webapp.models import Message

    with beacon.app.app_context():
        return db.session.execute(
            select(func.count())
            .select_from(Message)
            .where(Message.topic_id == uuid.UUID(topic.topic_id))
        ).scalar_one()


def test_offline_member_counts_and_gets_unread_update(beacon):
    alice, bob = beacon.user("alice", "Alice A."), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    bob_client = beacon.client(bob)
    alice_client = beacon.client(alice)

    ack = alice_client.call("send_message", topic.ref(message="hello bob"))
    assert ack["ok"], ack
    update = bob_client.wait_for_event("unread_update", _for_topic(topic))
    assert update["unread_count"] == 1
    assert beacon.unread(bob, topic) == 1
    assert beacon.unread(alice, topic) == 0

    alert = bob_client.wait_for_event("global_message_alert", _for_topic(topic))
    assert alert["message_id"] == ack["message"]["id"]
    assert alert["sender"] == {"id": alice.id, "name": "Alice A."}
    assert alert["room_id"] == topic.room_id and alert["topic_name"]
    assert alert["preview"] == "hello bob"


def test_member_active_in_topic_is_not_counted(beacon):
    alice, bob, carol = beacon.user("alice"), beacon.user("bob"), beacon.user("carol")
    topic = beacon.topic(alice, bob, carol)
    bob_client = beacon.client(bob)
    carol_client = beacon.client(carol)  # member, online, but not looking at the topic
    alice_client = beacon.client(alice)
    assert bob_client.call("join_topic", {"topic_id": topic.topic_id})["ok"]
    assert alice_client.call("join_topic", {"topic_id": topic.topic_id})["ok"]

    ack = alice_client.call("send_message", topic.ref(message="bob is watching"))
    assert ack["ok"], ack
    message = bob_client.wait_for_event("new_message", _for_topic(topic))
    assert message["body"] == "bob is watching" and message["sender"]["id"] == alice.id
    # Carol's update comes from the same task that would have counted Bob.
    carol_client.wait_for_event("unread_update", _for_topic(topic, unread_count=1))
    assert beacon.unread(bob, topic) == 0
    assert beacon.unread(alice, topic) == 0
    bob_client.assert_no_event("unread_update", _for_topic(topic))

    # After leaving the topic Bob counts again.
    assert bob_client.call("leave_topic", {"topic_id": topic.topic_id})["ok"]
    assert alice_client.call("send_message", topic.ref(message="bob left"))["ok"]
    bob_client.wait_for_event("unread_update", _for_topic(topic, unread_count=1))
    carol_client.wait_for_event("unread_update", _for_topic(topic, unread_count=2))
    assert beacon.unread(alice, topic) == 0


def test_mark_as_read_resets_and_tells_the_room(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    alice_client, bob_phone = beacon.client(alice), beacon.client(bob, "bob-phone")
    ids = []
    for text in ("one", "two", "three"):
        ack = alice_client.call("send_message", topic.ref(message=text))
        ids.append(ack["message"]["id"])
    bob_phone.wait_for_event("unread_update", _for_topic(topic, unread_count=3))
    assert alice_client.call("join_topic", {"topic_id": topic.topic_id})["ok"]

    bob_laptop = beacon.client(bob, "bob-laptop")
    ack = bob_laptop.call("mark_as_read", topic.ref(message_ids=ids))
    assert ack["ok"] and ack["unread_count"] == 0 and ack["message_ids"] == ids
    read = alice_client.wait_for_event("messages_read", _for_topic(topic))
    # Alice sees Bob's receipt, not his count.
    assert read == {**read, "user_id": bob.id, "message_ids": ids, "last_read_message_id": ids[-1]}
    assert "unread_count" not in read and read["version"] >= 1 and read["read_at"]
    # Bob's other device hears about it too, in its private room.
    bob_phone.wait_for_event("messages_read", _for_topic(topic))
    bob_phone.wait_for_event("unread_update", _for_topic(topic, unread_count=0))
    assert beacon.unread(bob, topic) == 0
    listed = beacon.api(bob, "GET", "/api/topics").json()["topics"]
    assert [t["unread_count"] for t in listed if t["topic_id"] == topic.topic_id] == [0]


def test_non_member_is_refused_and_nothing_is_stored(beacon):
    alice, mallory = beacon.user("alice"), beacon.user("mallory")
    topic = beacon.topic(alice)
    client = beacon.client(mallory)
    joined = client.call("join_topic", {"topic_id": topic.topic_id})
    assert joined["ok"] is False and joined["error"] == "not_a_member"
    sent = client.call("send_message", topic.ref(message="let me in"))
    assert sent["ok"] is False and sent["error"] == "not_a_member"
    read = client.call("mark_as_read", topic.ref(message_ids=[1]))
    assert read["ok"] is False and read["error"] == "not_a_member"
    assert _message_count(beacon, topic) == 0
    page = beacon.api(mallory, "GET", f"/api/topics/{topic.topic_id}/messages")
    assert page.status_code == 403 and page.json()["error"] == "not_a_member"


def test_bad_messages_are_refused_with_a_reason(beacon):
    alice = beacon.user("alice")
    topic = beacon.topic(alice)
    client = beacon.client(alice)
    cases = {
        "empty_message": topic.ref(message=""),
        "message_too_long": topic.ref(message="x" * 2001),
        "invalid_message": topic.ref(message=42),
        "missing_field": {"room_id": topic.room_id, "message": "no topic"},
        "invalid_topic_id": topic.ref(topic_id="not-a-uuid", message="hi"),
        "unknown_field": topic.ref(message="hi", extra=1),
        "invalid_payload": ["not", "an", "object"],
        "room_mismatch": {**topic.ref(message="hi"), "room_id": alice.id},
    }
    for code, payload in cases.items():
        ack = client.call("send_message", payload)
        assert ack["ok"] is False and ack["error"] == code, (code, ack)
        assert ack["message"]
    whitespace = client.call("send_message", topic.ref(message="   \n\t "))
    assert whitespace["error"] == "empty_message"
    assert _message_count(beacon, topic) == 0
    exactly_max = client.call("send_message", topic.ref(message="y" * 2000))
    assert exactly_max["ok"], exactly_max


def test_long_message_preview_is_at_most_100_chars(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    bob_client, alice_client = beacon.client(bob), beacon.client(alice)
    body = "word " * 300
    assert alice_client.call("send_message", topic.ref(message=body))["ok"]
    alert = bob_client.wait_for_event("global_message_alert", _for_topic(topic))
    assert len(alert["preview"]) <= 100 and alert["preview"].endswith("\u2026")
    wait_until(lambda: beacon.unread(bob, topic) == 1, message="bob's count is not 1")


def test_unknown_event_gets_an_error(beacon):
    client = beacon.client(beacon.user("eve"))
    ack = client.call("drop_tables", {})
    assert ack["ok"] is False and ack["error"] == "unknown_event"
    client.wait_for_event("error", lambda p: p["code"] == "unknown_event")
