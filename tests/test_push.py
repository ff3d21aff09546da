"""Web Push end to end: real worker (gevent pool), real HTTP to a local push service that
verifies VAPID and decrypts like a browser vendor's."""

from __future__ import annotations

import json
import uuid

from celery import Celery
from sqlalchemy import select

from tests.harness.waiting import wait_until
from tests.push_helpers import delivered as _delivered
from tests.push_helpers import fanout_done as _fanout_done
from tests.push_helpers import send as _send
from tests.push_helpers import subscribe as _subscribe


def _stored(beacon, subscription_id):
    from webapp.extensions import db
    from webapp.models import PushSubscription

    with beacon.app.app_context():
        row = db.session.execute(
            select(PushSubscription).where(PushSubscription.id == uuid.UUID(subscription_id))
        ).scalar_one_or_none()
        if row is not None:
            db.session.expunge(row)
        return row


def test_offline_member_gets_one_push_per_device(beacon):
    alice, bob, carol = beacon.user("alice", "Alice"), beacon.user("bob"), beacon.user("carol")
    topic = beacon.topic(alice, bob, carol)
    bob_phone, _ = _subscribe(beacon, bob)
    bob_laptop, _ = _subscribe(beacon, bob)
    carol_sub, _ = _subscribe(beacon, carol)
    alice_sub, _ = _subscribe(beacon, alice)
    beacon.client(carol)  # online: no push

    text = "lunch? " + "x" * 200
    message_id = _send(beacon, alice, topic, text)
    for sub in (bob_phone, bob_laptop):
        (payload,) = _delivered(beacon, sub)
        assert payload["type"] == "message"
        assert payload["title"] == f"Alice in {payload['title'].split(' in ', 1)[1]}"
        assert payload["body"].startswith("lunch? xxx") and len(payload["body"]) <= 100
        assert payload["topic_id"] == topic.topic_id and payload["room_id"] == topic.room_id
        assert payload["message_id"] == message_id
        assert payload["url"].startswith(beacon.url) and topic.topic_id in payload["url"]
        (raw,) = beacon.push.messages(sub)
        assert raw["ttl"] > 0 and raw["urgency"] == "normal"
        assert raw["topic"] and len(raw["topic"]) <= 32
    _fanout_done(beacon, message_id, subscriptions=2)
    assert beacon.push.attempts(carol_sub) == 0
    assert beacon.push.attempts(alice_sub) == 0
    wait_until(
        lambda: _stored(beacon, _subscription_id(beacon, bob, bob_phone)).last_success_at,
        message="last_success_at was not recorded",
    )


def _subscription_id(beacon, user, sub):
    listed = beacon.api(user, "GET", "/api/notifications/subscriptions").json()["subscriptions"]
    return next(s["id"] for s in listed if s["endpoint"] == sub["endpoint"])


def test_mention_is_urgent(beacon):
    alice, bob, dave = beacon.user("alice"), beacon.user("bob"), beacon.user("dave")
    topic = beacon.topic(alice, bob, dave)
    bob_sub, _ = _subscribe(beacon, bob)
    dave_sub, _ = _subscribe(beacon, dave)
    _send(beacon, alice, topic, f"@{bob.username} can you look?")
    (payload,) = _delivered(beacon, bob_sub)
    assert payload["type"] == "mention" and "mentioned you" in payload["title"]
    assert beacon.push.messages(bob_sub)[0]["urgency"] == "high"
    (other,) = _delivered(beacon, dave_sub)
    assert other["type"] == "message"


