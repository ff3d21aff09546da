"""The email channel against a real SMTP server in its own process (tests/fakes/smtp.py).

What arrives (headers, both parts, UTF-8, the unsubscribe headers passed through), SMTP's
answers as outcomes (5xx at RCPT a hard bounce, 4xx a retry, a dead server or one that stalls
past the timeout a retry for the rest of the batch), STARTTLS with login, and a wrong password.
Then the digest's wording and escaping (render.py), and the unsubscribe tokens' signatures.
"""

from __future__ import annotations

import dataclasses
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask

from config import Settings
from tests.fakes.smtp import SmtpSink, running_smtp_sink
from tests.harness.certs import make_certs
from tests.harness.ports import free_port
from tests.harness.waiting import wait_until
from webapp.delivery.channels.base import Item, Notification
from webapp.delivery.channels.email import EmailChannel
from webapp.delivery.channels.email.render import (
    DigestMessage,
    DigestTopic,
    DigestView,
    render_digest,
)
from webapp.errors import InvalidInput

pytestmark = pytest.mark.timeout(60)

UNSUBSCRIBE = "<http://127.0.0.1:5000/api/email/unsubscribe?token=" + "t" * 90 + ">"


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSink]:
    with running_smtp_sink(tmp_path_factory.mktemp("smtp-sink")) as running:
        yield running


@pytest.fixture(scope="module")
def secure_sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSink]:
    """STARTTLS with a throwaway CA's certificate, and a login required before MAIL."""
    folder = tmp_path_factory.mktemp("smtp-sink-tls")
    with running_smtp_sink(folder, tls=True, auth=("beacon", "s3cret-pass")) as running:
        yield running


@pytest.fixture(autouse=True)
def _fresh(request: pytest.FixtureRequest) -> None:
    for name in ("sink", "secure_sink"):
        if name in request.fixturenames:
            request.getfixturevalue(name).clear()


def channel_for(sink: SmtpSink, **overrides: Any) -> EmailChannel:
    env = sink.env()
    fields: dict[str, Any] = {
        "smtp_host": env["SMTP_HOST"],
        "smtp_port": int(env["SMTP_PORT"]),
        "email_from": env["EMAIL_FROM"],
        "email_link_secret": env["EMAIL_LINK_SECRET"],
        "smtp_starttls": env.get("SMTP_STARTTLS") == "1",
        "smtp_username": env.get("SMTP_USERNAME"),
        "smtp_password": env.get("SMTP_PASSWORD"),
        "smtp_timeout": 5.0,
        **overrides,
    }
    return EmailChannel.from_settings(dataclasses.replace(Settings(), **fields))


def item(address: str, subject: str = "3 new messages in general/random", **headers: str) -> Item:
    payload = {
        "subject": subject,
        "text": f"Hi {address} 🎉\nnaïve text",
        "html": "<p>Hi 🎉 <b>naïve</b></p>",
        "headers": headers,
    }
    return Item(address, Notification(payload, "normal", f"digest:{address}"))


