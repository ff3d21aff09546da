"""The demo page's client state (issue 18): catching up after a reconnection, typing, read
receipts and their privacy switch, and mark as unread.

A reconnection is real: ``context.set_offline(True)`` makes Chromium report the network gone,
the Socket.IO client drops its connection (and its retries fail) until the network is back,
then reconnects by itself; the page joins the open topic again and syncs. What the page then
shows is compared with a second page of the same user loaded afterwards (a fresh load).
Other users are Socket.IO clients of the harness (``e2e.client``), as in the other browser
tests.
"""

from __future__ import annotations

import uuid
from typing import Any

from playwright.sync_api import expect

from tests.e2e.helpers import SET_VISIBILITY, screen_state, sign_in, watch
from tests.harness.waiting import wait_until
from webapp.extensions import db
from webapp.models import Message

# While the network is cut, Chromium may log the reconnection attempts it failed as errors.
OFFLINE_ERRORS = ("ERR_INTERNET_DISCONNECTED", "ERR_NETWORK_CHANGED")


def _topic(e2e, channel: str, *members) -> tuple[str, str]:
    """A new topic of ``members`` in ``channel``: its id and name."""
    name = f"{channel}-{uuid.uuid4().hex[:4]}"
    args = ["create-topic", channel, name]
    for member in members:
        args += ["--member", member.username]
    _, topic_id = e2e.cli(*args).split()
    return topic_id, name


def _send(client, topic_id: str, text: str) -> int:
    ack = client.call("send_message", {"topic_id": topic_id, "message": text})
    assert ack["ok"], ack
    return ack["message"]["id"]


def _rows(e2e, user) -> dict[str, dict]:
    """``user``'s GET /api/topics, by topic id."""
    response = e2e.api(user, "GET", "/api/topics")
    assert response.status_code == 200, response.text
    return {row["topic_id"]: row for row in response.json()["topics"]}


def _open(page: Any, topic_id: str, name: str) -> None:
    page.click(f'.topic[data-topic-id="{topic_id}"]')
    expect(page.locator("#topic-title")).to_have_text(name)


def _ids(page: Any) -> list[int]:
    """The ids of the messages ``page`` shows, top to bottom."""
    return [
        int(i)
        for i in page.locator(".message").evaluate_all("ns => ns.map(n => n.dataset.messageId)")
    ]


def _page_errors(seen) -> list[str]:
    return [e for e in seen.errors if not any(code in e for code in OFFLINE_ERRORS)]


def _cut_and_restore(context: Any, page: Any, while_cut) -> None:
    """Take the page's network away, run ``while_cut()``, give it back; returns once the page
    is connected again (a new Socket.IO connection: the old one is gone)."""
    connection = page.locator("#connection")
    context.set_offline(True)
    expect(connection).to_have_attribute("data-state", "reconnecting")
    while_cut()
    context.set_offline(False)
    expect(connection).to_have_attribute("data-state", "connected", timeout=20_000)


