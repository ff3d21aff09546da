"""The demo page in real Chromium against the real stack (web, Redis, Celery workers).

Two users in two browser contexts (separate profiles) watch each other live: toast, unread
badge, read receipt, presence. The service worker gets a push event through DevTools and its
notification is checked; see ``test_push_subscription_and_service_worker`` for what is real.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path
from types import SimpleNamespace

from playwright.sync_api import expect

from tests.e2e.helpers import (
    FAKE_PUSH_MANAGER,
    service_worker,
    service_worker_registration_id,
    sign_in,
    watch,
)
from tests.harness.waiting import wait_until

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "demo.png"


def _topic(e2e, channel: str, topic: str, *members) -> tuple[str, str]:
    args = ["create-topic", channel, topic]
    for member in members:
        args += ["--member", member.username]
    room_id, topic_id = e2e.cli(*args).split()
    return room_id, topic_id


def _ref(topic_id: str) -> SimpleNamespace:
    """What ``Stack.unread`` reads of a topic."""
    return SimpleNamespace(topic_id=topic_id)


def _online_ids(e2e, user) -> set[str]:
    response = e2e.api(user, "GET", "/api/users/online")
    assert response.status_code == 200, response.text
    return {u["user_id"] for u in response.json()["users"]}


def test_two_users_see_each_other_live(e2e, new_context):
    """A's message: B's toast and badge; B reads: A's receipt; B leaves: A sees B offline."""
    alice = e2e.user("alice", "Alice Martin")
    bob = e2e.user("bob", "Bob Chen")
    carol = e2e.user("carol", "Carol Diaz")
    # Readable names for the screenshot; each session has a fresh database, so they are new.
    _, launch = _topic(e2e, "design", "launch-plan", alice, bob, carol)
    _, random = _topic(e2e, "general", "random", alice, bob, carol)

    page_a = new_context().new_page()
    seen_a = watch(page_a, e2e.url)
    sign_in(page_a, alice.username)
    page_b = new_context().new_page()
    seen_b = watch(page_b, e2e.url)
    sign_in(page_b, bob.username)

    # Both see each other online (B came online after A's page loaded: a live event).
    bob_on_a = page_a.locator(f'.person[data-user-id="{bob.id}"]')
    expect(bob_on_a).to_have_attribute("data-online", "true")
    expect(bob_on_a.locator(".seen")).to_have_text("Online")
    expect(page_b.locator(f'.person[data-user-id="{alice.id}"]')).to_have_attribute(
        "data-online", "true"
    )

    # A opens the topic and sends a message from the composer.
    page_a.click(f'.topic[data-topic-id="{launch}"]')
    expect(page_a.locator("#topic-title")).to_have_text("launch-plan")
    text = "The launch deck is ready for review. Can you take a look before 3pm?"
    page_a.fill("#composer-input", text)
    page_a.keyboard.press("Enter")
    expect(page_a.locator(".message .body")).to_have_text([text])

    # B: a toast for the global_message_alert, and the unread badge from unread_update.
    toast = page_b.locator(f'.toast[data-topic-id="{launch}"]')
    expect(toast).to_be_visible()
    expect(toast.locator(".toast-title")).to_contain_text("Alice Martin")
    expect(toast.locator(".toast-body")).to_have_text(text)
    badge = page_b.locator(f'.topic[data-topic-id="{launch}"] .badge')
    expect(badge).to_have_text("1")
    expect(page_b).to_have_title("(1) Beacon")
    assert e2e.unread(bob, _ref(launch)) == 1

    # B opens the topic: the badge goes, the count is 0 in the database, A sees messages_read.
    page_b.click(f'.topic[data-topic-id="{launch}"]')
    expect(page_b.locator(".message .body")).to_have_text([text])
    expect(badge).to_have_count(0)
    expect(page_b).to_have_title("Beacon")
    wait_until(lambda: e2e.unread(bob, _ref(launch)) == 0, timeout=10, message="still unread")
    expect(page_a.locator(".receipt")).to_have_text("Seen by Bob Chen")

    # B answers; A gets it live in the open topic, without a toast (it is on screen).
    reply = "Looks good to me. Approved!"
    page_b.fill("#composer-input", reply)
    page_b.click("#send-button")
    expect(page_a.locator(".message .body")).to_have_text([text, reply])
    expect(page_a.locator(f'.toast[data-topic-id="{launch}"]')).to_have_count(0)

    # B closes the page: B's only connection ends, A sees B go offline.
    page_b.close()
    expect(bob_on_a).to_have_attribute("data-online", "false")
    expect(bob_on_a.locator(".seen")).to_have_text("Last seen just now")
    wait_until(lambda: bob.id not in _online_ids(e2e, alice), timeout=10, message="bob online")

    # Carol (a Socket.IO client, no browser) posts elsewhere: A gets a toast and a badge.
    carol_client = e2e.client(carol)
    ack = carol_client.call(
        "send_message", {"topic_id": random, "message": "Lunch at 12:30 on the terrace?"}
    )
    assert ack["ok"], ack
    expect(page_a.locator(f'.toast[data-topic-id="{random}"]')).to_be_visible()
    expect(page_a.locator(f'.topic[data-topic-id="{random}"] .badge')).to_have_text("1")

    SCREENSHOT.parent.mkdir(exist_ok=True)
    page_a.screenshot(path=str(SCREENSHOT), animations="disabled")

    # Everything came from the web tier itself (no CDN), without script errors.
    for seen in (seen_a, seen_b):
        assert seen.foreign_requests() == []
        assert seen.errors == []


