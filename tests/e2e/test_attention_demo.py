"""The demo page's attention features (issue 17): idle presence, the "Email & idle" settings,
and the development Emails panel.

A page reports ``set_presence`` idle when it is hidden (or unused for two minutes) and active
again on input; the other users' people lists follow through ``user_status_change``. Hidden
pages are simulated by redefining ``document.visibilityState`` and dispatching
``visibilitychange`` (headless Chromium keeps every page visible). The email settings need a
server with email set up, so those tests run on a stack of their own that sends to the SMTP
sink (tests/fakes/smtp.py), whose Maildir is the development mailbox the Emails panel reads.
"""

from __future__ import annotations

import email.utils
import mailbox
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from playwright.sync_api import expect
from sqlalchemy import update

from tests.conftest import DEFAULT_WORKERS, shared_services_stack
from tests.e2e.conftest import VIEWPORT
from tests.e2e.helpers import SET_VISIBILITY, sign_in, watch
from tests.fakes.smtp import running_smtp_sink
from tests.harness.waiting import wait_until
from webapp.extensions import db
from webapp.models import User


def _topic(stack, *members) -> tuple[str, str]:
    """A new topic of ``members``: its id and name."""
    name = f"review-{uuid.uuid4().hex[:4]}"
    args = ["create-topic", "design", name]
    for member in members:
        args += ["--member", member.username]
    _, topic_id = stack.cli(*args).split()
    return topic_id, name


def _preferences(stack, user) -> dict:
    response = stack.api(user, "GET", "/api/notifications/preferences")
    assert response.status_code == 200, response.text
    return response.json()


def _status(stack, viewer, user) -> str | None:
    """``user``'s status in GET /api/users/online, as ``viewer`` sees it (None: not online)."""
    response = stack.api(viewer, "GET", "/api/users/online")
    assert response.status_code == 200, response.text
    return {u["user_id"]: u.get("status") for u in response.json()["users"]}.get(user.id)


def _set_email(stack, user, address: str | None) -> None:
    with stack.app.app_context():
        db.session.execute(update(User).where(User.id == uuid.UUID(user.id)).values(email=address))
        db.session.commit()


# ---------------------------------------------------------------------------- idle presence


def test_hidden_page_shows_idle_and_reads_on_return(e2e, new_context):
    """Alice hides her page: Bob sees her Idle, and a message in her open topic counts as
    unread; she comes back (visible, input): Active for Bob, and the topic is read."""
    alice = e2e.user("alice", "Alice Martin")
    bob = e2e.user("bob", "Bob Chen")
    topic_id, topic_name = _topic(e2e, alice, bob)

    page_a = new_context().new_page()
    seen_a = watch(page_a, e2e.url)
    sign_in(page_a, alice.username)
    page_b = new_context().new_page()
    seen_b = watch(page_b, e2e.url)
    sign_in(page_b, bob.username)
    page_a.click(f'.topic[data-topic-id="{topic_id}"]')
    expect(page_a.locator("#topic-title")).to_have_text(topic_name)

    alice_on_b = page_b.locator(f'.person[data-user-id="{alice.id}"]')
    expect(alice_on_b).to_have_attribute("data-status", "active")
    expect(alice_on_b.locator(".seen")).to_have_text("Online")

    # Hidden: the page reports idle; Bob's list shows it (still online), and so does REST.
    page_a.evaluate(SET_VISIBILITY, True)
    expect(alice_on_b).to_have_attribute("data-status", "idle")
    expect(alice_on_b).to_have_attribute("data-online", "true")
    expect(alice_on_b.locator(".seen")).to_have_text("Idle")
    wait_until(lambda: _status(e2e, bob, alice) == "idle", timeout=10, message="not idle")
    expect(page_a.locator(f'.person[data-user-id="{alice.id}"]')).to_have_attribute(
        "data-status", "idle"
    )

    # Bob writes in the topic Alice has open: she is away, so it counts as unread for her,
    # and her hidden page does not read it for her.
    bob_client = e2e.client(bob)
    ack = bob_client.call("send_message", {"topic_id": topic_id, "message": "Are you there?"})
    assert ack["ok"], ack
    expect(page_a.locator(".message .body")).to_have_text(["Are you there?"])
    badge = page_a.locator(f'.topic[data-topic-id="{topic_id}"] .badge')
    expect(badge).to_have_text("1")
    assert e2e.unread(alice, SimpleNamespace(topic_id=topic_id)) == 1

    # Back: visible and using the page. Active for Bob; the open topic is marked read.
    page_a.evaluate(SET_VISIBILITY, False)
    page_a.mouse.move(200, 300)
    page_a.keyboard.press("Shift")
    expect(alice_on_b).to_have_attribute("data-status", "active")
    expect(alice_on_b.locator(".seen")).to_have_text("Online")
    expect(badge).to_have_count(0)
    wait_until(
        lambda: e2e.unread(alice, SimpleNamespace(topic_id=topic_id)) == 0,
        timeout=10,
        message="still unread",
    )
    wait_until(lambda: _status(e2e, bob, alice) == "active", timeout=10, message="not active")

    for seen in (seen_a, seen_b):
        assert seen.foreign_requests() == []
        assert seen.errors == []


