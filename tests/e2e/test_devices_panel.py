"""The demo page's "Your devices" panel: the signed-in user's browsers and phones, and Remove.

The e2e stack has no FCM or APNs settings, so the phones are rows written straight into the
database (as ``POST /api/notifications/devices`` would store them); the browser is a real
subscription on the local push service, through the same fake ``PushManager`` as the push test.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from playwright.sync_api import expect

from tests.e2e.helpers import FAKE_PUSH_MANAGER, sign_in, watch
from webapp.extensions import db
from webapp.models import PushSubscription


def _add_device(e2e, user, channel: str, token: str, app_id: str, label: str, **extra) -> str:
    with e2e.app.app_context():
        device = PushSubscription(
            user_id=uuid.UUID(user.id),
            channel=channel,
            token=token,
            app_id=app_id,
            user_agent=label,
            **extra,
        )
        db.session.add(device)
        db.session.commit()
        return str(device.id)


def _devices(e2e, user) -> list[dict]:
    response = e2e.api(user, "GET", "/api/notifications/subscriptions")
    assert response.status_code == 200, response.text
    return response.json()["subscriptions"]


def test_lists_phones_and_removes_one(e2e, new_context):
    """Android and iPhone rows with label, app id and token hint; Remove deletes only one."""
    bob = e2e.user("bob", "Bob Chen")
    fcm_token = f"fcm-{uuid.uuid4().hex}:{uuid.uuid4().hex}"
    apns_token = uuid.uuid4().hex + uuid.uuid4().hex
    android = _add_device(e2e, bob, "fcm", fcm_token, "com.example.beacon", "Pixel 8")
    iphone = _add_device(
        e2e,
        bob,
        "apns",
        apns_token,
        "com.example.beacon.ios",
        "Bob's iPhone",
        last_success_at=datetime.now(UTC) - timedelta(hours=3),
        failure_count=2,
    )

    page = new_context().new_page()
    seen = watch(page, e2e.url)
    sign_in(page, bob.username)
    page.click("#devices-button")
    dialog = page.get_by_role("dialog", name="Your devices")
    expect(dialog).to_be_visible()

    rows = dialog.locator(".device")
    expect(rows).to_have_count(2)
    phone = rows.filter(has_text="Android (FCM)")
    expect(phone).to_have_attribute("data-device-id", android)
    expect(phone.locator(".device-detail")).to_have_text(
        f"Pixel 8 · com.example.beacon · token …{fcm_token[-8:]}"
    )
    expect(phone.locator(".device-status")).to_have_text("Last push: never")
    ios = rows.filter(has_text="iPhone (APNs)")
    expect(ios).to_have_attribute("data-device-id", iphone)
    expect(ios.locator(".device-detail")).to_have_text(
        f"Bob's iPhone · com.example.beacon.ios · token …{apns_token[-8:]}"
    )
    expect(ios.locator(".device-status")).to_have_text("Last push: 3 hours ago · 2 failed attempts")
    expect(dialog.locator("#devices-empty")).to_be_hidden()

    phone.get_by_role("button", name="Remove Android (FCM), Pixel 8").click()
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text("iPhone (APNs)")
    expect(dialog.get_by_role("status")).to_have_text("Removed Android (FCM), Pixel 8.")
    assert [d["id"] for d in _devices(e2e, bob)] == [iphone]

    # Escape closes it; opening again fetches the list afresh (a row added meanwhile shows).
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    _add_device(e2e, bob, "fcm", f"fcm-{uuid.uuid4().hex}{uuid.uuid4().hex}", "app.x", "Tablet")
    page.click("#devices-button")
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text="Tablet")).to_have_count(1)
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()

    assert seen.foreign_requests() == []
    assert seen.errors == []


def test_removing_this_browser_turns_push_off(e2e, new_context):
    """The row of this browser's own subscription says so; Remove also unsubscribes the
    browser and resets the push button; with nothing left, the panel says how to add one."""
    bob = e2e.user("bob", "Bob Chen")
    issued = e2e.push.new_subscription(application_server_key=e2e.env["VAPID_PUBLIC_KEY"])
    context = new_context(notifications=True)
    context.add_init_script(FAKE_PUSH_MANAGER % json.dumps(issued))
    page = context.new_page()
    seen = watch(page, e2e.url)
    sign_in(page, bob.username)
    button = page.locator("#push-button")
    button.click()
    expect(button).to_have_attribute("aria-pressed", "true")

    page.click("#devices-button")
    dialog = page.get_by_role("dialog", name="Your devices")
    own = dialog.locator('.device[data-own="true"]')
    expect(own.locator(".device-name")).to_have_text("This browser")
    expect(dialog.locator(".device")).to_have_count(1)
    own.get_by_role("button", name="Remove This browser").click()

    expect(dialog.locator(".device")).to_have_count(0)
    expect(dialog.locator("#devices-empty")).to_be_visible()
    expect(dialog.locator("#devices-empty")).to_contain_text("Enable push")
    expect(button).to_have_attribute("aria-pressed", "false")
    expect(button).to_have_text("Enable push")
    assert (
        page.evaluate("navigator.serviceWorker.ready.then(r => r.pushManager.getSubscription())")
        is None
    )
    assert _devices(e2e, bob) == []
    assert seen.foreign_requests() == []
    assert seen.errors == []