def test_push_subscription_and_service_worker(e2e, new_context):
    """The push button subscribes through the service worker; a push shows a notification;
    clicking it opens the topic.

    What is real: the page's subscribe flow (VAPID key from the server, the subscribe call,
    POST /api/notifications/subscribe), the server's fan-out and encrypted send by the push
    worker to the local push service, which decrypts it like a browser vendor's service; the
    push event, which DevTools (CDP ``ServiceWorker.deliverPushMessage``) fires in the real
    service worker with exactly the decrypted payload; the notification it shows, read back
    with ``registration.getNotifications()``.

    What is simulated: ``PushManager.subscribe`` hands out a subscription made on the local
    push service (headless Chromium cannot reach Google's push service here, and refuses push
    in incognito profiles); and the click: headless Chromium has no notification to click, so
    the test dispatches a ``notificationclick`` event carrying the real notification inside the
    service worker (``waitUntil`` is collected by the test, as untrusted events cannot extend).
    """
    alice, bob = e2e.user("alice", "Alice Martin"), e2e.user("bob", "Bob Chen")
    topic_name = f"launch-plan-{uuid.uuid4().hex[:4]}"
    _, topic_id = _topic(e2e, "design", topic_name, alice, bob)
    vapid_public_key = e2e.env["VAPID_PUBLIC_KEY"]
    issued = e2e.push.new_subscription(application_server_key=vapid_public_key)

    context = new_context(notifications=True)
    context.add_init_script(FAKE_PUSH_MANAGER % json.dumps(issued))
    page = context.new_page()
    seen = watch(page, e2e.url)
    sign_in(page, bob.username)

    # The button: permission, subscribe with the server's VAPID key, register with the server.
    button = page.locator("#push-button")
    expect(button).to_have_text("Enable push")
    button.click()
    expect(button).to_have_attribute("aria-pressed", "true")
    expect(button).to_have_text("Push on")
    calls = page.evaluate("window.__pushSubscribeCalls")
    assert calls == [{"userVisibleOnly": True, "applicationServerKey": vapid_public_key}]
    response = e2e.api(bob, "GET", "/api/notifications/subscriptions")
    assert [s["endpoint"] for s in response.json()["subscriptions"]] == [issued["endpoint"]]

    # Bob goes offline; Alice's message is pushed to his subscription.
    page.close()
    wait_until(lambda: bob.id not in _online_ids(e2e, alice), timeout=10, message="bob online")
    sender = e2e.client(alice)
    text = "Are we still on for the demo at 4?"
    ack = sender.call("send_message", {"topic_id": topic_id, "message": text})
    assert ack["ok"], ack
    message_id = ack["message"]["id"]
    pushed = wait_until(
        lambda: e2e.push.messages(issued), timeout=20, message="no push reached the service"
    )
    raw = pushed[0]["payload"]
    payload = json.loads(raw)
    assert payload["topic_id"] == topic_id and payload["message_id"] == message_id

    # Bob's browser is open again, on no topic; the push arrives in the service worker.
    page = context.new_page()
    seen_again = watch(page, e2e.url)
    page.goto("/")
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    expect(page.locator("#topic-title")).to_have_text("Choose a topic")
    cdp, registration_id = service_worker_registration_id(context, page, e2e.url + "/")

    def notifications() -> list[dict]:
        return page.evaluate(
            """tag => navigator.serviceWorker.ready
                .then(r => r.getNotifications({tag}))
                .then(ns => ns.map(n => ({
                    title: n.title, body: n.body, tag: n.tag, data: n.data,
                    renotify: n.renotify, icon: n.icon})))""",
            topic_id,
        )

    # DevTools may drop a push it hands to a worker that is still starting (seen once on a
    # loaded CI machine: nothing after 10 s): hand it over again then. The notification's tag
    # makes a second one replace the first, so exactly one is asserted below either way.
    shown: list[dict] = []
    for _ in range(3):
        cdp.send(
            "ServiceWorker.deliverPushMessage",
            {"origin": e2e.url, "registrationId": registration_id, "data": raw},
        )
        with contextlib.suppress(TimeoutError):
            shown = wait_until(notifications, timeout=10, message="no notification yet")
            break
    assert shown, "the service worker showed no notification after 3 pushes"
    assert len(shown) == 1
    notification = shown[0]
    assert notification["title"] == payload["title"]
    assert "Alice Martin" in notification["title"] and topic_name in notification["title"]
    assert notification["body"] == payload["body"] == text
    assert notification["tag"] == topic_id
    assert notification["renotify"] is True
    assert notification["icon"] == e2e.url + "/static/icon-192.png"
    assert notification["data"]["url"] == payload["url"]
    assert notification["data"]["message_id"] == message_id

    # The click: the service worker tells the open tab to show the topic, and closes it.
    worker = service_worker(context, page, e2e.url + "/sw.js")
    outcome = worker.evaluate(
        """async tag => {
            const [notification] = await self.registration.getNotifications({tag});
            const event = new NotificationEvent("notificationclick", {notification});
            const pending = [];
            event.waitUntil = promise => pending.push(promise);
            self.dispatchEvent(event);
            const results = await Promise.allSettled(pending);
            return results.map(r => r.status);
        }""",
        topic_id,
    )
    assert outcome == ["fulfilled"]
    expect(page.locator("#topic-title")).to_have_text(topic_name)
    expect(page.locator(f'.topic[data-topic-id="{topic_id}"]')).to_have_attribute(
        "aria-current", "true"
    )
    expect(page.locator(f'.message[data-message-id="{message_id}"] .body')).to_have_text(text)
    assert f"topic={topic_id}" in page.url
    remaining = page.evaluate(
        "tag => navigator.serviceWorker.ready.then(r => r.getNotifications({tag}))"
        ".then(ns => ns.length)",
        topic_id,
    )
    assert remaining == 0
    for watched in (seen, seen_again):
        assert watched.foreign_requests() == []
        assert watched.errors == []