def test_gone_subscriptions_are_deleted(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    gone, gone_row = _subscribe(beacon, bob)
    missing, missing_row = _subscribe(beacon, bob)
    beacon.push.set_behaviour(gone, sticky=410)
    beacon.push.set_behaviour(missing, sticky=404)
    _send(beacon, alice, topic, "anyone there?")
    for row in (gone_row, missing_row):
        wait_until(
            lambda row=row: _stored(beacon, row["id"]) is None,
            timeout=20,
            message="expired subscription was not deleted",
        )
    assert beacon.push.attempts(gone) == 1 and beacon.push.attempts(missing) == 1


def test_429_with_retry_after_then_delivers_exactly_once(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    sub, row = _subscribe(beacon, bob)
    beacon.push.set_behaviour(sub, script=[{"status": 429, "retry_after": 1}, {"status": 201}])
    _send(beacon, alice, topic, "slow down")
    _delivered(beacon, sub)
    record = beacon.push.record(sub)
    assert record["attempts"] == 2 and record["delivered"] == 1
    assert [r["status"] for r in record["refusals"]] == [429]
    wait_until(lambda: _stored(beacon, row["id"]).last_success_at, message="no success recorded")
    assert _stored(beacon, row["id"]).failure_count == 0


def test_endless_500_stops_at_the_bound_and_records_failure(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    sub, row = _subscribe(beacon, bob)
    beacon.push.set_behaviour(sub, sticky=500)
    _send(beacon, alice, topic, "server down")
    max_retries = int(beacon.env["PUSH_MAX_RETRIES"])
    wait_until(
        lambda: _stored(beacon, row["id"]).failure_count == 1,
        timeout=30,
        message="the failure was not recorded",
    )
    assert beacon.push.attempts(sub) == max_retries + 1
    assert _stored(beacon, row["id"]).last_success_at is None


def test_client_errors_are_not_retried(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    bad, bad_row = _subscribe(beacon, bob)
    forbidden, forbidden_row = _subscribe(beacon, bob)
    beacon.push.set_behaviour(bad, sticky={"status": 400, "body": "malformed"})
    beacon.push.set_behaviour(forbidden, sticky=403)
    _send(beacon, alice, topic, "no retries")
    for row in (bad_row, forbidden_row):
        wait_until(
            lambda row=row: _stored(beacon, row["id"]).failure_count == 1,
            timeout=20,
            message="the rejection was not recorded",
        )
    assert beacon.push.attempts(bad) == 1 and beacon.push.attempts(forbidden) == 1
    assert _stored(beacon, bad_row["id"]) is not None  # kept: not an expiry


def test_redelivered_send_does_not_notify_twice(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    sub, row = _subscribe(beacon, bob)
    message_id = _send(beacon, alice, topic, "once")
    (payload,) = _delivered(beacon, sub)
    _send_twice_and_wait_skipped(beacon, row["id"], bob, message_id, skipped=2)
    assert beacon.push.record(sub)["attempts"] == 1


def test_summary_push_is_sent_once_and_apart_from_the_messages_own(beacon):
    """A coalescing window's summary may name a message that had its own push (a mention sent
    at once): it has its own delivery marker, and is itself sent only once."""
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    sub, row = _subscribe(beacon, bob)
    message_id = _send(beacon, alice, topic, "own push")
    (payload,) = _delivered(beacon, sub)
    _send_twice_and_wait_skipped(beacon, row["id"], bob, message_id, skipped=1, summary=True)
    counts = [json.loads(m["payload"])["count"] for m in beacon.push.messages(sub)]
    assert counts == [1, 3] and beacon.push.record(sub)["attempts"] == 2


def _send_twice_and_wait_skipped(beacon, sub_id, user, message_id, *, skipped, summary=False):
    """Enqueue the same one-delivery batch twice, as a redelivery would, and wait until the
    worker has skipped ``skipped`` of the sends as already done (or in flight)."""
    producer = Celery("test-producer", broker=beacon.env["REDIS_URL"])
    count = 3 if summary else 1
    for _ in range(2):
        producer.send_task(
            "beacon.push.send_batch",
            args=["webpush", message_id, [[sub_id, user.id, "message", count, summary]]],
            queue="push",
        )
    line = f"push skipped subscription={sub_id} message={message_id}"
    wait_until(
        lambda: beacon.workers["push"].log_text().count(line) == skipped,
        message=f"the worker did not skip {skipped} of the repeated sends",
    )


def test_a_batch_retries_only_its_failed_deliveries(beacon):
    """One batch (one push service) holds the three devices; one answers 503 once. Only that
    delivery goes on as a retry batch: the two others are sent once, and its push arrives
    on the second attempt."""
    alice, bob, carol = beacon.user("alice"), beacon.user("bob"), beacon.user("carol")
    topic = beacon.topic(alice, bob, carol)
    bob_phone, _ = _subscribe(beacon, bob)
    bob_laptop, _ = _subscribe(beacon, bob)
    carol_sub, _ = _subscribe(beacon, carol)
    beacon.push.set_behaviour(bob_laptop, script=[{"status": 503, "retry_after": 1}])
    message_id = _send(beacon, alice, topic, "one batch")
    line = _fanout_done(beacon, message_id, subscriptions=3)
    assert " batches=1 " in line, line
    for sub in (bob_phone, bob_laptop, carol_sub):
        (payload,) = _delivered(beacon, sub)
        assert payload["message_id"] == message_id
    assert [beacon.push.attempts(s) for s in (bob_phone, bob_laptop, carol_sub)] == [1, 2, 1]
