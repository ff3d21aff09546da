"""The authorization matrix: Mallory calls every event and route with Alice's ids.

Mallory is a signed-in user with a topic of her own (in her own room). Alice has a topic with
Bob, messages in it, and a push subscription. Every call below must be refused or must touch
only Mallory's own data, and afterwards Alice's and Bob's data must be exactly as before.
The table in docs/RELIABILITY.md is generated from what this test tried and saw.
"""

from __future__ import annotations

import email.utils
import json
import mailbox
import uuid
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from config import Settings
from tests.conftest import start_web
from tests.harness.ports import free_port
from tests.harness.waiting import wait_until
from tests.push_helpers import delivered, subscribe

LINK_SECRET = "matrix-email-link-secret-" + "q" * 24


@pytest.fixture(scope="module")
def mail_web(stack, run_dir) -> Any:
    """Another web process of the shared deployment (same database and Redis) that signs
    unsubscribe links and shows a development mailbox: the shared web has neither
    EMAIL_LINK_SECRET nor DEV_MAILBOX. Yields its URL and the Maildir."""
    maildir = run_dir / f"matrix-mailbox-{stack.backend}"
    env = {**stack.env, "EMAIL_LINK_SECRET": LINK_SECRET, "DEV_MAILBOX": str(maildir)}
    port = free_port()
    web = start_web(f"web-mail-{stack.backend}", env, port, run_dir)
    yield f"http://127.0.0.1:{port}", maildir
    web.stop()


def _link_token(user_id: str, secret: str = LINK_SECRET) -> str:
    """The token of a digest's unsubscribe link (the product's own signer)."""
    from webapp.delivery.unsubscribe import token_for

    app = Flask(__name__)
    app.extensions["beacon_settings"] = Settings(email_link_secret=secret)
    with app.app_context():
        return token_for(uuid.UUID(user_id))


def _set_email(beacon, user, address: str) -> None:
    from webapp.extensions import db
    from webapp.models import User

    with beacon.app.app_context():
        db.session.get(User, uuid.UUID(user.id)).email = address
        db.session.commit()
        db.session.remove()


def _deliver(maildir: Path, to: str, subject: str) -> None:
    """An email in the development mailbox, as the local SMTP sink writes it."""
    message = EmailMessage()
    message["From"] = "Beacon <beacon@localhost>"
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = email.utils.formatdate(usegmt=True)
    message.set_content(subject)
    mailbox.Maildir(maildir, create=True).add(message)


def _alice_world(beacon, alice, bob, topic) -> dict[str, Any]:
    subs = beacon.api(alice, "GET", "/api/notifications/subscriptions").json()["subscriptions"]
    page = beacon.api(alice, "GET", f"/api/topics/{topic.topic_id}/messages").json()
    return {
        "subscriptions": sorted((s["id"], s["endpoint"]) for s in subs),
        "messages": [(m["id"], m["body"]) for m in page["messages"]],
        "counts": (beacon.unread(alice, topic), beacon.unread(bob, topic)),
        "last_read": [
            t["last_read_message_id"]
            for t in beacon.api(bob, "GET", "/api/topics").json()["topics"]
            if t["topic_id"] == topic.topic_id
        ],
        "preferences": beacon.api(alice, "GET", PREFS).json(),
        "history": beacon.api(alice, "GET", "/api/notifications/history").json(),
    }


PREFS = "/api/notifications/preferences"