def test_reconnect_catches_up_like_a_fresh_load(e2e, new_context):
    """Alice's page is cut off with a topic open; meanwhile Bob writes there and in another
    topic and reads the open one. Back online, her page shows what a fresh load shows: the
    messages, every badge, and "Seen by"."""
    alice, bob = e2e.user("alice", "Alice Martin"), e2e.user("bob", "Bob Chen")
    plans, plans_name = _topic(e2e, "design", alice, bob)
    lunch, _ = _topic(e2e, "general", alice, bob)
    quiet, _ = _topic(e2e, "ops", alice, bob)
    alice_client, bob_client = e2e.client(alice), e2e.client(bob)
    first = _send(alice_client, plans, "Draft agenda is in the doc.")
    _send(bob_client, quiet, "Nothing to see here.")  # an unread count that does not change

    context = new_context()
    page = context.new_page()
    seen = watch(page, e2e.url)
    sign_in(page, alice.username)
    _open(page, plans, plans_name)
    expect(page.locator(".message .body")).to_have_text(["Draft agenda is in the doc."])
    expect(page.locator(".receipt")).to_have_count(0)
    expect(page.locator(f'.topic[data-topic-id="{quiet}"] .badge')).to_have_text("1")

    def meanwhile() -> None:
        # Bob writes in the topic Alice has open and in another one, then reads the open one.
        _send(bob_client, plans, "Added the budget section.")
        _send(bob_client, plans, "And the timeline.")
        _send(bob_client, lunch, "Lunch at 12:30?")
        ack = bob_client.call("mark_as_read", {"topic_id": plans})
        assert ack["ok"], ack

    before = len(seen.requests)
    _cut_and_restore(context, page, meanwhile)

    expected_bodies = [
        "Draft agenda is in the doc.",
        "Added the budget section.",
        "And the timeline.",
    ]
    expect(page.locator(".message .body")).to_have_text(expected_bodies)
    expect(page.locator(f'.topic[data-topic-id="{lunch}"] .badge')).to_have_text("1")
    expect(page.locator(f'.message[data-message-id="{first}"] .receipt')).to_have_text(
        "Seen by Bob Chen"
    )
    # The open topic is read again (she is looking at it); the server agrees with the badges.
    expect(page.locator(f'.topic[data-topic-id="{plans}"] .badge')).to_have_count(0)
    wait_until(lambda: _rows(e2e, alice)[plans]["unread_count"] == 0, message="plans unread")
    rows = _rows(e2e, alice)
    assert (rows[lunch]["unread_count"], rows[quiet]["unread_count"]) == (1, 1), rows

    # A fresh page of Alice's, on the same topic, shows exactly the same.
    fresh = new_context().new_page()
    seen_fresh = watch(fresh, e2e.url)
    sign_in(fresh, alice.username)
    _open(fresh, plans, plans_name)
    expect(fresh.locator(".message .body")).to_have_text(expected_bodies)
    expect(fresh.locator(".receipt")).to_have_count(1)
    assert screen_state(page) == screen_state(fresh)
    # It was the sync that caught up: no topic list, messages or receipts fetched again.
    refetched = [u for u in seen.requests[before:] if "/api/topics" in u]
    assert refetched == [], refetched

    assert _page_errors(seen) == []
    assert seen_fresh.errors == []
    assert seen.foreign_requests() == [] and seen_fresh.foreign_requests() == []


def test_reconnect_after_a_long_gap_pages_the_messages_in(e2e, new_context):
    """More messages than a sync answer carries arrive while the page is cut off: it pages the
    rest in (GET …/messages?before=), so the topic has no hole, and its newest page is what a
    fresh load shows."""
    alice, bob = e2e.user("alice", "Alice Martin"), e2e.user("bob", "Bob Chen")
    topic_id, name = _topic(e2e, "design", alice, bob)
    _send(e2e.client(alice), topic_id, "Before the gap.")

    context = new_context()
    page = context.new_page()
    seen = watch(page, e2e.url)
    sign_in(page, alice.username)
    _open(page, topic_id, name)
    expect(page.locator(".message .body")).to_have_text(["Before the gap."])

    def meanwhile() -> None:
        # 250 messages (a sync answer holds 200 per topic), written straight into the database
        # as send_message stores them: the sync and the messages route read them from there.
        with e2e.app.app_context():
            db.session.add_all(
                Message(topic_id=uuid.UUID(topic_id), sender_id=uuid.UUID(bob.id), body=f"Gap {n}")
                for n in range(250)
            )
            db.session.commit()

    before = len(seen.requests)
    _cut_and_restore(context, page, meanwhile)
    messages = page.locator(".message")
    expect(messages).to_have_count(251, timeout=20_000)
    expect(messages.last.locator(".body")).to_have_text("Gap 249")
    shown = _ids(page)
    assert shown == sorted(shown) and len(set(shown)) == 251
    expect(page.locator(".message .body").first).to_have_text("Before the gap.")

    fresh = new_context().new_page()
    sign_in(fresh, alice.username)
    _open(fresh, topic_id, name)
    expect(fresh.locator(".message")).to_have_count(50)
    assert shown[-50:] == _ids(fresh)
    # Paged in below the sync answer's oldest message, not reloaded from the newest page.
    pages = [u for u in seen.requests[before:] if f"/api/topics/{topic_id}/messages" in u]
    assert len(pages) == 1 and "before=" in pages[0], pages
    assert _page_errors(seen) == []


