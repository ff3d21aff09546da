"""The authorization matrix: Mallory calls every event and route with Alice's ids.

Mallory is a signed-in user with a topic of her own (in her own room). Alice has a topic with
Bob, messages in it, and a push subscription. Every call below must be refused or must touch
only Mallory's own data, and afterwards Alice's and Bob's data must be exactly as before.
The table in docs/RELIABILITY.md is generated from what this test tried and saw.
"""

from __future__ import annotations

import email.utils
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