def test_reconnection_joins_the_open_topic_again(e2e, new_context):
    """After the network drops and returns, the page is live again in the topic it shows:
    the new connection joins the topic room again (rooms are per connection)."""
    alice, bob = e2e.user("alice", "Alice Martin"), e2e.user("bob", "Bob Chen")
    _, topic_id = _topic(e2e, "design", f"review-{uuid.uuid4().hex[:4]}", alice, bob)
    context = new_context()
    page = context.new_page()
    seen = watch(page, e2e.url)
    sign_in(page, bob.username)
    page.click(f'.topic[data-topic-id="{topic_id}"]')
    expect(page.locator("#topic-title")).to_contain_text("review-")
    sender = e2e.client(alice)

    context.set_offline(True)
    expect(page.locator("#connection")).to_have_attribute("data-state", "reconnecting")
    missed = "Sent while you were away"
    assert sender.call("send_message", {"topic_id": topic_id, "message": missed})["ok"]
    context.set_offline(False)
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    # Caught up from REST on reconnect, then live in the room again.
    expect(page.locator(".message .body")).to_have_text([missed])
    live = "And this one arrives live"
    assert sender.call("send_message", {"topic_id": topic_id, "message": live})["ok"]
    expect(page.locator(".message .body")).to_have_text([missed, live])
    expect(page.locator(f'.topic[data-topic-id="{topic_id}"] .badge')).to_have_count(0)
    wait_until(lambda: e2e.unread(bob, _ref(topic_id)) == 0, timeout=10, message="unread left")
    assert seen.foreign_requests() == []
    # Going offline makes Chromium log failed requests; nothing else may go wrong.
    assert [e for e in seen.errors if "ERR_INTERNET_DISCONNECTED" not in e] == []