def test_typing_indicator(e2e, new_context):
    """Bob types: Alice's page says so, until the expiry or his message; two typing at once are
    both named; Alice's own other device is not shown; and her composer sends ``typing`` once
    for a burst of keys."""
    alice, bob = e2e.user("alice", "Alice Martin"), e2e.user("bob", "Bob Chen")
    carol = e2e.user("carol", "Carol Diaz")
    topic_id, name = _topic(e2e, "design", alice, bob, carol)
    bob_client, carol_client = e2e.client(bob), e2e.client(carol)
    alice_phone = e2e.client(alice, name="alice-phone")
    for client in (bob_client, alice_phone):
        assert client.call("join_topic", {"topic_id": topic_id})["ok"]

    page = new_context().new_page()
    seen = watch(page, e2e.url)
    sign_in(page, alice.username)
    _open(page, topic_id, name)
    typing = page.locator("#typing")
    expect(typing).to_be_hidden()

    # Her own phone types first (she gets her own user_typing there: ignored), then Bob.
    assert alice_phone.call("typing", {"topic_id": topic_id})["ok"]
    assert bob_client.call("typing", {"topic_id": topic_id})["ok"]
    expect(typing).to_have_text("Bob Chen is typing…")
    assert carol_client.call("typing", {"topic_id": topic_id})["ok"]
    expect(typing).to_have_text("Bob Chen and Carol Diaz are typing…")
    # expires_in (6 s) without a repeat: gone.
    expect(typing).to_be_hidden(timeout=12_000)

    # Again; Bob's message ends his at once, well before the expiry.
    assert bob_client.call("typing", {"topic_id": topic_id})["ok"]
    expect(typing).to_have_text("Bob Chen is typing…")
    _send(bob_client, topic_id, "Here it is.")
    expect(page.locator(".message .body")).to_have_text(["Here it is."])
    expect(typing).to_be_hidden(timeout=3_000)

    # Alice types a burst of keys: one `typing` (at most one per 2.5 s), named for Bob.
    mark = bob_client.mark()
    page.locator("#composer-input").press_sequentially("Thanks, looks good", delay=20)
    event = bob_client.wait_for_event("user_typing", after=mark)
    assert (event["user_id"], event["topic_id"], event["display_name"]) == (
        alice.id,
        topic_id,
        "Alice Martin",
    )
    assert event["expires_in"] > 0
    page.keyboard.press("Enter")
    bob_client.wait_for_event("new_message", lambda m: m["sender"]["id"] == alice.id, after=mark)
    assert len(bob_client.events("user_typing", after=mark)) == 1
    assert seen.errors == []


def test_read_receipts_follow_the_privacy_switch(e2e, new_context):
    """Alice's "Seen by" comes from the receipts list when a topic opens and live after;
    turning "Share read receipts" off hides every "Seen by" (and the server stops sharing),
    on again shows them."""
    alice, bob = e2e.user("alice", "Alice Martin"), e2e.user("bob", "Bob Chen")
    topic_id, name = _topic(e2e, "design", alice, bob)
    alice_client, bob_client = e2e.client(alice), e2e.client(bob)
    first = _send(alice_client, topic_id, "Can you check the numbers?")
    assert bob_client.call("mark_as_read", {"topic_id": topic_id})["ok"]  # before she opens it

    page = new_context().new_page()
    seen = watch(page, e2e.url)
    sign_in(page, alice.username)
    _open(page, topic_id, name)
    receipts = page.locator(".receipt")
    expect(page.locator(f'.message[data-message-id="{first}"] .receipt')).to_have_text(
        "Seen by Bob Chen"
    )

    # Live: Bob reads her next message.
    second = _send(alice_client, topic_id, "And the totals?")
    expect(page.locator(".message .body")).to_have_text(
        ["Can you check the numbers?", "And the totals?"]
    )
    assert bob_client.call("mark_as_read", {"topic_id": topic_id})["ok"]
    expect(page.locator(f'.message[data-message-id="{second}"] .receipt')).to_have_text(
        "Seen by Bob Chen"
    )
    expect(receipts).to_have_count(1)

    # Off in the settings: no "Seen by" at all, and the server agrees.
    page.click("#settings-button")
    dialog = page.get_by_role("dialog", name="Privacy, email & idle")
    share = dialog.get_by_label("Share read receipts")
    expect(share).to_be_checked()
    share.uncheck()
    expect(dialog.get_by_role("status")).to_have_text("Saved.")
    expect(receipts).to_have_count(0)
    prefs = e2e.api(alice, "GET", "/api/notifications/preferences").json()
    assert prefs["share_read_receipts"] is False
    listed = e2e.api(alice, "GET", f"/api/topics/{topic_id}/receipts").json()
    assert (listed["enabled"], listed["receipts"]) == (False, [])
    page.keyboard.press("Escape")
    page.reload()
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    _open(page, topic_id, name)
    expect(page.locator(".message")).to_have_count(2)
    expect(receipts).to_have_count(0)

    # On again (from another device: preferences_updated): "Seen by" is back.
    response = e2e.api(
        alice, "PATCH", "/api/notifications/preferences", json={"share_read_receipts": True}
    )
    assert response.status_code == 200, response.text
    expect(page.locator(f'.message[data-message-id="{second}"] .receipt')).to_have_text(
        "Seen by Bob Chen"
    )
    assert seen.errors == []


