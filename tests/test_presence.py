"""Presence across several connections of one user, observed by another user's client."""

from __future__ import annotations

from tests.harness.waiting import wait_until


def _status(user_id: str, online: bool):
    return lambda p: p["user_id"] == user_id and p["is_online"] is online


def test_two_tabs_count_as_one_online_user(beacon):
    alice, observer_user = beacon.user("alice"), beacon.user("observer")
    observer = beacon.client(observer_user, "observer")

    tab1 = beacon.client(alice, "alice-tab1")
    online = observer.wait_for_event("user_status_change", _status(alice.id, True))
    assert online["username"] == alice.username
    tab2 = beacon.client(alice, "alice-tab2", auth_mode="header")

    tab1.disconnect()
    # Still online: REST reads the live count in Redis.
    listed = beacon.api(observer_user, "GET", "/api/users/online").json()["users"]
    assert alice.id in {u["user_id"] for u in listed}

    tab2.disconnect()
    offline = observer.wait_for_event("user_status_change", _status(alice.id, False))
    assert offline["last_seen_at"] is not None

    # Events about one user arrive in order on one connection: had closing the first tab
    # emitted anything, it would have arrived before this offline event.
    about_alice = [p for p in observer.events("user_status_change") if p["user_id"] == alice.id]
    assert [p["is_online"] for p in about_alice] == [True, False]
    me = beacon.api(alice, "GET", "/api/users/me").json()
    assert me["is_online"] is False and me["last_seen_at"] == offline["last_seen_at"]


def test_query_token_connects_and_user_is_listed_online(beacon):
    carol = beacon.user("carol")
    beacon.client(carol, auth_mode="query")
    listed = beacon.api(carol, "GET", "/api/users/online").json()["users"]
    assert carol.id in {u["user_id"] for u in listed}


def test_user_room_reaches_every_device(beacon):
    dave, erin = beacon.user("dave"), beacon.user("erin")
    topic = beacon.topic(dave, erin)
    devices = [beacon.client(dave, f"dave-{i}") for i in range(3)]
    sender = beacon.client(erin)
    assert sender.call("send_message", topic.ref(message="hi dave"))["ok"]
    for device in devices:
        device.wait_for_event("unread_update", lambda p: p["topic_id"] == topic.topic_id)
    wait_until(lambda: beacon.unread(dave, topic) == 1, message="dave's count is not 1")
