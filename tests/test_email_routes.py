"""The unsubscribe link's routes and the development mailbox, on a running web process.

A stack of its own (web only: these routes need no worker) with email configured towards an
SMTP sink, whose Maildir is the stack's ``DEV_MAILBOX``. ``GET`` of the link changes nothing,
``POST`` (RFC 8058 one-click, or the page's button) turns the user's emails off, and a bad
link is a 400 page; ``/api/demo/emails`` shows the caller's emails from the Maildir.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests
from flask import Flask

from config import Settings, load_settings
from tests.conftest import Stack, base_env, shared_services_stack
from tests.fakes.smtp import SmtpSink, running_smtp_sink
from tests.harness.ports import free_port
from webapp.delivery.channels.base import Item, Notification
from webapp.delivery.channels.email import EmailChannel

if TYPE_CHECKING:
    from tests.conftest import TestUser

pytestmark = pytest.mark.timeout(120)

CONFIRM = "Stop missed-message emails from Beacon?"
DONE = "You will get no more of these emails. You can turn them back on in your notification"
INVALID = "This unsubscribe link is not valid"


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSink]:
    with running_smtp_sink(tmp_path_factory.mktemp("email-routes-sink")) as running:
        yield running


@pytest.fixture(scope="module")
def email_stack(backend: str, request: pytest.FixtureRequest, sink: SmtpSink) -> Iterator[Stack]:
    if backend != "sqlite":
        pytest.skip("routes over a signed link: one backend is enough (the digests run on both)")
    with shared_services_stack(
        request,
        backend,
        f"beacon_email_routes_{backend}",
        name=f"email-{backend}",
        workers={},
        DEV_MAILBOX=str(sink.maildir),
        **sink.env(),
    ) as stack:
        yield stack


@pytest.fixture
def beacon(email_stack: Stack) -> Iterator[Stack]:
    yield email_stack
    email_stack.close_clients()


def _token(beacon: Stack, user_id: str | uuid.UUID) -> str:
    from webapp.delivery.unsubscribe import token_for

    with beacon.app.app_context():
        return token_for(uuid.UUID(str(user_id)))


def _email_level(beacon: Stack, user: TestUser) -> str | None:
    from webapp.extensions import db
    from webapp.models import NotificationSettings

    with beacon.app.app_context():
        row = db.session.get(NotificationSettings, uuid.UUID(user.id))
        return None if row is None else row.email_level


def _set_user(beacon: Stack, user: TestUser, **fields: object) -> None:
    from webapp.extensions import db
    from webapp.models import User

    with beacon.app.app_context():
        row = db.session.get(User, uuid.UUID(user.id))
        for name, value in fields.items():
            setattr(row, name, value)
        db.session.commit()


def _is_page(response: requests.Response, status: int, text: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("text/html")
    assert text in response.text
    assert "<script" not in response.text
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Referrer-Policy"] == "no-referrer"


def test_the_link_asks_first_and_the_button_unsubscribes(beacon):
    user = beacon.user("reader")
    url = f"{beacon.url}/api/email/unsubscribe?token={_token(beacon, user.id)}"

    page = requests.get(url, timeout=10)
    _is_page(page, 200, CONFIRM)
    assert '<form method="post">' in page.text
    assert _email_level(beacon, user) is None  # a GET (a mail scanner's) changes nothing

    # The page's button posts its own form to the same URL.
    done = requests.post(url, data={"List-Unsubscribe": "One-Click"}, timeout=10)
    _is_page(done, 200, DONE)
    assert _email_level(beacon, user) == "none"


def test_one_click_unsubscribe_from_a_mail_client(beacon):
    """RFC 8058: a POST with ``List-Unsubscribe=One-Click``, form-encoded, and no cookie."""
    user = beacon.user("oneclick")
    response = requests.post(
        f"{beacon.url}/api/email/unsubscribe",
        params={"token": _token(beacon, user.id)},
        data="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    _is_page(response, 200, DONE)
    assert _email_level(beacon, user) == "none"
    # Again (a second click, a retry): the same answer.
    again = requests.post(
        f"{beacon.url}/api/email/unsubscribe?token={_token(beacon, user.id)}", timeout=10
    )
    _is_page(again, 200, DONE)


def test_a_user_who_is_gone_gets_the_same_answer(beacon):
    deleted = beacon.user("deleted")
    _set_user(beacon, deleted, deleted_at=datetime.now(UTC))
    for user_id in (deleted.id, uuid.uuid4()):
        url = f"{beacon.url}/api/email/unsubscribe?token={_token(beacon, user_id)}"
        _is_page(requests.get(url, timeout=10), 200, CONFIRM)
        _is_page(requests.post(url, timeout=10), 200, DONE)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_bad_link_is_refused_with_a_page(beacon, method):
    user = beacon.user("victim")
    good = _token(beacon, user.id)
    payload, _, signature = good.rpartition(".")
    app = Flask(__name__)
    app.extensions["beacon_settings"] = Settings(email_link_secret="another-secret")
    with app.app_context():
        from webapp.delivery.unsubscribe import token_for

        foreign = token_for(uuid.UUID(user.id))
    for query in (
        "",
        "?token=",
        f"?token={payload}.{signature[::-1]}",
        f"?token={payload[:-3]}.{signature}",
        f"?token={foreign}",
        "?token=" + "x" * 5000,
    ):
        response = requests.request(
            method, f"{beacon.url}/api/email/unsubscribe{query}", timeout=10
        )
        _is_page(response, 400, INVALID)
    assert _email_level(beacon, user) is None


# -- the development mailbox --------------------------------------------------------------------
def _send(sink: SmtpSink, address: str, subject: str) -> None:
    env = sink.env()
    channel = EmailChannel(env["SMTP_HOST"], int(env["SMTP_PORT"]), sender=env["EMAIL_FROM"])
    payload = {
        "subject": subject,
        "text": f"{subject} 🎉",
        "html": f"<p>{subject}</p>",
        "headers": {"List-Unsubscribe": "<http://beacon.test/u?token=abc>"},
    }
    (outcome,) = channel.send([Item(address, Notification(payload, "normal", "digest"))])
    assert outcome.kind == "delivered", outcome


def test_the_dev_mailbox_shows_the_callers_emails_newest_first(beacon, sink):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    address = f"{alice.username}@example.test"
    _set_user(beacon, alice, email=address)
    for n in range(12):
        _send(sink, address.upper() if n == 11 else address, f"digest {n}")
    _send(sink, "someone-else@example.test", "not yours")

    answer = beacon.api(alice, "GET", "/api/demo/emails")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["address"] == address
    emails = body["emails"]
    assert [e["subject"] for e in emails] == [f"digest {n}" for n in range(11, 1, -1)]
    latest = emails[0]
    assert latest["from"] == "Beacon <beacon@localhost>"
    assert latest["to"] == address.upper()
    assert latest["text"] == "digest 11 🎉\n" and latest["html"] == "<p>digest 11</p>\n"
    assert latest["list_unsubscribe"] == "<http://beacon.test/u?token=abc>"
    assert latest["date"].endswith("+00:00")

    # No email address: nothing to show; no token: refused.
    assert beacon.api(bob, "GET", "/api/demo/emails").json() == {"emails": [], "address": None}
    refused = beacon.api(None, "GET", "/api/demo/emails")
    assert refused.status_code == 401 and refused.json()["error"] == "missing_token"


def test_the_dev_mailbox_is_off_without_dev_login_or_a_mailbox(tmp_path: Path):
    """In-process apps (no stack needed): 404 unless DEV_LOGIN and DEV_MAILBOX are both set;
    a Maildir that does not exist yet holds no emails."""
    from webapp import create_app
    from webapp.auth import issue_token
    from webapp.extensions import db
    from webapp.models import User

    env = base_env(f"sqlite:///{tmp_path / 'beacon.db'}", f"redis://127.0.0.1:{free_port()}/0")
    base = load_settings(env)
    for dev_login, mailbox, status in (
        (False, str(tmp_path / "maildir"), 404),
        (True, None, 404),
        (True, str(tmp_path / "maildir"), 200),
    ):
        app = create_app(
            dataclasses.replace(base, dev_login=dev_login, dev_mailbox=mailbox),
            serve_sockets=False,
        )
        with app.app_context():
            db.create_all()
            user = User(username=f"u-{uuid.uuid4().hex[:6]}", email="u@example.test")
            db.session.add(user)
            db.session.commit()
            token = issue_token(base, user.id)
            response = app.test_client().get(
                "/api/demo/emails", headers={"Authorization": f"Bearer {token}"}
            )
            assert response.status_code == status, (dev_login, mailbox, response.json)
            if status == 200:
                assert response.json == {"emails": [], "address": "u@example.test"}
            db.session.remove()