def test_mark_as_unread_from_the_page(e2e, new_context):
    """Alice marks Bob's second message unread: the badge counts it and the one after, the
    server agrees, and the open topic is not read again until she opens it again."""
    alice, bob = e2e.user("alice", "Alice Martin"), e2e.user("bob", "Bob Chen")
    topic_id, name = _topic(e2e, "design", alice, bob)
    bob_client = e2e.client(bob)
    ids = [_send(bob_client, topic_id, text) for text in ("One", "Two", "Three")]

    page = new_context().new_page()
    seen = watch(page, e2e.url)
    sign_in(page, alice.username)
    badge = page.locator(f'.topic[data-topic-id="{topic_id}"] .badge')
    expect(badge).to_have_text("3")
    _open(page, topic_id, name)
    expect(badge).to_have_count(0)
    wait_until(lambda: _rows(e2e, alice)[topic_id]["unread_count"] == 0, message="not read")

    # Only other people's messages offer it.
    _send(e2e.client(alice), topic_id, "Mine.")
    expect(page.locator(".message")).to_have_count(4)
    expect(page.locator(".message.mine").get_by_role("button", name="Mark unread")).to_have_count(0)

    message = page.locator(f'.message[data-message-id="{ids[1]}"]')
    message.hover()
    message.get_by_role("button", name="Mark unread").click()
    expect(badge).to_have_text("2")
    expect(page.locator(".unread-divider + .message")).to_have_attribute(
        "data-message-id", str(ids[1])
    )
    row = _rows(e2e, alice)[topic_id]
    assert (row["unread_count"], row["last_read_message_id"]) == (2, ids[1] - 1), row

    # It stays unread while the topic stays open: a new message from Bob, and the page hidden
    # and shown again, would each have marked it read before.
    _send(bob_client, topic_id, "Four")
    expect(page.locator(".message .body").last).to_have_text("Four")
    page.evaluate(SET_VISIBILITY, True)
    page.evaluate(SET_VISIBILITY, False)
    page.mouse.move(300, 300)
    # Nothing to wait for here: this checks that nothing happens, over several of the page's
    # mark-as-read debounce periods (150 ms).
    page.wait_for_timeout(1000)
    expect(badge).to_have_text("2")
    assert _rows(e2e, alice)[topic_id]["unread_count"] == 2

    # Opening the topic again is reading it.
    page.click(f'.topic[data-topic-id="{topic_id}"]')
    expect(badge).to_have_count(0)
    expect(page.locator(".unread-divider")).to_have_count(0)
    wait_until(lambda: _rows(e2e, alice)[topic_id]["unread_count"] == 0, message="not read")

    # Marked unread on another device of hers: this page shows it and does not read it back.
    alice_phone = e2e.client(alice, name="alice-phone")
    ack = alice_phone.call("mark_as_unread", {"topic_id": topic_id, "message_id": ids[2]})
    assert ack["ok"] and ack["unread_count"] == 2, ack  # "Three" and "Four"
    expect(badge).to_have_text("2")
    page.mouse.move(320, 320)
    page.wait_for_timeout(1000)  # as above: nothing should happen
    assert _rows(e2e, alice)[topic_id]["unread_count"] == 2
    expect(badge).to_have_text("2")
    assert seen.errors == []