def test_a_batch_is_delivered_over_one_connection(sink):
    channel = channel_for(sink)
    first = item(
        "alice@example.test",
        "You were mentioned: 1 new message in général/🎉",
        **{
            "Message-ID": "<digest-1@beacon.test>",
            "List-Unsubscribe": UNSUBSCRIBE,
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )
    outcomes = channel.send([first, item("bob@example.test")])

    assert [(o.status, o.kind) for o in outcomes] == [(250, "delivered")] * 2
    assert sink.connections() == 1
    (message,) = sink.wait_for(1, to="alice@example.test")
    assert message["From"] == "Beacon <beacon@localhost>"
    assert message["To"] == "alice@example.test"
    assert message["Subject"] == "You were mentioned: 1 new message in général/🎉"
    assert message["Message-ID"] == "<digest-1@beacon.test>"
    assert message["Date"] is not None
    # Not folded into an RFC 2047 encoded word: mail clients read the URL as it is.
    assert message["List-Unsubscribe"] == UNSUBSCRIBE
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.get_body(("plain",)), message.get_body(("html",))
    assert text is not None and html is not None
    assert text.get_content() == "Hi alice@example.test 🎉\nnaïve text\n"
    assert html.get_content() == "<p>Hi 🎉 <b>naïve</b></p>\n"
    assert text["Content-Transfer-Encoding"] == "quoted-printable"  # 7-bit clean

    (other,) = sink.messages(to="bob@example.test")
    assert other["Message-ID"].endswith("@localhost>")  # made when none is given


def test_a_session_sends_one_at_a_time_over_one_connection(sink):
    channel = channel_for(sink)
    with channel.session() as session:
        first = session.send(item("ann@example.test"))
        # The first is stored before the second is even built: a caller books it at once.
        assert first.kind == "delivered" and len(sink.wait_for(1)) == 1
        assert session.send(item("bob@example.test")).kind == "delivered"
    assert sink.connections() == 1 and len(sink.messages()) == 2
    dead = channel_for(sink, smtp_port=free_port())
    with dead.session() as session:
        failed = session.send(item("ann@example.test"))
        assert failed.kind == "retry"
        assert session.send(item("bob@example.test")) == failed  # not tried again


def test_a_refused_address_is_a_hard_bounce_and_the_batch_goes_on(sink):
    sink.refuse("gone@example.test", 550, "5.1.1 No such user")
    outcomes = channel_for(sink).send([item("gone@example.test"), item("carol@example.test")])

    gone, carol = outcomes
    assert (gone.status, gone.kind) == (550, "expired")
    assert gone.reason == "the mail server refused the address: 550 5.1.1 No such user"
    assert (carol.status, carol.kind) == (250, "delivered")
    assert sink.messages(to="gone@example.test") == []
    assert len(sink.wait_for(1, to="carol@example.test")) == 1


def test_a_temporary_refusal_is_retried(sink):
    sink.refuse("busy@example.test", 450, "4.2.1 Mailbox busy", times=1)
    channel = channel_for(sink)

    (busy,) = channel.send([item("busy@example.test")])
    assert (busy.status, busy.kind) == (450, "retry")
    assert "450" in busy.reason and len(busy.reason) <= 300
    assert sink.messages() == []
    # The refusal was for one attempt: the retry goes through.
    assert channel.send([item("busy@example.test")])[0].kind == "delivered"


def test_a_server_that_does_not_answer_leaves_every_item_to_retry():
    channel = EmailChannel("127.0.0.1", free_port(), sender="Beacon <b@localhost>", timeout=2)
    outcomes = channel.send([item("a@example.test"), item("b@example.test")])
    assert [o.kind for o in outcomes] == ["retry", "retry"]
    assert outcomes[0].reason.startswith("network error (ConnectionRefusedError)")


def test_a_header_with_a_line_break_is_refused_alone(sink):
    bad = item("dave@example.test", **{"X-Note": "a\r\nBcc: eve@example.test"})
    own = item("dave@example.test", **{"From": "Someone Else <x@example.test>"})
    outcomes = channel_for(sink).send([bad, own, item("erin@example.test")])
    assert [o.kind for o in outcomes] == ["rejected", "rejected", "delivered"]
    assert all(o.reason.startswith("invalid email") for o in outcomes[:2])
    assert len(sink.wait_for(1)) == 1


def test_a_send_held_past_the_timeout_is_retried(sink):
    """The sink holds the end of DATA: the channel gives up after SMTP_TIMEOUT (a retry, the
    server may still deliver it: SMTP has no way to tell), the rest of the batch too."""
    sink.stall()
    channel = channel_for(sink, smtp_timeout=1.0)
    result: list[Any] = []
    sender = threading.Thread(
        target=lambda: result.extend(channel.send([item("f@example.test"), item("g@x.test")]))
    )
    sender.start()
    wait_until(lambda: sink.stalled() == 1, timeout=10, message="no DATA held")
    sender.join(10)
    assert [o.kind for o in result] == ["retry", "retry"]
    assert "timed out" in result[0].reason
    sink.release()  # the server had the whole message: it delivers it now
    assert [m["To"] for m in sink.wait_for(1)] == ["f@example.test"]
    assert sink.stalled() == 0


def test_starttls_and_login(secure_sink, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(secure_sink.ca_file))  # tls_context() reads it
    (outcome,) = channel_for(secure_sink).send([item("tls@example.test")])
    assert (outcome.status, outcome.kind) == (250, "delivered")
    assert len(secure_sink.wait_for(1, to="tls@example.test")) == 1


def test_a_wrong_password_is_rejected_without_the_password(secure_sink, monkeypatch):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(secure_sink.ca_file))
    channel = channel_for(secure_sink, smtp_password="not-the-password")
    outcomes = channel.send([item("a@example.test"), item("b@example.test")])
    assert [(o.status, o.kind) for o in outcomes] == [(535, "rejected")] * 2
    assert "SMTP_PASSWORD" in outcomes[0].reason
    assert "not-the-password" not in outcomes[0].reason
    assert secure_sink.messages() == []


