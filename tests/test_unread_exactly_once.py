"""An unread increment counts once per message, however often its task runs."""

from __future__ import annotations

import threading
import uuid

from celery import Celery

from tests.harness.waiting import wait_until


def _for_topic(topic):
    return lambda p: p["topic_id"] == topic.topic_id


def _broker(beacon) -> Celery:
    """A plain Celery producer on the stack's broker: tasks are sent by name, as the web does."""
    return Celery("test-producer", broker=beacon.env["REDIS_URL"])


def test_redelivered_task_counts_once_through_the_real_worker(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    bob_client, alice_client = beacon.client(bob), beacon.client(alice)
    ack = alice_client.call("send_message", topic.ref(message="count me once"))
    message_id = ack["message"]["id"]
    bob_client.wait_for_event("unread_update", _for_topic(topic))

    # Deliver the same task twice more, as Redis does after a worker dies mid-task.
    producer = _broker(beacon)
    for _ in range(2):
        producer.send_task("beacon.unread.increment", args=[message_id, [alice.id]], queue="unread")
    # Every run re-announces the count, so three updates mean all three runs finished.
    wait_until(
        lambda: len([p for p in bob_client.events("unread_update") if _for_topic(topic)(p)]) >= 3,
        message="the repeated tasks did not all run",
    )
    counts = [p["unread_count"] for p in bob_client.events("unread_update") if _for_topic(topic)(p)]
    assert counts == [1, 1, 1]
    assert beacon.unread(bob, topic) == 1
    assert beacon.unread(alice, topic) == 0


def _post(beacon, sender, topic, body="hello") -> int:
    from webapp.extensions import db
    from webapp.models import Message

    with beacon.app.app_context():
        message = Message(
            topic_id=uuid.UUID(topic.topic_id), sender_id=uuid.UUID(sender.id), body=body
        )
        db.session.add(message)
        db.session.commit()
        return message.id


def test_service_applies_increment_once_when_called_twice(beacon):
    from webapp.messaging.unread import apply_increment

    alice, bob, carol = beacon.user("alice"), beacon.user("bob"), beacon.user("carol")
    topic = beacon.topic(alice, bob, carol)
    message_id = _post(beacon, alice, topic)
    with beacon.app.app_context():
        first = apply_increment(message_id, [alice.id])
        second = apply_increment(message_id, [alice.id])
    assert first[0] is True
    assert sorted((c.user_id, c.unread_count) for c in first[1]) == [
        tuple(pair) for pair in sorted([(bob.id, 1), (carol.id, 1)])
    ]
    assert second[0] is False and sorted(second[1]) == sorted(first[1])
    assert [beacon.unread(u, topic) for u in (alice, bob, carol)] == [0, 1, 1]


def test_concurrent_duplicates_count_once(beacon):
    """Eight copies of one task racing in threads (separate connections and transactions)."""
    from webapp.messaging.unread import apply_increment

    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    message_id = _post(beacon, alice, topic)
    results: list[bool] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def run() -> None:
        try:
            with beacon.app.app_context():
                start.wait()
                results.append(apply_increment(message_id, [alice.id])[0])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sorted(results) == [False] * 7 + [True]
    assert beacon.unread(bob, topic) == 1


def test_mark_as_read_before_the_task_runs_is_not_undone(beacon):
    """A read marker past the message means the late increment must not count it."""
    from webapp.messaging.unread import apply_increment

    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    message_id = _post(beacon, alice, topic)
    bob_client = beacon.client(bob)
    ack = bob_client.call("mark_as_read", topic.ref(message_ids=[message_id]))
    assert ack["ok"] and ack["last_read_message_id"] == message_id
    with beacon.app.app_context():
        applied, counts = apply_increment(message_id, [alice.id])
    assert applied and counts == []
    assert beacon.unread(bob, topic) == 0