def test_settings_without_email_on_the_server(e2e, new_context):
    """The default stack sends no email: the dialog says so and its email controls are off;
    push-while-idle still works, and there is no Emails button (the page does not even ask)."""
    carol = e2e.user("carol", "Carol Diaz")
    page = new_context().new_page()
    seen = watch(page, e2e.url)
    sign_in(page, carol.username)
    expect(page.locator("#emails-button")).to_be_hidden()
    page.click("#settings-button")
    dialog = page.get_by_role("dialog", name="Email & idle")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#email-disabled")).to_have_text("Email is not set up on this server.")
    expect(dialog.get_by_label("Email me about missed messages")).to_be_disabled()
    expect(dialog.get_by_label("after", exact=True)).to_be_disabled()
    push = dialog.get_by_label("Push to my devices while I'm idle")
    expect(push).to_be_enabled()
    push.uncheck()
    expect(dialog.get_by_role("status")).to_have_text("Saved.")
    assert _preferences(e2e, carol)["push_when_idle"] is False
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert not any("/api/demo/emails" in url for url in seen.requests)
    assert seen.errors == []


# ---------------------------------------------------------------------------- email settings


@pytest.fixture(scope="module")
def mail_stack(
    browser: Any, backend: str, request: pytest.FixtureRequest, tmp_path_factory
) -> Iterator[Any]:
    """A stack that sends email to the SMTP sink (an ``email`` worker, beat sweeping every
    half second) with the sink's Maildir as development mailbox; ``browser`` first, so a
    missing Chromium skips before anything starts."""
    first = request.config.getoption("--backends").split(",")[0].strip()
    if backend != first:
        pytest.skip(f"browser tests run on one backend ({first}); the API is tested on all")
    with running_smtp_sink(tmp_path_factory.mktemp("smtp-sink")) as sink:
        with shared_services_stack(
            request,
            backend,
            f"beacon_attention_{backend}",
            name=f"attention-{backend}",
            workers={**DEFAULT_WORKERS, "email": ("email", "-P", "gevent", "-c", "20")},
            DEV_MAILBOX=str(sink.maildir),
            EMAIL_SWEEP_INTERVAL="0.5",
            **sink.env(),
        ) as stack:
            stack.start_beat()
            yield SimpleNamespace(stack=stack, sink=sink)


@pytest.fixture
def mail(mail_stack: Any, browser: Any) -> Iterator[Any]:
    """The mail stack, and ``page()``: a page of a fresh browser profile on it."""
    contexts = []

    def page() -> Any:
        context = browser.new_context(viewport=VIEWPORT, base_url=mail_stack.stack.url)
        contexts.append(context)
        return context.new_page()

    stack, sink = mail_stack.stack, mail_stack.sink
    yield SimpleNamespace(stack=stack, sink=sink, maildir=sink.maildir, page=page)
    for context in contexts:
        context.close()
    mail_stack.stack.close_clients()