def _preferences(e2e, user) -> dict:
    response = e2e.api(user, "GET", "/api/notifications/preferences")
    assert response.status_code == 200, response.text
    return response.json()


def _topic_level(e2e, user, topic_id: str) -> str | None:
    levels = {t["topic_id"]: t["level"] for t in _preferences(e2e, user)["topics"]}
    return levels.get(topic_id)


def test_notification_settings_follow_the_user_across_tabs(e2e, new_context):
    """One user, two browsers: muting the open topic and snoozing in one shows in the other
    (``preferences_updated``), and the server stores both; a refused change shows an error."""
    alice, bob = e2e.user("alice", "Alice Martin"), e2e.user("bob", "Bob Chen")
    _, topic_id = _topic(e2e, "design", f"standup-{uuid.uuid4().hex[:4]}", alice, bob)
    pages, seen = [], []
    for _ in range(2):
        page = new_context().new_page()
        seen.append(watch(page, e2e.url))
        sign_in(page, bob.username)
        page.click(f'.topic[data-topic-id="{topic_id}"]')
        expect(page.locator("#notify-level")).to_have_value("")
        pages.append(page)
    here, there = pages
    marker = f'.topic[data-topic-id="{topic_id}"] .muted-mark'
    expect(here.locator(marker)).to_have_count(0)

    # Mute the open topic here: the override is stored, the other browser follows without reload.
    here.select_option("#notify-level", "none")
    wait_until(lambda: _topic_level(e2e, bob, topic_id) == "none", timeout=10, message="no mute")
    expect(there.locator("#notify-level")).to_have_value("none")
    for page in pages:
        expect(page.locator(marker)).to_have_count(1)

    # Back to Default (DELETE) from the other browser.
    there.select_option("#notify-level", "")
    expect(here.locator("#notify-level")).to_have_value("")
    expect(here.locator(marker)).to_have_count(0)
    assert _topic_level(e2e, bob, topic_id) is None

    # Snooze for an hour: do-not-disturb on the server, "paused until" in both browsers.
    snooze = here.locator("#snooze-button")
    expect(snooze).to_have_text("Snooze 1 h")
    snooze.click()
    expect(snooze).to_have_text("Resume notifications")
    prefs = _preferences(e2e, bob)
    assert prefs["dnd_active"] is True and prefs["snooze_until"], prefs
    until = here.evaluate(
        "iso => new Intl.DateTimeFormat(undefined, {hour: 'numeric', minute: '2-digit'})"
        ".format(new Date(iso))",
        prefs["snooze_until"],
    )
    for page in pages:
        status = page.locator("#dnd-status")
        expect(status).to_be_visible()
        expect(status).to_contain_text("Notifications paused until")
        expect(status).to_contain_text(until)
    expect(there.locator("#snooze-button")).to_have_text("Resume notifications")

    # Resume from the other browser.
    there.click("#snooze-button")
    for page in pages:
        expect(page.locator("#dnd-status")).to_be_hidden()
        expect(page.locator("#snooze-button")).to_have_text("Snooze 1 h")
    prefs = _preferences(e2e, bob)
    assert prefs["dnd_active"] is False and prefs["snooze_until"] is None, prefs

    # A refused change: an error toast, and the select goes back to the stored level.
    refusal = {"error": "not_a_member", "message": "you are not a member of this topic"}
    here.route(
        "**/api/notifications/preferences/topics/*",
        lambda route: route.fulfill(status=403, json=refusal),
    )
    here.select_option("#notify-level", "mentions")
    error = here.locator(".toast.error")
    expect(error.locator(".toast-title")).to_contain_text("Could not change notifications")
    expect(error.locator(".toast-body")).to_have_text(refusal["message"])
    expect(here.locator("#notify-level")).to_have_value("")
    assert _topic_level(e2e, bob, topic_id) is None

    for watched in seen:
        assert watched.foreign_requests() == []
    assert seen[1].errors == []
    # Chromium logs the refused request itself; nothing else may go wrong.
    assert [e for e in seen[0].errors if "status of 403" not in e] == []