def test_an_untrusted_certificate_is_a_network_failure(secure_sink, monkeypatch, tmp_path):
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(make_certs(tmp_path)["ca"]))  # another CA
    (outcome,) = channel_for(secure_sink).send([item("a@example.test")])
    assert outcome.kind == "retry" and "CERTIFICATE_VERIFY_FAILED" in outcome.reason


# -- the digest's wording ----------------------------------------------------------------------
def _message(body: str, minute: int = 0, mentioned: bool = False) -> DigestMessage:
    return DigestMessage("Bob <b>", body, datetime(2026, 3, 1, 9, minute), mentioned)


def _view(*topics: DigestTopic, total: int, shown: int) -> DigestView:
    return DigestView(
        recipient_name="Alice",
        topics=list(topics),
        total=total,
        shown=shown,
        unsubscribe_url="http://beacon.test/api/email/unsubscribe?token=abc.def",
        preferences_url="http://beacon.test/?preferences=1",
    )


def test_the_digest_escapes_html_and_shows_what_is_left_out():
    topic = DigestTopic(
        "general",
        "random",
        "http://beacon.test/?room=r&topic=t",
        [_message("<script>alert(1)</script>  and\n\nmore", 5), _message("x" * 500, 6)],
        more=3,
    )
    payload = render_digest(_view(topic, total=5, shown=2))

    assert payload["subject"] == "5 new messages in general/random"
    html, text = payload["html"], payload["text"]
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt; and more" in html
    assert "Bob &lt;b&gt;" in html
    assert 'href="http://beacon.test/?room=r&amp;topic=t"' in html
    assert "and 3 more" in html and "and 3 more" in text
    assert "Bob <b> (2026-03-01 09:05 UTC): <script>alert(1)</script> and more" in text
    assert "x" * 299 + "…" in text and "x" * 300 not in text  # cut at 300 characters
    assert "Hi Alice," in text and "Hi Alice," in html
    for body in (text, html):
        assert "http://beacon.test/api/email/unsubscribe?token=abc.def" in body
        assert "http://beacon.test/?preferences=1" in body
        assert "You get these emails because you missed messages on Beacon." in body
    assert text.index("general / random") < text.index("09:05") < text.index("and 3 more")