def test_email_and_idle_settings_persist(mail):
    """Email level, delay and push-while-idle are saved as they change, come back after a
    reload, and follow a change made elsewhere (``preferences_updated``)."""
    stack = mail.stack
    dave = stack.user("dave", "Dave Kim")
    address = f"{dave.username}@example.test"
    _set_email(stack, dave, address)
    page = mail.page()
    seen = watch(page, stack.url)
    sign_in(page, dave.username)

    page.click("#settings-button")
    dialog = page.get_by_role("dialog", name="Email & idle")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#email-disabled")).to_be_hidden()
    expect(dialog.locator("#email-address")).to_have_text(f"Emails go to {address}.")
    expect(dialog.locator("#email-failing")).to_be_hidden()
    level = dialog.get_by_label("Email me about missed messages")
    delay = dialog.get_by_label("after", exact=True)
    push = dialog.get_by_label("Push to my devices while I'm idle")
    saved = dialog.get_by_role("status")
    defaults = _preferences(stack, dave)
    expect(level).to_have_value(defaults["email_level"])
    expect(delay).to_have_value("")
    expect(delay.locator("option:checked")).to_have_text("Server default (10 minutes)")
    expect(push).to_be_checked()

    level.select_option("all")
    expect(saved).to_have_text("Saved.")
    wait_until(lambda: _preferences(stack, dave)["email_level"] == "all", message="level")
    delay.select_option(label="30 seconds")
    wait_until(lambda: _preferences(stack, dave)["email_delay"] == 30, message="delay")
    push.uncheck()
    wait_until(lambda: _preferences(stack, dave)["push_when_idle"] is False, message="push")

    page.reload()
    expect(page.locator("#connection")).to_have_attribute("data-state", "connected")
    page.click("#settings-button")
    expect(level).to_have_value("all")
    expect(delay).to_have_value("30")
    expect(push).not_to_be_checked()

    # Set elsewhere (another device, the API): the open dialog follows, a delay it has no
    # choice for included.
    response = stack.api(
        dave, "PATCH", "/api/notifications/preferences", json={"email_delay": 5400}
    )
    assert response.status_code == 200, response.text
    expect(delay).to_have_value("5400")
    expect(delay.locator("option:checked")).to_have_text("90 minutes")

    # Never: the delay does not apply; back to the server's default delay.
    level.select_option("none")
    expect(delay).to_be_disabled()
    level.select_option("mentions")
    expect(delay).to_be_enabled()
    delay.select_option("")
    wait_until(lambda: _preferences(stack, dave)["email_delay"] is None, message="delay kept")
    prefs = _preferences(stack, dave)
    assert (prefs["email_level"], prefs["push_when_idle"]) == ("mentions", False), prefs
    assert seen.foreign_requests() == []
    assert seen.errors == []


def test_topic_email_level_beside_push_level(mail):
    """The open topic's Email select sets only ``email_level`` of its override; Default clears
    it, and the override goes when neither level is left."""
    stack = mail.stack
    erin, frank = stack.user("erin", "Erin Ross"), stack.user("frank", "Frank Li")
    topic_id, _ = _topic(stack, erin, frank)
    page = mail.page()
    seen = watch(page, stack.url)
    sign_in(page, erin.username)
    page.click(f'.topic[data-topic-id="{topic_id}"]')
    email_level = page.get_by_role("combobox", name="Email", exact=True)
    expect(email_level).to_be_visible()
    expect(email_level).to_have_value("")
    expect(email_level.locator("option:checked")).to_have_text("Default (Mentions)")

    def override() -> dict | None:
        topics = _preferences(stack, erin)["topics"]
        return next((t for t in topics if t["topic_id"] == topic_id), None)

    email_level.select_option("none")
    wait_until(lambda: (override() or {}).get("email_level") == "none", message="no override")
    assert override()["level"] is None
    page.select_option("#notify-level", "mentions")
    wait_until(lambda: (override() or {}).get("level") == "mentions", message="no push level")
    assert override()["email_level"] == "none"

    email_level.select_option("")  # Default: clears email_level, keeps the push level
    wait_until(lambda: (override() or {}).get("email_level") is None, message="email kept")
    assert override()["level"] == "mentions"
    expect(page.locator("#notify-level")).to_have_value("mentions")
    page.select_option("#notify-level", "")  # nothing left: the override is removed
    wait_until(lambda: override() is None, message="override left")
    expect(email_level).to_have_value("")
    assert seen.foreign_requests() == []
    assert seen.errors == []


# ---------------------------------------------------------------------------- Emails panel


def _deliver(maildir: Path, to: str, subject: str, sent: datetime, **parts: str) -> None:
    """Drop an email into the development mailbox, as the local SMTP sink writes it."""
    message = EmailMessage()
    message["From"] = "Beacon <beacon@beacon.test>"
    message["To"] = to
    message["Subject"] = subject
    message["Date"] = email.utils.format_datetime(sent)
    message["List-Unsubscribe"] = f"<{parts['unsubscribe']}>, <mailto:unsubscribe@beacon.test>"
    message.set_content(parts["text"])
    message.add_alternative(parts["html"], subtype="html")
    mailbox.Maildir(maildir, create=True).add(message)