def test_nobody_touches_another_users_data(beacon, mail_web, reliability):
    alice, bob, mallory = beacon.user("alice"), beacon.user("bob"), beacon.user("mallory")
    topic = beacon.topic(alice, bob)
    own = beacon.topic(mallory)  # Mallory's own topic, in her own room
    alice_client = beacon.client(alice, "alice")
    message_ids = [
        alice_client.call("send_message", topic.ref(message=f"secret {i}"))["message"]["id"]
        for i in range(2)
    ]
    wait_until(lambda: beacon.unread(bob, topic) == 2, message="bob's count is not 2")
    sub = beacon.push.new_subscription()
    created = beacon.api(
        alice,
        "POST",
        "/api/notifications/subscribe",
        json={"endpoint": sub["endpoint"], "keys": sub["keys"]},
    )
    assert created.status_code == 201
    sub_id = created.json()["id"]
    # Alice's preferences away from every default, so that a change to any would show.
    for path in (f"topics/{topic.topic_id}", f"rooms/{topic.room_id}"):
        muted = beacon.api(
            alice, "PUT", f"{PREFS}/{path}", json={"level": "mentions", "email_level": "all"}
        )
        assert muted.status_code == 200, muted.text
    emails = {"email_level": "all", "push_when_idle": False, "email_delay": 120}
    assert beacon.api(alice, "PATCH", PREFS, json=emails).status_code == 200
    mail_url, maildir = mail_web
    tag = uuid.uuid4().hex[:8]
    for user in (alice, mallory):
        _set_email(beacon, user, f"{user.username}@example.test")
        _deliver(maildir, f"{user.username}@example.test", f"digest for {user.username} {tag}")
    before = _alice_world(beacon, alice, bob, topic)

    mallory_client = beacon.client(mallory, "mallory")
    mark = mallory_client.mark()

    def event(name: str, target: str, payload: dict, expected: str) -> None:
        ack = mallory_client.call(name, payload)
        observed = "ok" if ack.get("ok") else ack.get("error")
        reliability.matrix(name, target, expected=expected, observed=str(observed))
        assert observed == expected, (name, target, ack)

    def rest(method: str, path: str, target: str, expected: int, code: str, **kw) -> None:
        response = beacon.api(mallory, method, path, **kw)
        body = response.json() if response.content else {}
        observed = f"{response.status_code} {body.get('error', '')}".strip()
        reliability.matrix(
            f"{method} {_placeholders(path, topic, sub_id)}".split("?")[0],
            target,
            expected=f"{expected} {code}".strip(),
            observed=observed,
        )
        assert response.status_code == expected and body.get("error", "") == code, (
            method,
            path,
            response.text,
        )

    t, r = topic.topic_id, topic.room_id
    event("join_topic", "topic", {"topic_id": t}, "not_a_member")
    event("join_topic", "topic + room", {"topic_id": t, "room_id": r}, "not_a_member")
    event(
        "join_topic",
        "room with her own topic",
        {"topic_id": own.topic_id, "room_id": r},
        "room_mismatch",
    )
    event("leave_topic", "topic", {"topic_id": t}, "not_a_member")
    event("send_message", "topic + room", topic.ref(message="let me in"), "not_a_member")
    event("send_message", "topic, no room", {"topic_id": t, "message": "hi"}, "not_a_member")
    event(
        "send_message",
        "room with her own topic",
        {"topic_id": own.topic_id, "room_id": r, "message": "x"},
        "room_mismatch",
    )
    event("mark_as_read", "topic + messages", topic.ref(message_ids=message_ids), "not_a_member")
    event(
        "mark_as_read",
        "room with her own topic",
        {"topic_id": own.topic_id, "room_id": r, "message_ids": message_ids},
        "room_mismatch",
    )
    # A refresh never switches the connection's user: not with Alice's own token, not with a
    # token naming Alice that Mallory signed herself.
    event("refresh_token", "Alice's valid token", {"token": alice.token}, "token_mismatch")
    header, _claims, signature = mallory.token.split(".")
    alice_claims = alice.token.split(".")[1]
    event(
        "refresh_token",
        "Alice's id in Mallory's signed token",
        {"token": f"{header}.{alice_claims}.{signature}"},
        "invalid_token",
    )
    # Attention is per connection: Mallory's set_presence turns her own status idle, never
    # Alice's (online, active) nor Bob's; a payload naming someone else is refused.
    watch = alice_client.mark()
    ack = mallory_client.call("set_presence", {"state": "idle"})
    assert ack == {"ok": True, "state": "idle", "status": "idle"}, ack
    alice_client.wait_for_event(
        "user_status_change",
        lambda p: p["user_id"] == mallory.id and p["status"] == "idle",
        after=watch,
    )
    moved = [
        (p["user_id"], p["status"])
        for p in alice_client.events("user_status_change", after=watch)
        if p["user_id"] in (alice.id, bob.id)
    ]
    online = beacon.api(bob, "GET", "/api/users/online").json()["users"]
    statuses = {u["user_id"]: u["status"] for u in online}
    observed = (
        f"ok; hers {statuses.get(mallory.id)}, Alice's {statuses.get(alice.id)}, "
        f"other changes {moved or 'none'}"
    )
    reliability.matrix(
        "set_presence",
        "Alice's status (Alice connected, active)",
        expected="ok; hers idle, Alice's active, other changes none",
        observed=observed,
    )
    assert observed == "ok; hers idle, Alice's active, other changes none", observed
    event(
        "set_presence",
        "Alice's user id in the payload",
        {"state": "idle", "user_id": alice.id},
        "unknown_field",
    )
    event(
        "set_presence",
        "Alice's connection id in the payload",
        {"state": "idle", "sid": alice_client.sid},
        "unknown_field",
    )
    assert mallory_client.call("set_presence", {"state": "active"})["status"] == "active"

    # Her own topic with Alice's message ids: allowed, but the foreign ids are ignored.
    ack = mallory_client.call("mark_as_read", own.ref(message_ids=message_ids))
    observed = f"ok, message_ids={ack.get('message_ids')}"
    reliability.matrix(
        "mark_as_read",
        "messages (in her own topic)",
        expected="ok, message_ids=[]",
        observed=observed,
    )
    assert ack["ok"] and ack["message_ids"] == [] and ack["last_read_message_id"] is None

    rest("GET", f"/api/topics/{t}/messages", "topic", 403, "not_a_member")
    rest(
        "GET",
        f"/api/topics/{t}/messages?before={message_ids[-1] + 1}",
        "topic, paged",
        403,
        "not_a_member",
    )
    rest(
        "DELETE",
        f"/api/notifications/unsubscribe/{sub_id}",
        "subscription id",
        404,
        "subscription_not_found",
    )
    rest(
        "DELETE",
        "/api/notifications/unsubscribe-by-endpoint",
        "subscription endpoint",
        404,
        "subscription_not_found",
        json={"endpoint": sub["endpoint"]},
    )
    mine = beacon.push.new_subscription()
    rest(
        "POST",
        "/api/notifications/subscribe",
        "endpoint, with other keys",
        409,
        "endpoint_in_use",
        json={"endpoint": sub["endpoint"], "keys": mine["keys"]},
    )

    # Preferences only ever name the caller's own rows: Alice's topic and room are refused for
    # a level, and deleting "their" override deletes nothing of Alice's.
    rest("PUT", f"{PREFS}/topics/{t}", "topic level", 403, "not_a_member", json={"level": "all"})
    rest("PUT", f"{PREFS}/rooms/{r}", "room level", 404, "room_not_found", json={"level": "all"})
    rest("DELETE", f"{PREFS}/topics/{t}", "topic level (only her own row)", 204, "")
    rest("DELETE", f"{PREFS}/rooms/{r}", "room level (only her own row)", 204, "")
    # The email level of an override is refused like the push level, clearing it too.
    for target, body in (
        ("topic email level", {"email_level": "none"}),
        ("topic email level (clearing)", {"email_level": None}),
    ):
        rest("PUT", f"{PREFS}/topics/{t}", target, 403, "not_a_member", json=body)
    for target, body in (
        ("room email level", {"email_level": "none"}),
        ("room email level (clearing)", {"email_level": None}),
    ):
        rest("PUT", f"{PREFS}/rooms/{r}", target, 404, "room_not_found", json=body)

    # The unsubscribe link (no sign-in: the signed token is the credential). Mallory's own
    # link turns off her emails alone; Alice's id under any other signature is a 400 page.
    unsubscribe = f"{mail_url}/api/email/unsubscribe"
    mine = _link_token(mallory.id)
    alice_payload = _link_token(alice.id, "another-secret").rsplit(".", 1)[0]

    def link(token: str, target: str, expected: str) -> None:
        response = requests.post(unsubscribe, params={"token": token}, timeout=10)
        page = "invalid link page" if "link is not valid" in response.text else "done page"
        observed = f"{response.status_code} {page}"
        reliability.matrix(
            "POST /api/email/unsubscribe", target, expected=expected, observed=observed
        )
        assert observed == expected, (target, response.text)

    link(
        _link_token(alice.id, "another-secret"),
        "Alice's id, another secret",
        "400 invalid link page",
    )
    link(
        f"{alice_payload}.{mine.rsplit('.', 1)[1]}",
        "Alice's id with the signature of Mallory's link",
        "400 invalid link page",
    )
    link(alice_payload, "Alice's id, unsigned", "400 invalid link page")
    link(alice.id, "Alice's user id as the token", "400 invalid link page")
    link(mine, "her own link: her emails off, none of Alice's", "200 done page")
    hers = beacon.api(mallory, "GET", PREFS).json()
    assert hers["email_level"] == "none", hers  # her own link did turn off her own emails
    alice_now = beacon.api(alice, "GET", PREFS).json()
    assert alice_now["email_level"] == "all"
    assert {o["email_level"] for o in alice_now["topics"] + alice_now["rooms"]} == {"all"}

    # The development mailbox shows the caller's emails only, whatever she asks.
    for path, target in (
        ("/api/demo/emails", "Alice's digest (in the same mailbox)"),
        (f"/api/demo/emails?address={alice.username}@example.test", "Alice's address in the query"),
    ):
        response = requests.get(
            mail_url + path, headers={"Authorization": f"Bearer {mallory.token}"}, timeout=10
        )
        assert response.status_code == 200, response.text
        subjects = [e["subject"] for e in response.json()["emails"] if tag in e["subject"]]
        observed = (
            "200, only her own"
            if subjects == [f"digest for {mallory.username} {tag}"]
            else f"200, {subjects}"
        )
        reliability.matrix(
            "GET /api/demo/emails", target, expected="200, only her own", observed=observed
        )
        assert observed == "200, only her own", subjects

    def listing(path: str, target: str, key: str, expected: list[str], field: str) -> None:
        response = beacon.api(mallory, "GET", path)
        assert response.status_code == 200, response.text
        seen = [item[field] for item in response.json()[key]]
        leaked = [x for x in seen if x not in expected]
        reliability.matrix(
            f"GET {path}",
            target,
            expected="200, only her own",
            observed="200, only her own" if not leaked else f"200, leaked {leaked}",
        )
        assert seen == expected, seen

    listing("/api/topics", "topic (listing)", "topics", [own.topic_id], "topic_id")
    listing("/api/notifications/subscriptions", "subscription (listing)", "subscriptions", [], "id")
    listing(PREFS, "topic levels (listing)", "topics", [], "topic_id")
    listing("/api/notifications/history", "push history (listing)", "pushes", [], "id")
    me = beacon.api(mallory, "GET", "/api/users/me").json()
    reliability.matrix(
        "GET /api/users/me",
        "identity (Alice's token never presented)",
        expected="200, herself",
        observed="200, herself" if me["user_id"] == mallory.id else "200, someone else",
    )
    assert me["user_id"] == mallory.id

    # Nothing of Alice's topic reaches Mallory: Alice writes and Bob reads, then Mallory's own
    # action produces an event she does get (events on one connection arrive in order).
    # Bob has two devices, neither joined to the topic: the alert goes to each member's user
    # room, so both get it (and Alice's own device too), Mallory does not.
    bob_client = beacon.client(bob, "bob")
    bob_phone = beacon.client(bob, "bob-phone")
    sent = alice_client.call("send_message", topic.ref(message="private"))
    assert sent["ok"], sent
    private_id = sent["message"]["id"]
    members_alerted = [
        c.wait_for_event("global_message_alert", lambda p: p["message_id"] == private_id)
        for c in (bob_client, bob_phone, alice_client)
    ]
    assert all(a["preview"] == "private" for a in members_alerted)
    wait_until(lambda: beacon.unread(bob, topic) == 3, message="bob's count is not 3")
    assert bob_client.call("mark_as_read", topic.ref(message_ids=message_ids))["ok"]
    own_sent = mallory_client.call("send_message", own.ref(message="mine"))
    assert own_sent["ok"] and own_sent["message"]["sender"]["id"] == mallory.id, own_sent
    mallory_client.wait_for_event("global_message_alert", lambda p: p["topic_id"] == own.topic_id)
    for name in ("new_message", "messages_read", "unread_update"):
        mallory_client.assert_no_event(name, lambda p: p["topic_id"] == t, after=mark)
    reliability.matrix(
        "(listening)",
        "topic room and Alice's user room",
        expected="no new_message / messages_read / unread_update",
        observed="none received",
    )
    leaked = [
        p["preview"]
        for p in mallory_client.events("global_message_alert", after=mark)
        if p["topic_id"] == t
    ]
    reliability.matrix(
        "(listening)",
        "`global_message_alert` of Alice's topic (ALERT_AUDIENCE=members)",
        expected="none to Mallory; every device of each member, joined or not",
        observed="none to Mallory; Bob's 2 devices (not joined) and Alice's got it"
        if not leaked
        else f"Mallory read previews {leaked}",
    )
    assert leaked == [], f"a non-member got the alerts of a private topic: {leaked}"

    # Alice's data is untouched, apart from what Alice and Bob did themselves just now.
    after = _alice_world(beacon, alice, bob, topic)
    assert after["preferences"] == before["preferences"]
    assert after["history"] == before["history"]
    assert after["subscriptions"] == before["subscriptions"]
    assert after["messages"][1:] == before["messages"]
    assert after["counts"] == (0, 0)