def test_page_refreshes_its_token_before_it_expires(e2e, new_context):
    """A connection whose token is about to expire gets ``token_expiring``; the page fetches a
    new development token for the same user, sends ``refresh_token`` and says so."""
    import jwt

    bob = e2e.user("bob", "Bob Chen")
    context = new_context()
    page = context.new_page()
    seen = watch(page, e2e.url)
    sign_in(page, bob.username)
    # Inside the notice window from the start (TOKEN_EXPIRING_NOTICE is 60 s by default).
    short = e2e.cli("token", bob.username, "--ttl", "30")
    page.evaluate(
        """([token, username]) => {
          const value = JSON.stringify({ token, username });
          sessionStorage.setItem("beacon.session", value);
          localStorage.setItem("beacon.session", value);
        }""",
        [short, bob.username],
    )
    page.reload()
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    expect(page.locator("#token-status")).to_contain_text("Session refreshed", timeout=20_000)
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    held = page.evaluate("JSON.parse(sessionStorage.getItem('beacon.session')).token")
    claims = jwt.decode(held, options={"verify_signature": False})
    old = jwt.decode(short, options={"verify_signature": False})
    assert claims["sub"] == bob.id and claims["exp"] > old["exp"] + 3600
    assert seen.foreign_requests() == []
    assert seen.errors == []


def test_membership_changes_from_the_integration_api_show_live(e2e, new_context):
    """The product's backend adds Bob to a topic: it appears in his list with a toast; it
    removes him while he reads it: the topic leaves the list and the screen."""
    key = e2e.cli("create-api-key", f"e2e-{uuid.uuid4().hex[:8]}")
    suffix = uuid.uuid4().hex[:6]

    def admin(method: str, path: str, **kwargs):
        headers = {"Authorization": f"Bearer {key}"}
        return e2e.api(None, method, f"/api/admin{path}", headers=headers, **kwargs)

    bob = f"bob{suffix}"
    assert admin("PUT", f"/users/b-{suffix}", json={"username": bob}).status_code == 201
    assert admin("PUT", f"/rooms/r-{suffix}", json={"name": "sales"}).status_code == 201
    topic = admin("PUT", f"/rooms/r-{suffix}/topics/t-{suffix}", json={"name": f"deal-{suffix}"})
    assert topic.status_code == 201, topic.text
    topic_id = topic.json()["id"]

    page = new_context().new_page()
    seen = watch(page, e2e.url)
    sign_in(page, bob)
    assert admin("PUT", f"/topics/t-{suffix}/members/b-{suffix}").status_code == 201
    entry = page.locator(f'.topic[data-topic-id="{topic_id}"]')
    expect(entry).to_have_count(1)
    expect(page.locator(".toast").filter(has_text=f"Added to deal-{suffix}")).to_have_count(1)
    posted = admin(
        "POST",
        "/messages",
        json={"topic": f"t-{suffix}", "sender": f"b-{suffix}", "message": "Kickoff at ten"},
    )
    assert posted.status_code == 201, posted.text
    entry.click()
    expect(page.locator("#topic-title")).to_have_text(f"deal-{suffix}")
    # Loaded: the removal below must not race the page's own fetch of the messages (a 403).
    expect(page.locator("#messages")).to_contain_text("Kickoff at ten")

    assert admin("DELETE", f"/topics/t-{suffix}/members/b-{suffix}").status_code == 204
    expect(entry).to_have_count(0)
    expect(page.locator("#topic-title")).to_have_text("Choose a topic")
    expect(page.locator("#composer")).to_be_hidden()
    expect(page.locator(".toast").filter(has_text=f"Removed from deal-{suffix}")).to_have_count(1)
    assert seen.errors == [] and seen.foreign_requests() == []
