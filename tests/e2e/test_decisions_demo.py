"""The demo page's "Why (not) notified?" and "Send a test notification" (issue 20).

A real subscription on the local push service stands for the browser's push service (through
the same fake ``PushManager`` as the push test), so the server's decisions are real: ``online``
while the page is in use, ``level`` for a muted topic while the page is idle (hidden), and
``failed`` when the push service answers 410 for the subscription. Each decision is awaited
from the route first (the push worker records it shortly after the message), then read from
the page. The test notification goes through the real push worker, including the late answer
(202, then ``test_push_result``) and the rate limit.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from playwright.sync_api import expect

from tests.e2e.helpers import FAKE_PUSH_MANAGER, set_hidden, sign_in, watch
from tests.harness.waiting import wait_until

WHY = "Why (not) notified?"


def _decision(e2e, user, topic_id: str, message_id: int) -> dict[str, Any]:
    """The user's decision for the message from the route, once recorded (and, for a push,
    once it ended on every device)."""

    def found() -> dict[str, Any] | None:
        answer = e2e.api(user, "GET", "/api/notifications/decisions", params={"topic_id": topic_id})
        assert answer.status_code == 200, answer.text
        mine = [d for d in answer.json()["decisions"] if d["message_id"] == message_id]
        if not mine or (
            mine[0]["decision"] in ("pushed", "coalesced") and not mine[0]["deliveries"]
        ):
            return None
        return mine[0]

    return wait_until(found, timeout=20, message=f"no decision for message {message_id}")


def _status(e2e, viewer, user) -> str | None:
    response = e2e.api(viewer, "GET", "/api/users/online")
    assert response.status_code == 200, response.text
    return {u["user_id"]: u.get("status") for u in response.json()["users"]}.get(user.id)


def _topic_level(e2e, user, topic_id: str) -> str | None:
    response = e2e.api(user, "GET", "/api/notifications/preferences")
    assert response.status_code == 200, response.text
    return next((t["level"] for t in response.json()["topics"] if t["topic_id"] == topic_id), None)


def _push_page(e2e, new_context, user) -> tuple[Any, Any, dict[str, Any]]:
    """A page signed in as ``user`` with push turned on (a local push service subscription)."""
    issued = e2e.push.new_subscription(application_server_key=e2e.env["VAPID_PUBLIC_KEY"])
    context = new_context(notifications=True)
    context.add_init_script(FAKE_PUSH_MANAGER % json.dumps(issued))
    page = context.new_page()
    seen = watch(page, e2e.url)
    sign_in(page, user.username)
    page.locator("#push-button").click()
    expect(page.locator("#push-button")).to_have_attribute("aria-pressed", "true")
    return page, seen, issued


def _why(page, message_id: int) -> Any:
    """Open "Why (not) notified?" on a message; its panel."""
    message = page.locator(f'.message[data-message-id="{message_id}"]')
    message.get_by_role("button", name=WHY).click()
    expect(message.get_by_role("button", name=WHY)).to_have_attribute("aria-expanded", "true")
    return message.get_by_role("region", name="Why (not) notified")


def _idle(e2e, page, viewer, user) -> None:
    set_hidden(page, True)
    wait_until(lambda: _status(e2e, viewer, user) == "idle", timeout=10, message="not idle")


def _back(e2e, page, viewer, user) -> None:
    set_hidden(page, False)
    wait_until(lambda: _status(e2e, viewer, user) == "active", timeout=10, message="not active")


def test_why_online_muted_and_expired(e2e, new_context):
    """Bob, with Web Push on: a message while his page is in use says ``online``; one in the
    topic he muted, while his page is idle, ``level``; one pushed to a subscription the push
    service reports gone, ``failed`` with the device expired; a message from before he joined
    has no decision."""
    alice, bob = e2e.user("alice", "Alice Martin"), e2e.user("bob", "Bob Chen")
    channel, name = "design", f"launch-{uuid.uuid4().hex[:4]}"
    _, topic_id = e2e.cli("create-topic", channel, name, "--member", alice.username).split()
    sender = e2e.client(alice)

    def send(text: str) -> int:
        ack = sender.call("send_message", {"topic_id": topic_id, "message": text})
        assert ack["ok"], ack
        return ack["message"]["id"]

    # Before Bob is a member: nothing is decided for him.
    early = send("Kick-off notes are in the doc.")
    assert _decision(e2e, alice, topic_id, early)["decision"] == "sender"
    e2e.cli("create-topic", channel, name, "--member", bob.username)

    page, seen, issued = _push_page(e2e, new_context, bob)
    page.click(f'.topic[data-topic-id="{topic_id}"]')
    expect(page.locator("#topic-title")).to_have_text(name)

    # Online: Bob's page is open on the topic and in use.
    online = send("Standup in five minutes?")
    expect(page.locator(f'.message[data-message-id="{online}"]')).to_be_visible()
    assert _decision(e2e, bob, topic_id, online)["detail"] == "active"
    why = _why(page, online)
    expect(why).to_have_attribute("data-decision", "online")
    expect(why.locator(".why-summary")).to_have_text(
        "Not pushed: you were using Beacon when it arrived (a page or app in use), "
        "so it showed up there."
    )
    expect(why.locator(".delivery")).to_have_count(0)
    # From the same answer (no new request): the message from before he joined.
    older = _why(page, early)
    expect(older).to_have_attribute("data-state", "none")
    expect(older.locator(".why-summary")).to_have_text("No decision is recorded for this message.")
    # Refresh asks again; the answer is the same.
    with page.expect_response(lambda r: "/api/notifications/decisions?" in r.url) as answer:
        why.get_by_role("button", name="Refresh why (not) notified").click()
    assert answer.value.status == 200
    expect(why).to_have_attribute("data-decision", "online")

    # Level: Bob mutes the topic, then hides his page (idle: pushed to as if away).
    page.select_option("#notify-level", "none")
    wait_until(lambda: _topic_level(e2e, bob, topic_id) == "none", timeout=10, message="muted")
    _idle(e2e, page, alice, bob)
    muted = send("Deploy is done, numbers look fine.")
    assert _decision(e2e, bob, topic_id, muted)["rule"] == "topic"
    _back(e2e, page, alice, bob)
    why = _why(page, muted)  # newer than the answer held: asked again by itself
    expect(why).to_have_attribute("data-decision", "level")
    expect(why.locator(".why-summary")).to_have_text(
        "Not pushed: muted by this topic's notification setting."
    )

    # Failed: the push service says the subscription is gone (410).
    page.select_option("#notify-level", "")
    wait_until(lambda: _topic_level(e2e, bob, topic_id) is None, timeout=10, message="unmuted")
    e2e.push.set_behaviour(issued, sticky=410)
    _idle(e2e, page, alice, bob)
    gone = send("Can someone review the release notes?")
    failed = _decision(e2e, bob, topic_id, gone)
    assert failed["decision"] == "failed", failed
    _back(e2e, page, alice, bob)
    why = _why(page, gone)
    expect(why).to_have_attribute("data-decision", "failed")
    expect(why.locator(".why-summary")).to_have_text(
        "The push failed on every one of your devices:"
    )
    device = why.locator(".delivery")
    expect(device).to_have_count(1)
    expect(device).to_have_attribute("data-outcome", "expired")
    expect(device).to_have_attribute("data-device-id", failed["deliveries"][0]["device_id"])
    expect(device.locator(".delivery-device")).to_contain_text("This browser")
    expect(device.locator(".delivery-outcome")).to_have_text(
        re.compile(r"^expired: the push service says this subscription is gone")
    )
    # The earlier panels are still open, and the page kept its own notes about each.
    expect(page.locator(".why")).to_have_count(4)

    assert seen.foreign_requests() == []
    assert seen.errors == []


def test_send_a_test_notification(e2e, new_context):
    """Settings → "Send a test notification": each device's outcome (this browser delivered,
    a gone one expired and removed); a slow push service gives 202, then the event fills it
    in; the fourth within a minute is refused with when to try again."""
    carol = e2e.user("carol", "Carol Diaz")
    page, seen, issued = _push_page(e2e, new_context, carol)
    other = e2e.push.new_subscription()
    body = {"endpoint": other["endpoint"], "expirationTime": None, "keys": other["keys"]}
    registered = e2e.api(carol, "POST", "/api/notifications/subscribe", json=body)
    assert registered.status_code == 201, registered.text
    e2e.push.set_behaviour(other, sticky=410)
    devices = e2e.api(carol, "GET", "/api/notifications/subscriptions").json()["subscriptions"]
    own = next(d["id"] for d in devices if d["endpoint"] == issued["endpoint"])

    page.click("#settings-button")
    dialog = page.get_by_role("dialog", name="Privacy, email & idle")
    expect(dialog).to_be_visible()
    button = dialog.get_by_role("button", name="Send a test notification")
    status = dialog.locator("#test-push-status")
    results = dialog.get_by_role("list", name="Test notification results")

    # Answered at once (200): both devices.
    button.click()
    expect(status).to_have_text("Test notification sent to 2 devices: 1 delivered, 1 expired.")
    expect(results.locator(".delivery")).to_have_count(2)
    mine = results.locator(f'.delivery[data-device-id="{own}"]')
    expect(mine).to_have_attribute("data-outcome", "delivered")
    expect(mine).to_contain_text("This browser")
    expect(mine.locator(".delivery-outcome")).to_have_text("delivered")
    gone = results.locator(f'.delivery[data-device-id="{registered.json()["id"]}"]')
    expect(gone).to_have_attribute("data-outcome", "expired")
    expect(gone.locator(".delivery-outcome")).to_contain_text("Beacon removed the device")
    [payload] = [json.loads(m["payload"]) for m in e2e.push.messages(issued)]
    assert payload["type"] == "test" and payload["title"] == "Test notification"
    devices = e2e.api(carol, "GET", "/api/notifications/subscriptions").json()["subscriptions"]
    assert [d["id"] for d in devices] == [own]
    expect(button).to_be_enabled()

    # The push service answers late: 202 "still sending", then test_push_result fills it in.
    e2e.push.set_behaviour(issued, script=[{"status": 201, "delay": 3.5}])
    with page.expect_response(lambda r: r.url.endswith("/api/notifications/test")) as answer:
        button.click()
    assert answer.value.status == 202
    expect(status).to_contain_text("Still sending…")
    expect(button).to_be_disabled()
    expect(status).to_have_text("Test notification sent to 1 device: 1 delivered.")
    expect(results.locator(".delivery")).to_have_count(1)
    expect(results.locator(".delivery")).to_have_attribute("data-outcome", "delivered")
    expect(button).to_be_enabled()

    # RATE_LIMIT_TEST_PUSH (3 a minute): the third goes, the fourth is refused.
    with page.expect_response(lambda r: r.url.endswith("/api/notifications/test")) as answer:
        button.click()
    assert answer.value.status == 200
    expect(status).to_have_text("Test notification sent to 1 device: 1 delivered.")
    expect(button).to_be_enabled()
    with page.expect_response(lambda r: r.url.endswith("/api/notifications/test")) as answer:
        button.click()
    assert answer.value.status == 429
    expect(status).to_have_text(
        re.compile(r"^Too many test notifications: try again in \d+ seconds?\.$")
    )
    expect(results).to_be_hidden()
    expect(button).to_be_enabled()

    # A 429 is an expected answer, not a script error; the console reports the failed load.
    assert seen.foreign_requests() == []
    assert [e for e in seen.errors if "429" not in e] == []