def _placeholders(path: str, topic, sub_id: str) -> str:
    return (
        path.replace(topic.topic_id, "<topic>")
        .replace(topic.room_id, "<room>")
        .replace(sub_id, "<id>")
    )


# -- client state (issue 18): sync, mark as unread, read receipts, typing -------------------
def _read_states(beacon, topic, *users) -> dict[str, tuple]:
    """Each user's (unread_count, last_read_message_id, version) in ``topic``, as listed."""
    states = {}
    for user in users:
        rows = beacon.api(user, "GET", "/api/topics").json()["topics"]
        [row] = [r for r in rows if r["topic_id"] == topic.topic_id]
        states[user.username] = (row["unread_count"], row["last_read_message_id"], row["version"])
    return states


def _receipt_from(reader):
    """A ``messages_read`` announcing ``reader``'s marker."""
    return lambda p: p["user_id"] == reader.id


@pytest.fixture(scope="module")
def receipts_off_web(stack, run_dir) -> Any:
    """Another web process of the shared deployment with ``READ_RECEIPTS=false``."""
    port = free_port()
    env = {**stack.env, "READ_RECEIPTS": "false"}
    web = start_web(f"web-receipts-off-{stack.backend}", env, port, run_dir)
    yield f"http://127.0.0.1:{port}"
    web.stop()


