"""Client state (issue 18): catching up with ``sync``, mark as unread, read receipts with
privacy, typing. Real web process, workers, Redis and database."""

from __future__ import annotations

import random
import threading
import uuid
from dataclasses import replace
from typing import Any

import pytest

from tests.harness.waiting import wait_until


def _sync(client: Any, since: int | None = None) -> dict[str, Any]:
    ack = client.call("sync", {} if since is None else {"since": since})
    assert ack["ok"], ack
    return ack


def _topic(answer: dict[str, Any], topic: Any) -> dict[str, Any]:
    [row] = [t for t in answer["topics"] if t["topic_id"] == topic.topic_id]
    return row


def _wait_counted(beacon: Any, user: Any, topic: Any, count: int) -> None:
    wait_until(lambda: beacon.unread(user, topic) == count, message=f"unread == {count}")


def test_sync_after_a_cut_connection_equals_a_fresh_load(beacon):
    alice, bob, carol = beacon.user("alice"), beacon.user("bob"), beacon.user("carol")
    general, side = beacon.topic(alice, bob, carol), beacon.topic(alice, bob)
    alice_tab = beacon.client(alice, "alice-tab")
    bob_client = beacon.client(bob)
    assert alice_tab.call("join_topic", {"topic_id": general.topic_id})["ok"]
    first = bob_client.call("send_message", general.ref(message="before the cut"))["message"]
    alice_tab.wait_for_event("new_message", lambda p: p["id"] == first["id"])
    before = _sync(alice_tab)
    assert before["cursor"] == first["id"]
    shown = {t["topic_id"]: {m["id"]: m for m in t["messages"]} for t in before["topics"]}

    alice_tab.disconnect()
    sent = [
        bob_client.call("send_message", topic.ref(message=text))["message"]["id"]
        for topic, text in ((general, "one"), (side, "two"), (general, "three"))
    ]
    carol_client = beacon.client(carol)
    assert carol_client.call("mark_as_read", general.ref())["ok"]
    assert bob_client.call("mark_as_read", side.ref())["ok"]
    _wait_counted(beacon, alice, general, 2)  # not the first: she was looking then
    _wait_counted(beacon, alice, side, 1)

    alice_tab = beacon.client(alice, "alice-tab-again")
    assert alice_tab.call("join_topic", {"topic_id": general.topic_id})["ok"]
    caught_up = _sync(alice_tab, before["cursor"])
    assert caught_up["cursor"] == max(sent)
    assert [m["id"] for m in _topic(caught_up, general)["messages"]] == [sent[2], sent[0]]
    assert [m["id"] for m in _topic(caught_up, side)["messages"]] == [sent[1]]
    for topic in caught_up["topics"]:
        shown.setdefault(topic["topic_id"], {}).update({m["id"]: m for m in topic["messages"]})
        assert topic["has_more"] is False and topic["next_before"] is None

    # What a fresh load shows: the topics route, the messages route, receipts and presence.
    fresh = _sync(alice_tab)
    listed = {t["topic_id"]: t for t in beacon.api(alice, "GET", "/api/topics").json()["topics"]}
    for topic in (general, side):
        row, again = _topic(caught_up, topic), _topic(fresh, topic)
        page = beacon.api(alice, "GET", f"/api/topics/{topic.topic_id}/messages").json()
        assert sorted(shown[topic.topic_id], reverse=True) == [m["id"] for m in page["messages"]]
        assert [m["id"] for m in again["messages"]] == [m["id"] for m in page["messages"]]
        for key in ("unread_count", "last_read_message_id", "version"):
            assert row[key] == again[key] == listed[topic.topic_id][key], key
        receipts = beacon.api(alice, "GET", f"/api/topics/{topic.topic_id}/receipts").json()
        assert row["receipts"] == again["receipts"]
        assert [r["user_id"] for r in row["receipts"]] == [
            r["user_id"] for r in receipts["receipts"]
        ]
    assert _topic(caught_up, general)["unread_count"] == 2
    readers = {r["user_id"]: r for r in _topic(caught_up, general)["receipts"]}
    assert readers[carol.id]["last_read_message_id"] == sent[2] and readers[carol.id]["read_at"]
    assert [r["user_id"] for r in _topic(caught_up, side)["receipts"]] == [bob.id]
    people = {u["user_id"]: u for u in caught_up["users"]}
    assert set(people) == {alice.id, bob.id, carol.id}
    assert people[bob.id]["status"] == "active" and people[alice.id]["is_online"] is True
    assert caught_up["preferences"]["share_read_receipts"] is True
    # The REST route answers the same.
    over_rest = beacon.api(alice, "GET", f"/api/sync?since={before['cursor']}").json()
    assert [t["messages"] for t in over_rest["topics"]] == [
        t["messages"] for t in caught_up["topics"]
    ]