def test_the_subject_counts_messages_and_topics_and_names_mentions():
    one = DigestTopic("general", "random", "http://t/1", [_message("hi")], more=0)
    assert render_digest(_view(one, total=1, shown=1))["subject"] == (
        "1 new message in general/random"
    )
    other = DigestTopic("dev", "ci", "http://t/2", [_message("hey", mentioned=True)], more=1)
    third = DigestTopic("dev", "ops", "http://t/3", [_message("yo")], more=0)
    subject = render_digest(_view(one, other, third, total=5, shown=3))["subject"]
    assert subject == "You were mentioned: 5 new messages in 3 topics"
    sneaky = DigestTopic("a\r\nBcc: x", "b", "http://t/4", [_message("m")], more=0)
    assert render_digest(_view(sneaky, total=1, shown=1))["subject"] == (
        "1 new message in a Bcc: x/b"
    )


# -- unsubscribe tokens --------------------------------------------------------------------------
def _app(secret: str | None) -> Flask:
    app = Flask(__name__)
    settings = Settings(email_link_secret=secret, app_base_url="https://beacon.test")
    app.extensions["beacon_settings"] = settings
    return app


def test_an_unsubscribe_token_names_its_user():
    from webapp.delivery.unsubscribe import token_for, unsubscribe_url, user_from_token

    user_id = uuid.uuid4()
    with _app("secret-one").app_context():
        token = token_for(user_id)
        assert user_from_token(token) == user_id
        assert unsubscribe_url(user_id) == (
            f"https://beacon.test/api/email/unsubscribe?token={token}"
        )


@pytest.mark.parametrize("change", ["tamper", "other_secret", "empty", "not_a_uuid", "no_secret"])
def test_a_bad_unsubscribe_token_is_invalid(change):
    from itsdangerous import URLSafeSerializer

    from webapp.delivery.unsubscribe import SALT, token_for, user_from_token

    with _app("secret-one").app_context():
        token = token_for(uuid.uuid4())
    payload, _, signature = token.rpartition(".")
    bad = {
        "tamper": f"{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}",
        "other_secret": token,
        "empty": "",
        "not_a_uuid": URLSafeSerializer("secret-one", salt=SALT).dumps("alice"),
        "no_secret": token,
    }[change]
    secret = {"other_secret": "secret-two", "no_secret": None}.get(change, "secret-one")
    with _app(secret).app_context(), pytest.raises(InvalidInput) as refused:
        user_from_token(bad)
    assert refused.value.code == "invalid_token"
    assert refused.value.message == "this unsubscribe link is not valid"


def test_a_token_is_not_valid_across_salts():
    """Something else the app signs with the same secret is no unsubscribe token."""
    from itsdangerous import URLSafeSerializer

    from webapp.delivery.unsubscribe import user_from_token

    forged = URLSafeSerializer("secret-one", salt="something-else").dumps(str(uuid.uuid4()))
    with _app("secret-one").app_context(), pytest.raises(InvalidInput):
        user_from_token(forged)


def test_a_message_date_is_shown_in_utc():
    aware = DigestMessage("Bob", "hi", datetime(2026, 3, 1, 9, 0, tzinfo=UTC), False)
    topic = DigestTopic("general", "random", "http://t/1", [aware], more=0)
    assert "(2026-03-01 09:00 UTC)" in render_digest(_view(topic, total=1, shown=1))["text"]


def test_the_sink_writes_nothing_until_data_is_complete(sink):
    """A client that dies in the middle of DATA leaves nothing in the Maildir."""
    import socket

    with socket.create_connection((sink.host, sink.port), timeout=5) as raw:
        reader = raw.makefile("rb")
        reader.readline()  # greeting
        for line in (b"EHLO test", b"MAIL FROM:<a@b.test>", b"RCPT TO:<c@d.test>", b"DATA"):
            raw.sendall(line + b"\r\n")
            while True:
                answer = reader.readline()
                if answer[3:4] != b"-":
                    break
        raw.sendall(b"Subject: half\r\n\r\nsome of the body\r\n")
    assert channel_for(sink).send([item("whole@example.test")])[0].kind == "delivered"
    assert [m["To"] for m in sink.wait_for(1)] == ["whole@example.test"]
    assert sink.connections() == 2