def test_emails_panel_lists_the_text_parts(mail):
    """The Emails button (development mailbox) lists the user's emails, newest first: subject,
    date, the text part and the unsubscribe link; the HTML part is never rendered."""
    stack = mail.stack
    gina = stack.user("gina", "Gina Park")
    address = f"{gina.username}@example.test"
    _set_email(stack, gina, address)
    now = datetime.now(UTC)
    unsubscribe = f"{stack.url}/email/unsubscribe?t={uuid.uuid4().hex}"
    html = '<p id="html-part">Rendered <b>HTML</b></p>'
    _deliver(
        mail.maildir,
        address,
        "1 missed message in #design",
        now - timedelta(hours=1),
        text="Bob Chen in review:\n  Older one",
        html=html,
        unsubscribe=unsubscribe,
    )
    _deliver(
        mail.maildir,
        address,
        "3 missed messages in #design",
        now,
        text="Bob Chen in review:\n  Can you look at the deck?",
        html=html,
        unsubscribe=unsubscribe,
    )
    _deliver(
        mail.maildir,
        "someone-else@example.test",
        "Not for Gina",
        now,
        text="no",
        html=html,
        unsubscribe=unsubscribe,
    )

    page = mail.page()
    seen = watch(page, stack.url)
    sign_in(page, gina.username)
    button = page.locator("#emails-button")
    expect(button).to_be_visible()
    button.click()
    dialog = page.get_by_role("dialog", name="Emails")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#emails-address")).to_have_text(address)
    emails = dialog.locator(".email")
    expect(emails).to_have_count(2)
    expect(emails.locator(".email-subject")).to_have_text(
        ["3 missed messages in #design", "1 missed message in #design"]
    )
    newest = emails.first
    expect(newest.locator("pre.email-text")).to_have_text(
        "Bob Chen in review:\n  Can you look at the deck?"
    )
    expect(newest.locator(".email-meta")).to_contain_text(f"to {address}")
    link = newest.get_by_role("link", name=unsubscribe)
    expect(link).to_have_attribute("href", unsubscribe)
    expect(newest.locator(".email-unsubscribe")).to_have_count(1)  # the mailto: is not a link
    expect(dialog.locator("#html-part")).to_have_count(0)
    expect(dialog).not_to_contain_text("Rendered")

    # Refresh picks up a new one; Escape closes.
    _deliver(
        mail.maildir,
        address,
        "1 missed message in #general",
        now + timedelta(minutes=1),
        text="Carol: lunch?",
        html=html,
        unsubscribe=unsubscribe,
    )
    dialog.get_by_role("button", name="Refresh").click()
    expect(emails).to_have_count(3)
    expect(emails.first.locator(".email-subject")).to_have_text("1 missed message in #general")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert seen.foreign_requests() == []
    assert seen.errors == []


def test_missed_message_digest_reaches_the_emails_panel(mail):
    """Hana's page is hidden (idle) with the topic open; Ivan writes there: the email worker
    sends her a digest through the SMTP sink, and her Emails panel shows it (the text part
    with the message, the unsubscribe link of this server)."""
    stack, sink = mail.stack, mail.sink
    hana, ivan = stack.user("hana", "Hana Sato"), stack.user("ivan", "Ivan Petrov")
    address = f"{hana.username}@example.test"
    _set_email(stack, hana, address)
    topic_id, topic_name = _topic(stack, hana, ivan)
    response = stack.api(
        hana,
        "PATCH",
        "/api/notifications/preferences",
        json={"email_level": "all", "email_delay": 0},
    )
    assert response.status_code == 200, response.text

    page = mail.page()
    seen = watch(page, stack.url)
    sign_in(page, hana.username)
    page.click(f'.topic[data-topic-id="{topic_id}"]')
    expect(page.locator("#topic-title")).to_have_text(topic_name)
    page.evaluate(SET_VISIBILITY, True)
    wait_until(lambda: _status(stack, ivan, hana) == "idle", timeout=10, message="not idle")

    text = "The contract is signed: details in the shared folder."
    ack = stack.client(ivan).call("send_message", {"topic_id": topic_id, "message": text})
    assert ack["ok"], ack
    (sent,) = sink.wait_for(1, to=address, timeout=30)

    # Back on the page (which now reads the topic): the panel lists the digest.
    page.evaluate(SET_VISIBILITY, False)
    page.click("#emails-button")
    dialog = page.get_by_role("dialog", name="Emails")
    newest = dialog.locator(".email").first
    expect(newest.locator(".email-subject")).to_have_text(str(sent["Subject"]))
    expect(newest.locator("pre.email-text")).to_contain_text(text)
    expect(newest.locator(".email-unsubscribe a")).to_have_attribute(
        "href", re.compile("^" + re.escape(stack.url + "/"))
    )
    assert seen.foreign_requests() == []
    assert seen.errors == []