def _insert_messages(beacon: Any, sender: Any, topics: list[Any], rounds: int) -> list[tuple]:
    """``rounds`` messages in each topic, interleaved, straight into the database (sync reads
    what is stored; the pipeline is not what this tests). Returns [(id, topic_id)]."""
    from webapp.extensions import db
    from webapp.models import Message

    with beacon.app.app_context():
        rows = [
            Message(topic_id=uuid.UUID(t.topic_id), sender_id=uuid.UUID(sender.id), body=f"m{i}")
            for i in range(rounds)
            for t in topics
        ]
        db.session.add_all(rows)
        db.session.commit()
        return [(m.id, str(m.topic_id)) for m in rows]


def test_sync_pages_with_has_more_and_keeps_the_newest_thousand(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topics = [beacon.topic(alice, bob) for _ in range(6)]
    quiet, old = beacon.topic(alice, bob), beacon.topic(alice, bob)
    older = _insert_messages(beacon, bob, [old], 5)  # left out by the 1,000 newer ones
    stored = _insert_messages(beacon, bob, topics, 210)  # 1,260 messages after since
    client = beacon.client(alice)
    answer = _sync(client, 0)

    returned = [m["id"] for t in answer["topics"] for m in t["messages"]]
    newest = sorted((i for i, _ in stored), reverse=True)
    assert sorted(returned, reverse=True) == newest[:1000]
    for topic in [*topics, old]:
        row = _topic(answer, topic)
        ids = [m["id"] for m in row["messages"]]
        assert ids == sorted(ids, reverse=True) and len(ids) <= 200
        assert row["has_more"] is True
        assert row["next_before"] == (ids[-1] if ids else max(i for i, _ in older) + 1)
        # The rest, through the messages route, down to ``since``.
        before, paged = row["next_before"], list(ids)
        while before is not None:
            page = beacon.api(
                alice, "GET", f"/api/topics/{topic.topic_id}/messages?before={before}&limit=200"
            ).json()
            paged += [m["id"] for m in page["messages"]]
            before = page["next_before"]
        assert paged == sorted((i for i, t in older + stored if t == topic.topic_id), reverse=True)
    assert _topic(answer, quiet) == {**_topic(answer, quiet), "messages": [], "has_more": False}
    assert answer["cursor"] == newest[0]
    assert _sync(client, answer["cursor"])["cursor"] == answer["cursor"]
    assert client.call("sync", {"since": -1})["error"] == "invalid_since"
    assert client.call("sync", {"since": "1"})["error"] == "invalid_since"
    assert client.call("sync", {"since": 1, "more": 1})["error"] == "unknown_field"
    assert beacon.api(alice, "GET", "/api/sync?since=x").json()["error"] == "invalid_since"
    loner = beacon.user("loner")
    alone = beacon.api(loner, "GET", "/api/sync").json()
    assert alone == {**alone, "cursor": None, "topics": []}
    assert [u["user_id"] for u in alone["users"]] == [loner.id]


def test_a_sync_answer_over_a_megabyte_reaches_the_socket(beacon):
    """An ack is the answer to the client's own request: a big one (1,000 long messages) is
    not taken for a client that stopped reading (MAX_PENDING_BYTES, 1 MiB)."""
    if beacon.backend != "sqlite":
        pytest.skip("the transport's limit: nothing of the database's")
    from webapp.extensions import db
    from webapp.models import Message

    alice, bob = beacon.user("alice"), beacon.user("bob")
    topics = [beacon.topic(alice, bob) for _ in range(5)]
    with beacon.app.app_context():
        db.session.add_all(
            Message(topic_id=uuid.UUID(t.topic_id), sender_id=uuid.UUID(bob.id), body="x" * 1900)
            for t in topics
            for _ in range(200)
        )
        db.session.commit()
    client = beacon.client(alice)
    answer = client.call("sync", {}, timeout=30)
    assert answer["ok"], answer
    assert sum(len(t["messages"]) for t in answer["topics"]) == 1000
    assert client.connected and client.call("sync", {"since": answer["cursor"]})["ok"]


def _flood(
    topic: Any, clients: list[Any], count: int, sent: list[int], errors: list[BaseException]
) -> list[threading.Thread]:
    """Each client sends ``count`` messages in its own thread (started); ids go to ``sent``."""

    def flood(client: Any) -> None:
        try:
            for i in range(count):
                ack = client.call("send_message", topic.ref(message=f"flood {i}"))
                assert ack["ok"], ack
                sent.append(ack["message"]["id"])
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=flood, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    return threads


def test_a_message_sent_during_the_sync_is_seen_exactly_once(beacon):
    alice, bob, carol = beacon.user("alice"), beacon.user("bob"), beacon.user("carol")
    topic = beacon.topic(alice, bob, carol)
    client = beacon.client(alice)
    assert client.call("join_topic", {"topic_id": topic.topic_id})["ok"]
    since = _sync(client)["cursor"] or 0
    senders = [beacon.client(bob, "bob-sender"), beacon.client(carol, "carol-sender")]
    sent: list[int] = []
    errors: list[BaseException] = []
    threads = _flood(topic, senders, 12, sent, errors)
    answers = []
    while any(t.is_alive() for t in threads) or not answers:
        mark = client.mark()
        answers.append((mark, _sync(client, since)))
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len(sent) == 24
    wait_until(lambda: {p["id"] for p in client.events("new_message")} >= set(sent))

    for mark, answer in answers:
        ids = [m["id"] for m in _topic(answer, topic)["messages"]]
        assert len(ids) == len(set(ids))
        live = {p["id"] for p in client.events("new_message", after=mark)}
        # Whatever the answer left out reached the client as a live event after the call.
        assert set(sent) <= set(ids) | live
        # The answer holds only stored messages, none past its cursor.
        assert set(ids) <= set(sent) and all(i <= (answer["cursor"] or 0) for i in ids)
    # Merged by id, the client shows each message once: what a fresh load shows.
    page = beacon.api(alice, "GET", f"/api/topics/{topic.topic_id}/messages").json()
    assert sorted(sent, reverse=True) == [m["id"] for m in page["messages"]]


def test_mark_as_unread_moves_the_marker_and_tells_every_device(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic, other = beacon.topic(alice, bob), beacon.topic(alice, bob)
    alice_client = beacon.client(alice)
    bob_phone, bob_laptop = beacon.client(bob, "bob-phone"), beacon.client(bob, "bob-laptop")
    ids = []
    for sender, text in ((alice_client, "m0"), (alice_client, "m1"), (bob_laptop, "mine")):
        ids.append(sender.call("send_message", topic.ref(message=text))["message"]["id"])
    for text in ("m2", "m3"):
        ids.append(alice_client.call("send_message", topic.ref(message=text))["message"]["id"])
    _wait_counted(beacon, bob, topic, 4)
    read = bob_laptop.call("mark_as_read", topic.ref())
    assert read["unread_count"] == 0 and read["last_read_message_id"] == ids[-1]
    assert alice_client.call("join_topic", {"topic_id": topic.topic_id})["ok"]
    mark = bob_phone.mark()

    # From the second message: m1, (bob's own message is not counted), m2, m3.
    ack = bob_laptop.call("mark_as_unread", topic.ref(message_id=ids[1]))
    assert ack["ok"], ack
    assert ack["unread_count"] == 3 and ack["last_read_message_id"] == ids[1] - 1
    assert ack["version"] > read["version"] and ack["read_at"]
    update = bob_phone.wait_for_event(
        "unread_update",
        lambda p: p["topic_id"] == topic.topic_id and p["version"] == ack["version"],
    )
    assert update["unread_count"] == 3
    assert beacon.unread(bob, topic) == 3
    receipt = alice_client.wait_for_event("messages_read", lambda p: p["user_id"] == bob.id)
    assert receipt["last_read_message_id"] == ids[1] - 1 and "unread_count" not in receipt
    listed = beacon.api(bob, "GET", "/api/topics").json()["topics"]
    [row] = [t for t in listed if t["topic_id"] == topic.topic_id]
    assert row["unread_count"] == 3 and row["version"] == ack["version"]
    assert bob_phone.events("unread_update", after=mark)

    # Forward too, over REST: everything before the last message is read.
    answer = beacon.api(
        bob, "POST", f"/api/topics/{topic.topic_id}/unread", json={"message_id": ids[-1]}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["unread_count"] == 1 and beacon.unread(bob, topic) == 1
    # A new message counts on top.
    alice_client.call("send_message", topic.ref(message="later"))
    _wait_counted(beacon, bob, topic, 2)

    refusals = {
        "message_not_found": {**other.ref(), "message_id": ids[0]},
        "invalid_message_id": topic.ref(message_id=0),
        "unknown_field": topic.ref(message_id=ids[0], extra=1),
    }
    for code, payload in refusals.items():
        assert bob_laptop.call("mark_as_unread", payload)["error"] == code
    mallory = beacon.client(beacon.user("mallory"))
    assert mallory.call("mark_as_unread", topic.ref(message_id=ids[0]))["error"] == "not_a_member"
    stranger = beacon.api(
        beacon.user("eve"), "POST", f"/api/topics/{topic.topic_id}/unread", json={"message_id": 1}
    )
    assert stranger.status_code == 403 and stranger.json()["error"] == "not_a_member"
    bad = beacon.api(bob, "POST", f"/api/topics/{topic.topic_id}/unread", json={"message_id": "1"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_message_id"
    assert beacon.unread(bob, topic) == 2


def test_mark_as_unread_under_a_flood_leaves_exact_counts(beacon):
    """Increments, reads and marks as unread of one member racing on PostgreSQL (row locks,
    READ COMMITTED): once the workers are done the count is exactly the messages after the
    marker that others sent."""
    if beacon.backend != "postgresql":
        pytest.skip("the race needs concurrent writers: PostgreSQL")
    from sqlalchemy import func, select

    from webapp.extensions import db
    from webapp.models import Message, TopicMember

    reader = beacon.user("reader")
    senders = [beacon.user(f"sender{i}") for i in range(3)]
    topic = beacon.topic(reader, *senders)
    reader_client = beacon.client(reader, "reader")
    sent: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()
    clients = [beacon.client(u, f"{u.username}-flood") for u in senders]
    threads = _flood(topic, clients, 25, sent, errors)
    rng = random.Random(18)
    moves = 0
    while not done.is_set():
        if sent:
            if rng.random() < 0.5:
                ack = reader_client.call("mark_as_unread", topic.ref(message_id=rng.choice(sent)))
            else:
                ack = reader_client.call("mark_as_read", topic.ref())
            assert ack["ok"], ack
            moves += 1
        if not any(t.is_alive() for t in threads):
            done.set()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    # One more move back while increments may still be queued.
    assert reader_client.call("mark_as_unread", topic.ref(message_id=sorted(sent)[10]))["ok"]
    assert moves > 10

    def exact() -> tuple[int, int]:
        with beacon.app.app_context():
            member = db.session.execute(
                select(TopicMember).where(
                    TopicMember.topic_id == uuid.UUID(topic.topic_id),
                    TopicMember.user_id == uuid.UUID(reader.id),
                )
            ).scalar_one()
            expected = db.session.execute(
                select(func.count())
                .select_from(Message)
                .where(
                    Message.topic_id == member.topic_id,
                    Message.id > member.last_read_message_id,
                    Message.sender_id != member.user_id,
                )
            ).scalar_one()
            return member.unread_count, expected

    from webapp.messaging.unread import increment_marker
    from webapp.platform.idempotency import claimed_among

    def all_counted() -> bool:
        with beacon.app.app_context():
            return len(claimed_among([increment_marker(i) for i in sent])) == len(sent)

    wait_until(all_counted, timeout=30, message="every increment applied")
    count, expected = exact()
    assert count == expected == 75 - 10


def test_receipts_are_hidden_both_ways_when_a_user_stops_sharing(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    alice_client, bob_client = beacon.client(alice), beacon.client(bob)
    bob_other = beacon.client(bob, "bob-other-device")
    for client in (alice_client, bob_client):
        assert client.call("join_topic", {"topic_id": topic.topic_id})["ok"]
    first = alice_client.call("send_message", topic.ref(message="hi"))["message"]["id"]
    assert bob_client.call("mark_as_read", topic.ref())["ok"]
    alice_client.wait_for_event("messages_read", lambda p: p["user_id"] == bob.id)
    seen = beacon.api(alice, "GET", f"/api/topics/{topic.topic_id}/receipts").json()
    assert seen["enabled"] is True and seen["has_more"] is False
    [receipt] = seen["receipts"]
    assert receipt["user_id"] == bob.id and receipt["last_read_message_id"] == first
    assert receipt["username"] == bob.username and receipt["read_at"]

    changed = beacon.api(
        bob, "PATCH", "/api/notifications/preferences", json={"share_read_receipts": False}
    )
    assert changed.status_code == 200 and changed.json()["share_read_receipts"] is False
    bad = beacon.api(
        bob, "PATCH", "/api/notifications/preferences", json={"share_read_receipts": "no"}
    )
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_share_read_receipts"
    # Bob's marker is no longer shown to Alice, and Bob sees no one's.
    seen = beacon.api(alice, "GET", f"/api/topics/{topic.topic_id}/receipts").json()
    assert seen == {**seen, "enabled": True, "receipts": []}
    mine = beacon.api(bob, "GET", f"/api/topics/{topic.topic_id}/receipts").json()
    assert mine == {**mine, "enabled": False, "receipts": []}
    assert _topic(_sync(alice_client), topic)["receipts"] == []
    bob_view = _sync(bob_client)
    assert bob_view["receipts_enabled"] is False and _topic(bob_view, topic)["receipts"] == []

    # Live: Bob's reads reach only his own devices; Alice's reads do not reach Bob.
    alice_mark, bob_mark = alice_client.mark(), bob_client.mark()
    second = alice_client.call("send_message", topic.ref(message="again"))["message"]["id"]
    assert bob_client.call("mark_as_read", topic.ref())["ok"]
    bob_other.wait_for_event("messages_read", lambda p: p["last_read_message_id"] == second)
    assert alice_client.call("mark_as_read", topic.ref())["ok"]
    # Events of one connection keep their order: what came after shows what did not come.
    alice_client.wait_for_event("messages_read", lambda p: p["user_id"] == alice.id)
    fence = alice_client.call("send_message", topic.ref(message="fence"))["message"]["id"]
    bob_client.wait_for_event("new_message", lambda p: p["id"] == fence)
    alice_client.assert_no_event(
        "messages_read", lambda p: p["user_id"] == bob.id, after=alice_mark
    )
    bob_client.assert_no_event("messages_read", lambda p: p["user_id"] == alice.id, after=bob_mark)

    # Sharing again shows both markers again.
    assert beacon.api(
        bob, "PATCH", "/api/notifications/preferences", json={"share_read_receipts": True}
    ).ok
    seen = beacon.api(alice, "GET", f"/api/topics/{topic.topic_id}/receipts").json()
    assert [(r["user_id"], r["last_read_message_id"]) for r in seen["receipts"]] == [
        (bob.id, second)
    ]


def test_read_receipts_can_be_off_for_everyone(beacon):
    """READ_RECEIPTS=false: the same routes, in-process with the setting changed."""
    if beacon.backend != "sqlite":
        pytest.skip("a setting's check: one backend is enough (the receipts queries run on both)")
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    assert beacon.client(alice).call("send_message", topic.ref(message="hi"))["ok"]
    assert beacon.client(bob).call("mark_as_read", topic.ref())["ok"]
    settings = beacon.app.extensions["beacon_settings"]
    beacon.app.extensions["beacon_settings"] = replace(settings, read_receipts=False)
    try:
        http = beacon.app.test_client()
        headers = {"Authorization": f"Bearer {alice.token}"}
        answer = http.get(f"/api/topics/{topic.topic_id}/receipts", headers=headers).get_json()
        assert answer == {**answer, "enabled": False, "receipts": []}
        synced = http.get("/api/sync", headers=headers).get_json()
        assert synced["receipts_enabled"] is False
        assert all(t["receipts"] == [] for t in synced["topics"])
    finally:
        beacon.app.extensions["beacon_settings"] = settings
    shown = beacon.api(alice, "GET", f"/api/topics/{topic.topic_id}/receipts").json()
    assert [r["user_id"] for r in shown["receipts"]] == [bob.id]


def test_typing_reaches_the_other_joined_connections_only(beacon):
    if beacon.backend != "sqlite":
        pytest.skip("nothing of typing touches the database but the membership check")
    alice, bob, carol = beacon.user("alice"), beacon.user("bob", "Bob B."), beacon.user("carol")
    mallory = beacon.user("mallory")
    topic, other = beacon.topic(alice, bob, carol), beacon.topic(alice, bob)
    alice_client, bob_typing = beacon.client(alice), beacon.client(bob, "bob-typing")
    bob_other = beacon.client(bob, "bob-other")
    carol_away = beacon.client(carol)  # a member, not joined
    for client in (alice_client, bob_typing, bob_other):
        assert client.call("join_topic", {"topic_id": topic.topic_id})["ok"]

    ack = bob_typing.call("typing", {"topic_id": topic.topic_id})
    assert ack == {"ok": True, "topic_id": topic.topic_id}
    notice = alice_client.wait_for_event("user_typing")
    assert notice == {
        "topic_id": topic.topic_id,
        "room_id": topic.room_id,
        "user_id": bob.id,
        "display_name": "Bob B.",
        "expires_in": 6,
    }
    bob_other.wait_for_event("user_typing")  # Bob's other device: its client ignores itself

    # At most one every 2 s per user and topic; another topic has its own allowance.
    again = bob_typing.call("typing", {"topic_id": topic.topic_id})
    assert again["error"] == "rate_limited" and 0 < again["retry_after"] <= 2
    assert bob_typing.call("typing", {"topic_id": other.topic_id})["ok"]
    assert len(alice_client.events("user_typing")) == 1

    outsider = beacon.client(mallory)
    refused = outsider.call("typing", {"topic_id": topic.topic_id})
    assert refused["error"] == "not_a_member"
    assert outsider.call("typing", {"topic_id": "nope"})["error"] == "invalid_topic_id"
    assert outsider.call("typing", {"topic_id": str(uuid.uuid4())})["error"] == "topic_not_found"
    # Never stored: nothing unread. Then a message as a fence (one connection's events keep
    # their order): nobody got what they should not have.
    assert beacon.unread(alice, topic) == 0 and beacon.unread(carol, topic) == 0
    fence = alice_client.call("send_message", topic.ref(message="fence"))["message"]["id"]
    for client in (bob_typing, carol_away, alice_client):
        client.wait_for_event("global_message_alert", lambda p: p["message_id"] == fence)
    bob_typing.assert_no_event("user_typing", lambda p: p["topic_id"] == topic.topic_id)
    carol_away.assert_no_event("user_typing")
    alice_client.assert_no_event("user_typing", lambda p: p["user_id"] == mallory.id)