def test_client_state_stays_within_membership_and_sharing(beacon, receipts_off_web, reliability):
    """Issue 18's events and routes. Mallory (a topic of her own) calls them with Alice's
    topic, room and message ids: every call is refused, and her catch-up (``sync``) holds only
    her own topic, messages and user. Carol, a member of Alice's topic, does not share read
    receipts: she sees nobody's (route, sync, events) and nobody sees hers; Bob shares, and
    only the sharing members see his."""
    alice, bob = beacon.user("alice"), beacon.user("bob")
    carol, mallory = beacon.user("carol"), beacon.user("mallory")
    topic = beacon.topic(alice, bob, carol)
    own = beacon.topic(mallory)
    t, r = topic.topic_id, topic.room_id
    private = beacon.api(carol, "PATCH", PREFS, json={"share_read_receipts": False})
    assert private.status_code == 200 and private.json()["share_read_receipts"] is False

    clients = {
        name: beacon.client(user, name)
        for name, user in (("alice", alice), ("bob", bob), ("carol", carol))
    }
    carol_phone = beacon.client(carol, "carol-phone")  # never joined: her other device
    mallory_client = beacon.client(mallory, "mallory")
    message_ids = [
        clients["alice"].call("send_message", topic.ref(message=f"secret {i}"))["message"]["id"]
        for i in range(3)
    ]
    own_id = mallory_client.call("send_message", own.ref(message="mine"))["message"]["id"]
    for user in (bob, carol):  # counted: nobody had joined the topic
        wait_until(lambda u=user: beacon.unread(u, topic) == 3, message="counts not 3")
    for client in clients.values():
        assert client.call("join_topic", {"topic_id": t})["ok"]
    assert mallory_client.call("join_topic", {"topic_id": own.topic_id})["ok"]
    before = _read_states(beacon, topic, alice, bob, carol)
    mark = mallory_client.mark()

    def event(name: str, target: str, payload: dict, expected: str) -> None:
        ack = mallory_client.call(name, payload)
        observed = "ok" if ack.get("ok") else ack.get("error")
        reliability.matrix(name, target, expected=expected, observed=str(observed))
        assert observed == expected, (name, target, ack)

    def rest(method: str, path: str, target: str, expected: str, **kw) -> None:
        response = beacon.api(mallory, method, path, **kw)
        observed = f"{response.status_code} {response.json().get('error', '')}".strip()
        operation = path.replace(t, "<topic>").replace(own.topic_id, "<own topic>")
        reliability.matrix(f"{method} {operation}", target, expected=expected, observed=observed)
        assert observed == expected, (method, path, response.text)

    first = message_ids[0]
    event("mark_as_unread", "topic + message", {"topic_id": t, "message_id": first}, "not_a_member")
    event(
        "mark_as_unread",
        "topic + room + message",
        topic.ref(message_id=first),
        "not_a_member",
    )
    event(
        "mark_as_unread",
        "room with her own topic",
        {"topic_id": own.topic_id, "room_id": r, "message_id": own_id},
        "room_mismatch",
    )
    event(
        "mark_as_unread",
        "message (in her own topic)",
        own.ref(message_id=first),
        "message_not_found",
    )
    rest(
        "POST",
        f"/api/topics/{t}/unread",
        "topic + message",
        "403 not_a_member",
        json={"message_id": first},
    )
    rest(
        "POST",
        f"/api/topics/{own.topic_id}/unread",
        "message (in her own topic)",
        "404 message_not_found",
        json={"message_id": first},
    )
    rest("GET", f"/api/topics/{t}/receipts", "topic", "403 not_a_member")
    rest("GET", f"/api/topics/{t}/receipts?limit=1000", "topic, largest page", "403 not_a_member")
    event("typing", "topic", {"topic_id": t}, "not_a_member")
    event("typing", "topic + room", topic.ref(), "not_a_member")
    event(
        "typing",
        "room with her own topic",
        {"topic_id": own.topic_id, "room_id": r},
        "room_mismatch",
    )

    # Her catch-up: only her own topic, message and user, from any cursor (Alice's message
    # ids are above some of them).
    def only_her_own(answer: dict) -> str:
        topics = [x["topic_id"] for x in answer["topics"]]
        messages = [m["id"] for x in answer["topics"] for m in x["messages"]]
        receipts = [u["user_id"] for x in answer["topics"] for u in x["receipts"]]
        users = [u["user_id"] for u in answer["users"]]
        leaked = [
            *(["Alice's topic"] if t in topics else []),
            *(f"message {m}" for m in messages if m != own_id),
            *(f"receipt of {u}" for u in receipts),
            *(f"user {u}" for u in users if u != mallory.id),
        ]
        return "ok, only her own" if not leaked else f"leaked {leaked}"

    for since in (None, 0, first - 1):
        ack = mallory_client.call("sync", {} if since is None else {"since": since})
        observed = only_her_own(ack) if ack.get("ok") else ack.get("error")
        target = "everything (no since)" if since is None else f"since {since or 0}"
        if since == first - 1:
            target = "since just below Alice's messages"
        reliability.matrix("sync", target, expected="ok, only her own", observed=str(observed))
        assert observed == "ok, only her own", ack
        assert [x["topic_id"] for x in ack["topics"]] == [own.topic_id], ack
        assert ack["cursor"] == own_id, ack
    response = beacon.api(mallory, "GET", f"/api/sync?since={first - 1}")
    observed = f"{response.status_code}, " + only_her_own(response.json())
    reliability.matrix(
        "GET /api/sync",
        "since just below Alice's messages",
        expected="200, ok, only her own",
        observed=observed,
    )
    assert observed == "200, ok, only her own", response.text

    # Alice types in her topic: the joined members hear it, Mallory (who cannot join) does not;
    # then Mallory's own read comes back to her, after anything of Alice's would have.
    typed = clients["alice"].call("typing", {"topic_id": t})
    assert typed == {"ok": True, "topic_id": t}, typed
    for name in ("bob", "carol"):
        heard = clients[name].wait_for_event("user_typing", _receipt_from(alice))
        assert heard["topic_id"] == t and heard["expires_in"] == 6, heard
    assert mallory_client.call("mark_as_read", own.ref())["ok"]
    mallory_client.wait_for_event("messages_read", lambda p: p["topic_id"] == own.topic_id)
    for name in ("user_typing", "messages_read", "unread_update"):
        mallory_client.assert_no_event(name, lambda p: p["topic_id"] == t, after=mark)
    reliability.matrix(
        "(listening)",
        "Alice's topic: `user_typing`, `messages_read`, `unread_update`",
        expected="none to Mallory; `user_typing` to the other joined members",
        observed="none to Mallory; Bob and Carol heard Alice typing",
    )
    after = _read_states(beacon, topic, alice, bob, carol)
    reliability.matrix(
        "(all of the above)",
        "Alice's, Bob's and Carol's counts, markers and versions",
        expected="unchanged",
        observed="unchanged" if after == before else f"{before} -> {after}",
    )
    assert after == before

    # Read receipts only between members who both share. Bob (sharing) reads, then marks the
    # last message unread: Alice (sharing) gets both receipts; Carol (not sharing) gets none,
    # on her joined connection or her other device, and the receipts route and her sync show
    # her nobody's.
    alice_mark = clients["alice"].mark()
    carol_marks = {"carol": clients["carol"].mark(), "carol-phone": carol_phone.mark()}
    assert clients["bob"].call("mark_as_read", topic.ref())["ok"]
    unread = clients["bob"].call("mark_as_unread", topic.ref(message_id=message_ids[-1]))
    assert unread["ok"] and unread["last_read_message_id"] == message_ids[-1] - 1, unread
    bob_receipt = clients["alice"].wait_for_event(
        "messages_read",
        lambda p: p["user_id"] == bob.id and p["version"] == unread["version"],
        after=alice_mark,
    )
    assert bob_receipt["last_read_message_id"] == message_ids[-1] - 1
    assert "unread_count" not in bob_receipt, bob_receipt  # the reader's count stays his
    # (and Alice's typing went to the others only, not back to her sending connection)
    clients["alice"].assert_no_event("user_typing", _receipt_from(alice))
    # Carol's own read reaches both of her devices after Bob's receipts would have.
    own_read = clients["carol"].call("mark_as_read", topic.ref())
    assert own_read["ok"], own_read
    seen_by_carol = []
    for name, client in (("carol", clients["carol"]), ("carol-phone", carol_phone)):
        client.wait_for_event("messages_read", _receipt_from(carol), after=carol_marks[name])
        seen_by_carol += [
            p["user_id"]
            for p in client.events("messages_read", after=carol_marks[name])
            if p["user_id"] != carol.id
        ]
    reliability.matrix(
        "(listening)",
        "`messages_read` of Bob's read and mark-as-unread, to Carol (not sharing; joined, and "
        "another device)",
        expected="none to Carol; Alice (sharing) got both",
        observed="none to Carol; Alice (sharing) got both"
        if not seen_by_carol
        else f"Carol got receipts of {seen_by_carol}",
    )
    assert seen_by_carol == []

    # Carol's read (and mark-as-unread) reach nobody else: Alice's and Bob's own reads come
    # back to them afterwards, with no receipt of Carol's before.
    others_mark = {"alice": clients["alice"].mark(), "bob": clients["bob"].mark()}
    assert clients["carol"].call("mark_as_unread", topic.ref(message_id=first))["ok"]
    for name in ("alice", "bob"):
        assert clients[name].call("mark_as_read", topic.ref())["ok"]
    leaked_carol = []
    for name, user in (("alice", alice), ("bob", bob)):
        clients[name].wait_for_event("messages_read", _receipt_from(user), after=others_mark[name])
        leaked_carol += [
            name
            for p in clients[name].events("messages_read", after=others_mark[name])
            if p["user_id"] == carol.id
        ]
    reliability.matrix(
        "(listening)",
        "`messages_read` of Carol's (not sharing) read and mark-as-unread, to Alice and Bob "
        "(sharing, joined)",
        expected="none",
        observed="none" if not leaked_carol else f"to {leaked_carol}",
    )
    assert leaked_carol == []

    def receipts_seen(user, base: str = beacon.url) -> str:
        response = requests.get(
            f"{base}/api/topics/{t}/receipts",
            headers={"Authorization": f"Bearer {user.token}"},
            timeout=10,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        names = {alice.id: "Alice", bob.id: "Bob", carol.id: "Carol"}
        rows = sorted(names.get(x["user_id"], x["user_id"]) for x in body["receipts"])
        return f"enabled {str(body['enabled']).lower()}, rows {rows}"

    def sync_seen(user, base: str = beacon.url) -> str:
        response = requests.get(
            f"{base}/api/sync", headers={"Authorization": f"Bearer {user.token}"}, timeout=10
        )
        assert response.status_code == 200, response.text
        body = response.json()
        names = {alice.id: "Alice", bob.id: "Bob", carol.id: "Carol"}
        [row] = [x for x in body["topics"] if x["topic_id"] == t]
        rows = sorted(names.get(x["user_id"], x["user_id"]) for x in row["receipts"])
        return f"receipts_enabled {str(body['receipts_enabled']).lower()}, rows {rows}"

    for operation, caller, target, expected, seen in (
        (
            "GET /api/topics/<topic>/receipts",
            carol,
            "Carol (not sharing) asks",
            "enabled false, rows []",
            receipts_seen,
        ),
        (
            "GET /api/topics/<topic>/receipts",
            alice,
            "Alice (sharing) asks: Bob shares, Carol not",
            "enabled true, rows ['Bob']",
            receipts_seen,
        ),
        (
            "GET /api/topics/<topic>/receipts",
            bob,
            "Bob (sharing) asks: Alice shares, Carol not",
            "enabled true, rows ['Alice']",
            receipts_seen,
        ),
        (
            "GET /api/sync",
            carol,
            "Carol (not sharing)",
            "receipts_enabled false, rows []",
            sync_seen,
        ),
        (
            "GET /api/sync",
            alice,
            "Alice (sharing): Bob shares, Carol not",
            "receipts_enabled true, rows ['Bob']",
            sync_seen,
        ),
    ):
        observed = seen(caller)
        reliability.matrix(operation, target, expected=expected, observed=observed)
        assert observed == expected, (operation, target)
    # READ_RECEIPTS=false on the server: nobody's, whoever shares.
    for operation, seen, expected in (
        ("GET /api/topics/<topic>/receipts", receipts_seen, "enabled false, rows []"),
        ("GET /api/sync", sync_seen, "receipts_enabled false, rows []"),
    ):
        observed = seen(alice, receipts_off_web)
        reliability.matrix(
            operation,
            "Alice (sharing) on a server with READ_RECEIPTS=false",
            expected=expected,
            observed=observed,
        )
        assert observed == expected, operation


# -- notification decisions and the test push (issue 20) ------------------------------------
DECISIONS = "/api/notifications/decisions"
TEST_PUSH = "/api/notifications/test"


def _decisions(beacon, user, **params: Any) -> requests.Response:
    return beacon.api(user, "GET", DECISIONS, params=params)


def _of_message(beacon, user, message_id: int) -> list[dict]:
    answer = _decisions(beacon, user, limit=200)
    assert answer.status_code == 200, answer.text
    return [d for d in answer.json()["decisions"] if d["message_id"] == message_id]


def test_decisions_and_test_pushes_stay_the_callers_own(beacon, reliability):
    """Alice writes to Bob (offline, one Web Push device) in their topic; Mallory is a member
    of nothing of theirs. Alice's list holds her own decision of the message (``sender``),
    Bob's his (``pushed``, to his device only), Mallory's nothing of the topic, and
    ``topic_id`` of it is 403 for her. Then each calls the test push: it reaches the caller's
    own devices only (the push service's record of everyone else's subscriptions does not
    move), and ``test_push_result`` goes to the caller's connections only."""
    alice, bob, mallory = beacon.user("alice"), beacon.user("bob"), beacon.user("mallory")
    topic = beacon.topic(alice, bob)
    t = topic.topic_id
    bob_sub, bob_device = subscribe(beacon, bob)
    alice_sub, alice_device = subscribe(beacon, alice)
    alice_client = beacon.client(alice, "alice")
    sent = alice_client.call("send_message", topic.ref(message="for bob"))
    assert sent["ok"], sent
    message_id = sent["message"]["id"]
    delivered(beacon, bob_sub)
    bobs = wait_until(
        lambda: [d for d in _of_message(beacon, bob, message_id) if d["deliveries"]],
        timeout=20,
        message="Bob's decision (with its delivery) was not recorded",
    )
    alices = wait_until(lambda: _of_message(beacon, alice, message_id), timeout=20)

    def check(operation: str, target: str, expected: str, observed: str) -> None:
        reliability.matrix(operation, target, expected=expected, observed=observed)
        assert observed == expected, (operation, target)

    def seen(decisions: list[dict]) -> str:
        """Each decision of the message listed: its kind and whose devices it names."""
        owner = {bob_device["id"]: "Bob's", alice_device["id"]: "Alice's"}
        return "; ".join(
            f"{d['decision']}, devices: "
            + (", ".join(owner.get(x["device_id"], "?") for x in d["deliveries"]) or "none")
            for d in decisions
        )

    check(
        f"GET {DECISIONS}",
        "a message pushed to Bob, as Alice (its sender) reads it",
        "200, sender, devices: none",
        f"200, {seen(alices)}",
    )
    check(
        f"GET {DECISIONS}",
        "the message pushed to Bob, as Bob reads it",
        "200, pushed, devices: Bob's",
        f"200, {seen(bobs)}",
    )
    for target, params in (
        ("Alice's topic's message (Mallory, a member of nothing)", {}),
        ("Alice's topic's message, largest page", {"limit": 200}),
        ("Alice's topic's message, paged from just above it", {"before": message_id + 1}),
    ):
        answer = _decisions(beacon, mallory, **params)
        leaked = [d for d in answer.json()["decisions"] if d["topic_id"] == t]
        check(
            f"GET {DECISIONS}",
            target,
            "200, nothing of the topic",
            f"{answer.status_code}, " + ("nothing of the topic" if not leaked else f"{leaked}"),
        )
    for target, params in (
        ("`topic_id` of Alice's topic", {"topic_id": t}),
        ("`topic_id` of Alice's topic, upper case", {"topic_id": t.upper()}),
        (
            "`topic_id` of Alice's topic, with `before` and `limit`",
            {"topic_id": t, "before": message_id + 1, "limit": 1},
        ),
    ):
        answer = _decisions(beacon, mallory, **params)
        check(
            f"GET {DECISIONS}",
            target,
            "403 not_a_member",
            f"{answer.status_code} {answer.json().get('error', '')}".strip(),
        )

    # The test push. Every user's connections are listening; the push service's records of
    # the two subscriptions are counted before.
    bob_client = beacon.client(bob, "bob")
    alice_phone = beacon.client(alice, "alice-phone")
    mallory_client = beacon.client(mallory, "mallory")
    watching = [alice_client, alice_phone, bob_client, mallory_client]
    marks = {c.name: c.mark() for c in watching}
    attempts = {"alice": beacon.push.attempts(alice_sub), "bob": beacon.push.attempts(bob_sub)}
    jobs: dict[str, str] = {}

    def test_push(user, name: str) -> list[str]:
        answer = beacon.api(user, "POST", TEST_PUSH)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        jobs[name] = body["job_id"]
        return [d["device_id"] for d in body["deliveries"]]

    reached = test_push(alice, "alice")
    alice_got = [json.loads(m["payload"])["type"] for m in beacon.push.messages(alice_sub)]
    bob_attempts = beacon.push.attempts(bob_sub) - attempts["bob"]
    check(
        f"POST {TEST_PUSH}",
        "Alice's test push: the devices it reaches",
        "200, her device only (it got the test); Bob's device: 0 attempts",
        f"200, {'her device only' if reached == [alice_device['id']] else reached} "
        f"({'it got the test' if alice_got[-1:] == ['test'] else alice_got}); "
        f"Bob's device: {bob_attempts} attempts",
    )
    for client in (alice_client, alice_phone):
        client.wait_for_event(
            "test_push_result", lambda p: p["job_id"] == jobs["alice"], after=marks[client.name]
        )
    # Bob's and Mallory's own test pushes: each result comes after Alice's would have (one
    # Socket.IO message queue, in order), so whatever else they got was sent to them.
    reached_bob = test_push(bob, "bob")
    reached_mallory = test_push(mallory, "mallory")
    for client, name in ((bob_client, "bob"), (mallory_client, "mallory")):
        client.wait_for_event(
            "test_push_result", lambda p, n=name: p["job_id"] == jobs[n], after=marks[client.name]
        )
    heard = {
        client.name: sorted(
            next(n for n, j in jobs.items() if j == p["job_id"])
            for p in client.events("test_push_result", after=marks[client.name])
        )
        for client in watching
    }
    check(
        "(listening)",
        "`test_push_result` of Alice's, Bob's and Mallory's test pushes, to everyone's "
        "connections (Alice has two)",
        "each to the caller's own connections only",
        "each to the caller's own connections only"
        if heard
        == {"alice": ["alice"], "alice-phone": ["alice"], "bob": ["bob"], "mallory": ["mallory"]}
        else f"heard {heard}",
    )
    check(
        f"POST {TEST_PUSH}",
        "Mallory's (no device) and Bob's test pushes: everyone else's devices",
        "Mallory 200, no device; Bob 200, his device only; Alice's device: 0 more attempts",
        f"Mallory 200, {'no device' if not reached_mallory else reached_mallory}; Bob 200, "
        f"{'his device only' if reached_bob == [bob_device['id']] else reached_bob}; Alice's "
        f"device: {beacon.push.attempts(alice_sub) - attempts['alice'] - 1} more attempts",
    )
    assert beacon.push.attempts(bob_sub) - attempts["bob"] == 1  # his own test, nothing else


def test_a_removed_member_no_longer_sees_the_topics_decisions(admin_world, reliability):
    """The product's backend removes Bob from the topic he shares with Alice (integration
    API): the decisions of its messages leave his list at once, ``topic_id`` of it becomes
    403, and the decisions of his own topic stay; Alice's list is unchanged."""
    w = admin_world
    stack, alice, bob = w.stack, w.alice, w.bob
    t = w.topic.topic_id

    def listed(user) -> list[tuple[str, int, str]]:
        answer = _decisions(stack, user, limit=200)
        assert answer.status_code == 200, answer.text
        names = {t: "shared", w.bob_topic.topic_id: "his own"}
        return sorted(
            (names.get(d["topic_id"], d["topic_id"]), d["message_id"], d["decision"])
            for d in answer.json()["decisions"]
        )

    def counted(user, n: int) -> list[tuple[str, int, str]] | None:
        found = listed(user)
        return found if len(found) == n else None

    # Alice published two messages to the shared topic, Bob one to his own (the fixture).
    bob_before = wait_until(
        lambda: counted(bob, 3), timeout=20, message="Bob's three decisions were not recorded"
    )
    assert [m for topic, m, _ in bob_before if topic == "shared"] == sorted(w.message_ids)
    alice_before = wait_until(lambda: counted(alice, 2), timeout=20)
    removed = w.admin("DELETE", f"/topics/{w.topic_ext}/members/{w.bob_ext}")
    assert removed.status_code == 204, removed.text

    bob_after = listed(bob)
    kept = [row for row in bob_before if row[0] == "his own"]
    reliability.matrix(
        f"GET {DECISIONS}",
        "Bob, after the integration API removed him from the topic",
        expected="200, none of the topic's; his own topic's kept",
        observed="200, none of the topic's; his own topic's kept"
        if bob_after == kept and kept
        else f"200, {bob_after}",
    )
    assert bob_after == kept and kept
    refused = _decisions(stack, bob, topic_id=t)
    observed = f"{refused.status_code} {refused.json().get('error', '')}"
    reliability.matrix(
        f"GET {DECISIONS}",
        "`topic_id` of the topic Bob was removed from",
        expected="403 not_a_member",
        observed=observed,
    )
    assert observed == "403 not_a_member"
    assert listed(alice) == alice_before
