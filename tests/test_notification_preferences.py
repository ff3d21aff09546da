"""Preferences, do-not-disturb and push history, end to end: REST, the real fan-out in the push
worker, and the local push service."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from celery import Celery

from tests.harness.waiting import wait_until
from tests.push_helpers import delivered, fanout_done, send, subscribe

PREFS = "/api/notifications/preferences"


def _patch(beacon, user, body, status=200):
    response = beacon.api(user, "PATCH", PREFS, json=body)
    assert response.status_code == status, response.text
    return response.json()


def _put(beacon, user, path, level, status=200):
    response = beacon.api(user, "PUT", f"{PREFS}/{path}", json={"level": level})
    assert response.status_code == status, response.text
    return response.json()


def _silenced(beacon, message_id, silenced):
    line = fanout_done(beacon, message_id, subscriptions=0)
    assert f" silenced={silenced} " in line, line


# -- REST --------------------------------------------------------------------------------------


def test_defaults_and_changes_are_the_callers_own(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    alice_phone, bob_phone = beacon.client(alice), beacon.client(bob)
    fresh = beacon.api(alice, "GET", PREFS).json()
    assert fresh == {
        "level": "all",
        "quiet_hours": None,
        "time_zone": "UTC",
        "snooze_until": None,
        "dnd_allow_mentions": False,
        "dnd_active": False,
        "push_when_idle": True,
        "email_level": "mentions",
        "email_delay": None,
        "share_read_receipts": True,
        "email": {
            "address": None,
            "enabled": False,
            "failing": False,
            "failing_since": None,
            "delay_default": 600,
        },
        "rooms": [],
        "topics": [],
    }
    changed = _patch(
        beacon,
        alice,
        {
            "level": "mentions",
            "quiet_hours": {"start": "22:30", "end": "06:45"},
            "time_zone": "America/New_York",
            "snooze_minutes": 30,
            "dnd_allow_mentions": True,
        },
    )
    assert changed["level"] == "mentions" and changed["time_zone"] == "America/New_York"
    assert changed["quiet_hours"] == {"start": "22:30", "end": "06:45"}
    assert changed["dnd_active"] is True and changed["dnd_allow_mentions"] is True
    # Alice's other devices hear of it; Bob's do not.
    assert alice_phone.wait_for_event("preferences_updated") == changed
    snooze_end = datetime.fromisoformat(changed["snooze_until"])
    assert timedelta(minutes=29) < snooze_end - datetime.now(UTC) <= timedelta(minutes=30)

    assert _put(beacon, alice, f"topics/{topic.topic_id}", "none")["level"] == "none"
    assert _put(beacon, alice, f"rooms/{topic.room_id}", "all")["level"] == "all"
    assert _put(beacon, alice, f"topics/{topic.topic_id}", "all")["level"] == "all"  # upsert
    prefs = beacon.api(alice, "GET", PREFS).json()
    assert prefs["topics"] == [
        {"topic_id": topic.topic_id, "room_id": topic.room_id, "level": "all", "email_level": None}
    ]
    assert prefs["rooms"] == [{"room_id": topic.room_id, "level": "all", "email_level": None}]

    # Partial updates keep the rest; null turns quiet hours and the snooze off.
    after = _patch(beacon, alice, {"quiet_hours": None, "snooze_until": None})
    assert after["quiet_hours"] is None and after["snooze_until"] is None
    assert after["level"] == "mentions" and after["dnd_active"] is False

    # Bob sees none of it.
    assert beacon.api(bob, "GET", PREFS).json()["topics"] == []
    assert beacon.api(bob, "GET", PREFS).json()["level"] == "all"

    deleted = beacon.api(alice, "DELETE", f"{PREFS}/topics/{topic.topic_id}")
    assert deleted.status_code == 204
    assert beacon.api(alice, "DELETE", f"{PREFS}/rooms/{topic.room_id}").status_code == 204
    assert beacon.api(alice, "GET", PREFS).json()["topics"] == []
    alice_phone.wait_for_event(
        "preferences_updated",
        lambda p: p["quiet_hours"] is None and p["rooms"] == [] and p["topics"] == [],
    )
    assert bob_phone.events("preferences_updated") == []


def test_bad_preferences_are_refused_with_a_reason(beacon):
    alice = beacon.user("alice")
    cases = [
        ({"level": "loud"}, "invalid_level"),
        ({"level": None}, "invalid_level"),
        ({"volume": 3}, "unknown_field"),
        ({"time_zone": "Mars/Olympus"}, "invalid_time_zone"),
        ({"time_zone": "posixrules"}, "invalid_time_zone"),
        ({"time_zone": "../../etc/passwd"}, "invalid_time_zone"),
        ({"quiet_hours": {"start": "25:00", "end": "07:00"}}, "invalid_quiet_hours"),
        ({"quiet_hours": {"start": "22:00"}}, "invalid_quiet_hours"),
        ({"quiet_hours": {"start": "07:00", "end": "07:00"}}, "invalid_quiet_hours"),
        ({"quiet_hours": "22-07"}, "invalid_payload"),
        ({"snooze_until": "tomorrow"}, "invalid_snooze"),
        ({"snooze_until": "2030-01-01T08:00:00"}, "invalid_snooze"),  # no offset
        ({"snooze_until": "2099-01-01T08:00:00Z"}, "invalid_snooze"),  # past the bound
        ({"snooze_minutes": -5}, "invalid_snooze"),
        ({"snooze_minutes": True}, "invalid_snooze"),
        ({"snooze_minutes": 5, "snooze_until": None}, "invalid_snooze"),
        ({"dnd_allow_mentions": "yes"}, "invalid_dnd_allow_mentions"),
        ({"push_when_idle": 1}, "invalid_push_when_idle"),
        ({"share_read_receipts": "yes"}, "invalid_share_read_receipts"),
        ({"email_level": "daily"}, "invalid_email_level"),
        ({"email_level": None}, "invalid_email_level"),
        ({"email_delay": -1}, "invalid_email_delay"),
        ({"email_delay": 86401}, "invalid_email_delay"),
        ({"email_delay": "600"}, "invalid_email_delay"),
        ({"email_delay": 1.5}, "invalid_email_delay"),
        ([], "invalid_payload"),
    ]
    for body, code in cases:
        response = beacon.api(alice, "PATCH", PREFS, json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.json()["error"] == code, (body, response.json())
    assert beacon.api(alice, "GET", PREFS).json()["level"] == "all"  # nothing half-applied
    assert beacon.api(None, "GET", PREFS).status_code == 401


def test_levels_only_for_topics_and_rooms_the_caller_is_in(beacon):
    alice, bob, eve = beacon.user("alice"), beacon.user("bob"), beacon.user("eve")
    topic = beacon.topic(alice, bob)
    assert _put(beacon, eve, f"topics/{topic.topic_id}", "none", status=403)["error"] == (
        "not_a_member"
    )
    missing = _put(beacon, eve, f"topics/{uuid.uuid4()}", "none", status=404)
    assert missing["error"] == "topic_not_found"
    assert _put(beacon, eve, f"rooms/{topic.room_id}", "none", status=404)["error"] == (
        "room_not_found"
    )
    assert _put(beacon, eve, "topics/not-an-id", "none", status=400)["error"] == (
        "invalid_topic_id"
    )
    # Deleting only ever touches the caller's own rows: Alice's override stays.
    _put(beacon, alice, f"topics/{topic.topic_id}", "none")
    assert beacon.api(eve, "DELETE", f"{PREFS}/topics/{topic.topic_id}").status_code == 204
    assert beacon.api(eve, "DELETE", f"{PREFS}/rooms/{topic.room_id}").status_code == 204
    assert beacon.api(alice, "GET", PREFS).json()["topics"][0]["level"] == "none"
    bad_level = _put(beacon, alice, f"topics/{topic.topic_id}", "sometimes", status=400)
    assert bad_level["error"] == "invalid_level"


def test_email_levels_of_topics_are_set_and_cleared_apart_from_push_levels(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    path = f"{PREFS}/topics/{topic.topic_id}"

    def put(body: dict, status: int = 200) -> dict:
        response = beacon.api(alice, "PUT", path, json=body)
        assert response.status_code == status, response.text
        return response.json()

    assert put({"email_level": "all"})["level"] is None
    assert put({"level": "none"}) == {
        "topic_id": topic.topic_id,
        "room_id": topic.room_id,
        "level": "none",
        "email_level": "all",
    }
    assert put({"email_level": None})["level"] == "none"
    assert beacon.api(alice, "GET", PREFS).json()["topics"][0]["email_level"] is None
    # Neither level left: the override is gone.
    assert put({"level": None})["email_level"] is None
    assert beacon.api(alice, "GET", PREFS).json()["topics"] == []
    assert put({}, 400)["error"] == "invalid_level"
    assert put({"email_level": "daily"}, 400)["error"] == "invalid_email_level"
    assert put({"level": "all", "volume": 1}, 400)["error"] == "unknown_field"


# -- levels in the fan-out -----------------------------------------------------------------------


def test_muted_topic_gets_no_push_but_still_counts_unread(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    sub, _ = subscribe(beacon, bob)
    _put(beacon, bob, f"topics/{topic.topic_id}", "none")
    first = send(beacon, alice, topic, "busy chatter")
    mention = send(beacon, alice, topic, f"@{bob.username} even this")
    _silenced(beacon, first, 1)
    _silenced(beacon, mention, 1)
    assert beacon.push.attempts(sub) == 0
    wait_until(lambda: beacon.unread(bob, topic) == 2, message="muted messages were not counted")


def test_mentions_level_pushes_only_mentions(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    sub, _ = subscribe(beacon, bob)
    _patch(beacon, bob, {"level": "mentions"})
    plain = send(beacon, alice, topic, "nothing for bob")
    _silenced(beacon, plain, 1)
    mention = send(beacon, alice, topic, f"hey @{bob.username}")
    (payload,) = delivered(beacon, sub)
    assert payload["type"] == "mention" and payload["message_id"] == mention
    assert beacon.push.attempts(sub) == 1


def test_topic_level_beats_room_level_beats_user_level(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    room = f"room-{uuid.uuid4().hex[:8]}"
    loud = beacon.topic(alice, bob, channel=room)
    quiet = beacon.topic(alice, bob, channel=room)
    sub, _ = subscribe(beacon, bob)
    _patch(beacon, bob, {"level": "all"})
    _put(beacon, bob, f"rooms/{quiet.room_id}", "none")  # the whole room muted ...
    _put(beacon, bob, f"topics/{loud.topic_id}", "all")  # ... except this topic
    silenced = send(beacon, alice, quiet, "in the muted room")
    _silenced(beacon, silenced, 1)
    heard = send(beacon, alice, loud, "in the topic that overrides it")
    (payload,) = delivered(beacon, sub)
    assert payload["message_id"] == heard and payload["topic_id"] == loud.topic_id


# -- do-not-disturb ------------------------------------------------------------------------------


def test_snooze_silences_everything_then_ends(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    sub, _ = subscribe(beacon, bob)
    _patch(beacon, bob, {"snooze_minutes": 60})
    hushed = send(beacon, alice, topic, f"@{bob.username} during the snooze")
    _silenced(beacon, hushed, 1)
    assert beacon.push.attempts(sub) == 0
    _patch(beacon, bob, {"snooze_minutes": 0})
    heard = send(beacon, alice, topic, "after the snooze")
    (payload,) = delivered(beacon, sub)
    assert payload["message_id"] == heard  # nothing from the snooze is sent late
    wait_until(lambda: beacon.unread(bob, topic) == 2, message="unread counts did not grow")


def test_quiet_hours_in_the_users_time_zone_let_allowed_mentions_through(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    sub, _ = subscribe(beacon, bob)
    zone = "Pacific/Kiritimati"  # UTC+14: quiet hours around its local now are not UTC's
    local = datetime.now(ZoneInfo(zone))
    start, end = local - timedelta(hours=1), local + timedelta(hours=1)
    quiet = {"start": start.strftime("%H:%M"), "end": end.strftime("%H:%M")}
    prefs = _patch(
        beacon, bob, {"quiet_hours": quiet, "time_zone": zone, "dnd_allow_mentions": True}
    )
    assert prefs["dnd_active"] is True
    plain = send(beacon, alice, topic, "quiet please")
    _silenced(beacon, plain, 1)
    mention = send(beacon, alice, topic, f"@{bob.username} urgent")
    (payload,) = delivered(beacon, sub)
    assert payload["message_id"] == mention and payload["type"] == "mention"

    # The same clock times in UTC are 14 hours away from now: not quiet.
    _patch(beacon, bob, {"time_zone": "UTC"})
    heard = send(beacon, alice, topic, "the window is elsewhere in UTC")
    payloads = delivered(beacon, sub, count=2)
    assert payloads[-1]["message_id"] == heard


# -- history -------------------------------------------------------------------------------------


def _history(beacon, user, **params):
    response = beacon.api(user, "GET", "/api/notifications/history", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_history_records_each_outcome_for_its_user_only(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    good, good_row = subscribe(beacon, bob)
    gone, gone_row = subscribe(beacon, bob)
    bad, bad_row = subscribe(beacon, bob)
    beacon.push.set_behaviour(gone, sticky=410)
    beacon.push.set_behaviour(bad, sticky={"status": 400, "body": "malformed"})
    message_id = send(beacon, alice, topic, "one of each")
    wait_until(
        lambda: len(_history(beacon, bob)["pushes"]) == 3,
        timeout=20,
        message="the three outcomes were not recorded",
    )
    by_sub = {p["subscription_id"]: p for p in _history(beacon, bob)["pushes"]}
    assert by_sub[good_row["id"]]["outcome"] == "delivered"
    assert by_sub[good_row["id"]]["status_code"] == 201
    assert by_sub[gone_row["id"]]["outcome"] == "expired"
    assert by_sub[gone_row["id"]]["status_code"] == 410
    assert by_sub[bad_row["id"]]["outcome"] == "failed"
    assert by_sub[bad_row["id"]]["status_code"] == 400
    for push in by_sub.values():
        assert push["message_id"] == message_id and push["topic_id"] == topic.topic_id
        assert push["type"] == "message" and push["message_count"] == 1
        assert push["push_service"] == beacon.push.base_url.rstrip("/")
        assert "/" not in push["push_service"].split("://", 1)[1]  # no device token
    failed = _history(beacon, bob, outcome="failed")["pushes"]
    assert [p["subscription_id"] for p in failed] == [bad_row["id"]]
    assert _history(beacon, alice)["pushes"] == []
    bad_query = beacon.api(bob, "GET", "/api/notifications/history", params={"outcome": "x"})
    assert bad_query.status_code == 400 and bad_query.json()["error"] == "invalid_outcome"
    assert beacon.push.attempts(good) == 1


def test_history_pages_newest_first(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    subscribe(beacon, bob)
    sent = [send(beacon, alice, topic, f"message {i}") for i in range(3)]
    wait_until(
        lambda: len(_history(beacon, bob)["pushes"]) == 3, timeout=20, message="not recorded"
    )
    first = _history(beacon, bob, limit=2)
    assert len(first["pushes"]) == 2 and first["next_before"] is not None
    rest = _history(beacon, bob, limit=2, before=first["next_before"])
    assert rest["next_before"] is None
    ids = [p["id"] for p in first["pushes"] + rest["pushes"]]
    assert ids == sorted(ids, reverse=True)
    assert sorted(p["message_id"] for p in first["pushes"] + rest["pushes"]) == sent


def test_history_older_than_the_retention_is_pruned(beacon):
    from webapp.extensions import db
    from webapp.models import PushRecord

    bob = beacon.user("bob")
    days = 30  # PUSH_HISTORY_DAYS default
    with beacon.app.app_context():
        for age in (days + 1, days - 1):
            db.session.add(
                PushRecord(
                    user_id=uuid.UUID(bob.id),
                    subscription_id=uuid.uuid4(),
                    push_service="https://push.example",
                    kind="message",
                    outcome="delivered",
                    status_code=201,
                    created_at=datetime.now(UTC) - timedelta(days=age),
                )
            )
        db.session.commit()
    assert len(_history(beacon, bob)["pushes"]) == 2
    producer = Celery("test-producer", broker=beacon.env["REDIS_URL"])
    producer.send_task("beacon.push.prune_history", queue="push")
    wait_until(lambda: len(_history(beacon, bob)["pushes"]) == 1, timeout=20, message="not pruned")
    (kept,) = _history(beacon, bob)["pushes"]
    assert datetime.fromisoformat(kept["created_at"]) > datetime.now(UTC) - timedelta(days=days)


def test_rules_resolve_the_same_by_id_and_through_the_membership(beacon, monkeypatch):
    """Small fan-outs look users up by id, big ones through the topic's memberships."""
    from webapp.delivery import rules as notification_rules
    from webapp.extensions import db
    from webapp.models import Topic

    alice, bob, carol, dave = (beacon.user(n) for n in ("alice", "bob", "carol", "dave"))
    topic = beacon.topic(alice, bob, carol, dave)
    _patch(beacon, bob, {"level": "mentions", "snooze_minutes": 30, "time_zone": "Asia/Tokyo"})
    _put(beacon, bob, f"rooms/{topic.room_id}", "none")
    _put(beacon, bob, f"topics/{topic.topic_id}", "all")
    _put(beacon, carol, f"rooms/{topic.room_id}", "none")
    _patch(beacon, dave, {"level": "mentions"})
    ids = [uuid.UUID(u.id) for u in (alice, bob, carol, dave)]
    with beacon.app.app_context():
        row = db.session.get(Topic, uuid.UUID(topic.topic_id))
        for limit in (100, 0):
            monkeypatch.setattr(notification_rules, "BY_ID_LIMIT", limit)
            rules = notification_rules.rules_for(ids[:3], row)  # dave is not asked about
            assert set(rules) == {ids[1], ids[2]}, limit  # alice has no rule
            assert rules[ids[1]].level == "all" and rules[ids[1]].time_zone == "Asia/Tokyo"
            assert rules[ids[1]].snooze_until is not None
            assert rules[ids[2]].level == "none" and rules[ids[2]].snooze_until is None
        db.session.remove()
