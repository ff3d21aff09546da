"""Idle presence end to end: ``set_presence``, quiet connections turning idle, the user's
``status``, and what idle means for pushes and unread counts.

One stack for the module with a short PRESENCE_IDLE_AFTER (the web process checks on its
heartbeat, every second here) and no coalescing, so each message is its own push.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Stack, shared_services_stack
from tests.harness.waiting import wait_until
from tests.push_helpers import delivered, fanout_done, send, subscribe

IDLE_AFTER = 3.0
PREFS = "/api/notifications/preferences"


@pytest.fixture(scope="module")
def idle_stack(backend: str, request: pytest.FixtureRequest) -> Iterator[Stack]:
    if backend != "sqlite":
        # Attention lives in Redis; the status it stores is the same compare-and-set that
        # test_presence and test_presence_storms run on both backends.
        pytest.skip("idle presence is Redis work: one backend is enough")
    with shared_services_stack(
        request,
        backend,
        f"beacon_attention_{backend}",
        name=f"attention-{backend}",
        PRESENCE_IDLE_AFTER=str(IDLE_AFTER),
        PRESENCE_HEARTBEAT_INTERVAL="1",
        PUSH_COALESCE_WINDOW="0",
    ) as stack:
        yield stack


@pytest.fixture
def beacon(idle_stack: Stack) -> Iterator[Stack]:
    yield idle_stack
    idle_stack.close_clients()


def _statuses(watcher, user) -> list[str]:
    return [e["status"] for e in watcher.events("user_status_change") if e["user_id"] == user.id]


def _status_is(watcher, user, status: str) -> None:
    watcher.wait_for_event(
        "user_status_change",
        lambda e: e["user_id"] == user.id and e["status"] == status,
        timeout=IDLE_AFTER + 10,
    )


def _online_ids(beacon, user) -> set[str]:
    users = beacon.api(user, "GET", "/api/users/online").json()["users"]
    return {u["user_id"] for u in users}


def test_status_is_active_while_any_connection_is_active(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    watcher = beacon.client(bob)
    laptop, phone = beacon.client(alice), beacon.client(alice)
    _status_is(watcher, alice, "active")

    ack = laptop.call("set_presence", {"state": "idle"})
    assert ack == {"ok": True, "state": "idle", "status": "active"}  # the phone is active
    ack = phone.call("set_presence", {"state": "idle"})
    assert ack == {"ok": True, "state": "idle", "status": "idle"}
    _status_is(watcher, alice, "idle")
    change = watcher.events("user_status_change")[-1]
    assert change["is_online"] is True and change["status"] == "idle"
    # Saying it again changes nothing and announces nothing.
    assert phone.call("set_presence", {"state": "idle"})["status"] == "idle"

    assert laptop.call("set_presence", {"state": "active"})["status"] == "active"
    _status_is(watcher, alice, "active")
    laptop.disconnect()
    phone.call("set_presence", {"state": "idle"})
    phone.disconnect()
    _status_is(watcher, alice, "offline")
    assert _statuses(watcher, alice) == ["active", "idle", "active", "idle", "offline"]
    assert alice.id not in _online_ids(beacon, bob)


def test_a_quiet_connection_turns_idle_and_a_message_makes_it_active(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    watcher = beacon.client(bob)
    tab = beacon.client(alice)
    _status_is(watcher, alice, "active")
    # Says nothing for IDLE_AFTER: idle, found by the web process's heartbeat.
    _status_is(watcher, alice, "idle")
    mark = watcher.mark()
    assert tab.call("send_message", topic.ref(message="back"))["ok"]
    watcher.wait_for_event(
        "user_status_change",
        lambda e: e["user_id"] == alice.id and e["status"] == "active",
        after=mark,
    )


def test_a_user_with_only_idle_tabs_gets_the_push_and_the_unread_count(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    sub, _ = subscribe(beacon, bob)
    tab1, tab2 = beacon.client(bob), beacon.client(bob)
    for tab in (tab1, tab2):
        assert tab.call("join_topic", topic.ref())["ok"]
        assert tab.call("set_presence", {"state": "idle"})["ok"]

    message_id = send(beacon, alice, topic, "while you were away")
    fanout_done(beacon, message_id, 1)
    (push,) = delivered(beacon, sub)
    assert push["message_id"] == message_id
    # Joined but idle is not looking: the message counts as unread.
    tab1.wait_for_event("unread_update", lambda u: u["unread_count"] == 1)
    assert beacon.unread(bob, topic) == 1

    # One tab comes back: no push, and nothing more unread in the topic it has open.
    assert tab2.call("set_presence", {"state": "active"})["status"] == "active"
    second = send(beacon, alice, topic, "seen at once")
    fanout_done(beacon, second, 0)
    assert beacon.unread(bob, topic) == 1
    assert len(beacon.push.messages(sub)) == 1


def test_an_active_tab_anywhere_holds_the_push_back(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic, other = beacon.topic(alice, bob), beacon.topic(alice, bob)
    sub, _ = subscribe(beacon, bob)
    idle_tab, active_tab = beacon.client(bob), beacon.client(bob)
    assert idle_tab.call("join_topic", topic.ref())["ok"]
    assert idle_tab.call("set_presence", {"state": "idle"})["ok"]
    assert active_tab.call("join_topic", other.ref())["ok"]  # looking at another topic

    message_id = send(beacon, alice, topic, "hello")
    fanout_done(beacon, message_id, 0)
    # Not looking at this topic: unread (the alert tells the active tab), but no push.
    idle_tab.wait_for_event("unread_update", lambda u: u["unread_count"] == 1)
    assert beacon.push.messages(sub) == []


def test_push_when_idle_off_keeps_an_idle_user_unpushed(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    sub, _ = subscribe(beacon, bob)
    changed = beacon.api(bob, "PATCH", PREFS, json={"push_when_idle": False})
    assert changed.status_code == 200 and changed.json()["push_when_idle"] is False
    tab = beacon.client(bob)
    assert tab.call("set_presence", {"state": "idle"})["status"] == "idle"

    fanout_done(beacon, send(beacon, alice, topic, "not for your phone"), 0)
    tab.disconnect()
    wait_until(lambda: bob.id not in _online_ids(beacon, alice), message="bob still online")
    # Offline, the preference does not apply: pushed.
    message_id = send(beacon, alice, topic, "now you are gone")
    fanout_done(beacon, message_id, 1)
    (push,) = delivered(beacon, sub)
    assert push["message_id"] == message_id


def _both_acks(tab, read: dict) -> dict[str, dict]:
    """Emit ``mark_as_read`` and, without waiting for its ack, ``set_presence idle``."""
    acks: dict[str, dict] = {}
    tab.sio.emit("mark_as_read", read, callback=lambda a: acks.setdefault("read", a))
    tab.sio.emit("set_presence", {"state": "idle"}, callback=lambda a: acks.setdefault("idle", a))
    wait_until(lambda: len(acks) == 2, timeout=10, message="no acks")
    return acks


def test_a_read_sent_before_idle_does_not_make_the_user_active_again(beacon):
    """The client reads, then hides the page (``set_presence idle``) without waiting for the
    read's ack. The server handles the two concurrently and the read finishes last; being
    older, it does not overrule the idle (events count in arrival order)."""
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    sender = beacon.client(bob)
    tab = beacon.client(alice)
    for round_ in range(8):
        sent = sender.call("send_message", topic.ref(message=f"read me {round_}"))
        assert sent["ok"], sent
        assert tab.call("set_presence", {"state": "active"})["status"] == "active"
        acks = _both_acks(tab, topic.ref(message_ids=[sent["message"]["id"]]))
        assert acks["read"]["ok"] and acks["idle"]["ok"], acks
        me = beacon.api(alice, "GET", "/api/users/me").json()
        assert me["status"] == "idle", f"round {round_}: {me['status']}"


def test_set_presence_refuses_bad_input(beacon):
    alice = beacon.user("alice")
    tab = beacon.client(alice)
    for payload in ({"state": "away"}, {"state": None}, {}, {"state": "idle", "x": 1}, "idle"):
        ack = tab.call("set_presence", payload)
        assert ack["ok"] is False and ack["error"] in {
            "invalid_state",
            "unknown_field",
            "invalid_payload",
        }, (payload, ack)
    assert tab.call("set_presence", {"state": "active"})["ok"]
