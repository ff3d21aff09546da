"""Missed-message email end to end: a real SMTP server process (tests/fakes/smtp.py), the
``email`` worker, beat's sweep, and the messages, reads and preferences that decide a digest.

One stack for the module: email on, a 2-second default delay, a quick sweep, no coalescing,
and a short visibility timeout so that a killed worker's task comes back soon. Each test makes
its own users (with their own addresses).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import requests
from sqlalchemy import func, select

from tests.conftest import DEFAULT_WORKERS, Stack, shared_services_stack
from tests.fakes.smtp import SmtpSink, running_smtp_sink
from tests.harness.waiting import wait_until
from tests.push_helpers import fanout_done

PREFS = "/api/notifications/preferences"
EMAIL_WORKER = ("email", "-P", "gevent", "-c", "5")


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmtpSink]:
    with running_smtp_sink(tmp_path_factory.mktemp("smtp")) as server:
        yield server


@pytest.fixture(scope="module")
def email_stack(backend: str, request: pytest.FixtureRequest, sink: SmtpSink) -> Iterator[Stack]:
    with shared_services_stack(
        request,
        backend,
        f"beacon_email_{backend}",
        name=f"email-{backend}",
        workers={**DEFAULT_WORKERS, "email": EMAIL_WORKER},
        EMAIL_DELAY="2",
        EMAIL_SWEEP_INTERVAL="0.5",
        EMAIL_BOUNCE_LIMIT="2",
        SMTP_TIMEOUT="1",
        PUSH_COALESCE_WINDOW="0",
        PUSH_RETRY_BASE="0.2",
        PUSH_RETRY_MAX="1",
        PUSH_REQUEST_TIMEOUT="2",
        DB_RETRY_BACKOFF_MAX="2",
        WEBHOOK_TIMEOUT="2",
        BROKER_VISIBILITY_TIMEOUT="4",
        **sink.env(),
    ) as stack:
        stack.start_beat()
        yield stack


@pytest.fixture
def beacon(email_stack: Stack, sink: SmtpSink) -> Iterator[Stack]:
    yield email_stack
    email_stack.close_clients()
    sink.clear()


def _one_backend(beacon: Stack) -> None:
    """For cases whose database work the other tests here already run on both backends."""
    if beacon.backend != "sqlite":
        pytest.skip("no database work of its own: one backend is enough")


def _person(beacon: Stack, name: str, **prefs):
    user = beacon.user(name)
    address = f"{user.username}@example.test"
    assert beacon.cli("set-email", user.username, address) == address
    if prefs:
        response = beacon.api(user, "PATCH", PREFS, json=prefs)
        assert response.status_code == 200, response.text
    return user, address


def _send(beacon: Stack, client, topic, text: str) -> int:
    ack = client.call("send_message", topic.ref(message=text))
    assert ack["ok"], ack
    return ack["message"]["id"]


def _metric(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def _text(message) -> str:
    return message.get_body(preferencelist=("plain",)).get_content()


def _digests(beacon: Stack, user) -> list:
    from webapp.extensions import db
    from webapp.models import EmailDigest

    with beacon.app.app_context():
        rows = db.session.execute(
            select(EmailDigest)
            .where(EmailDigest.user_id == uuid.UUID(user.id))
            .order_by(EmailDigest.created_at)
        ).scalars()
        return [(d.state, d.attempts, d.message_ids) for d in rows]


def _held(beacon: Stack, user) -> int:
    from webapp.extensions import db
    from webapp.models import PendingEmail

    with beacon.app.app_context():
        return db.session.execute(
            select(func.count()).where(PendingEmail.user_id == uuid.UUID(user.id))
        ).scalar_one()


def test_one_digest_with_every_missed_message_after_the_delay(beacon, sink):
    alice, _ = _person(beacon, "alice")
    bob, address = _person(beacon, "bob", email_level="all")
    general, launch = beacon.topic(alice, bob), beacon.topic(alice, bob)
    writer = beacon.client(alice)
    sent = [_send(beacon, writer, general, f"general {i} <b>") for i in range(3)]
    sent.append(_send(beacon, writer, launch, f"@{bob.username} launch at noon"))
    before = datetime.now(UTC)

    (mail,) = sink.wait_for(1, to=address)
    assert datetime.now(UTC) - before >= timedelta(seconds=1)  # waited for the delay
    assert mail["Subject"].startswith("You were mentioned")
    text = _text(mail)
    for i in range(3):
        assert f"general {i} <b>" in text
    assert "launch at noon" in text
    assert text.index("general 0") < text.index("general 2")  # newest last
    assert f"?topic={general.topic_id}" in text and f"?topic={launch.topic_id}" in text
    html = mail.get_body(preferencelist=("html",)).get_content()
    assert "general 0 &lt;b&gt;" in html
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    wait_until(lambda: _digests(beacon, bob) and _digests(beacon, bob)[0][0] == "sent")
    ((state, attempts, ids),) = _digests(beacon, bob)
    assert (state, attempts) == ("sent", 1) and ids.split() == [str(i) for i in sent]

    # Sent once: the next digest has only what came after.
    later = _send(beacon, writer, general, "one more")
    mails = sink.wait_for(2, to=address)
    assert "one more" in _text(mails[1]) and "general 0" not in _text(mails[1])
    assert [d[2] for d in _digests(beacon, bob)][1] == str(later)
    assert len(sink.messages(to=address)) == 2
    metrics = requests.get(beacon.url + "/metrics", timeout=10).text
    assert _metric(metrics, 'beacon_email_digests_total{outcome="sent"}') >= 2
    assert 'beacon_queue_depth{queue="email"}' in metrics


def test_mentions_only_by_default_and_nothing_for_members_who_are_active(beacon, sink):
    _one_backend(beacon)
    alice, _ = _person(beacon, "alice")
    bob, bob_address = _person(beacon, "bob")  # default level: mentions
    carol, carol_address = _person(beacon, "carol", email_level="all")
    topic = beacon.topic(alice, bob, carol)
    carol_tab = beacon.client(carol)  # active: she sees it live
    writer = beacon.client(alice)
    _send(beacon, writer, topic, "no mention here")
    mention = _send(beacon, writer, topic, f"ping @{bob.username}")
    fanout_done(beacon, mention, 0)

    (mail,) = sink.wait_for(1, to=bob_address)
    assert "ping @" in _text(mail) and "no mention here" not in _text(mail)
    assert _held(beacon, carol) == 0 and _digests(beacon, carol) == []
    assert sink.messages(to=carol_address) == []
    carol_tab.disconnect()


def test_an_idle_member_gets_the_digest(beacon, sink):
    _one_backend(beacon)
    alice, _ = _person(beacon, "alice")
    bob, address = _person(beacon, "bob", email_level="all")
    topic = beacon.topic(alice, bob)
    tab = beacon.client(bob)
    assert tab.call("join_topic", topic.ref())["ok"]
    assert tab.call("set_presence", {"state": "idle"})["status"] == "idle"
    _send(beacon, beacon.client(alice), topic, "are you there?")
    (mail,) = sink.wait_for(1, to=address)
    assert "are you there?" in _text(mail)


def test_reading_in_time_cancels_the_digest(beacon, sink):
    alice, _ = _person(beacon, "alice")
    bob, address = _person(beacon, "bob", email_level="all", email_delay=3)
    topic, other = beacon.topic(alice, bob), beacon.topic(alice, bob)
    writer = beacon.client(alice)
    read_here = _send(beacon, writer, topic, "read in time")
    kept = _send(beacon, writer, other, "still unread")
    fanout_done(beacon, kept, 0)
    assert _held(beacon, bob) == 2
    phone = beacon.client(bob)
    assert phone.call("mark_as_read", topic.ref(message_ids=[read_here]))["ok"]
    phone.disconnect()

    (mail,) = sink.wait_for(1, to=address)
    assert "still unread" in _text(mail) and "read in time" not in _text(mail)

    # Everything read before the delay ends: no email at all.
    third = _send(beacon, writer, topic, "read this one too")
    fanout_done(beacon, third, 0)
    phone = beacon.client(bob)
    assert phone.call("mark_as_read", topic.ref(message_ids=[third]))["ok"]
    wait_until(lambda: _held(beacon, bob) == 0, timeout=15, message="the digest was not taken")
    assert len(sink.messages(to=address)) == 1
    assert len(_digests(beacon, bob)) == 1


def test_the_unsubscribe_link_works_without_signing_in(beacon, sink):
    _one_backend(beacon)
    alice, _ = _person(beacon, "alice")
    bob, address = _person(beacon, "bob", email_level="all")
    topic = beacon.topic(alice, bob)
    beacon.api(bob, "PUT", f"{PREFS}/topics/{topic.topic_id}", json={"email_level": "all"})
    _send(beacon, beacon.client(alice), topic, "hello")
    (mail,) = sink.wait_for(1, to=address)
    url = mail["List-Unsubscribe"].strip("<>")
    assert url.startswith(beacon.url + "/api/email/unsubscribe?token=")

    # Looking at the link changes nothing (mail scanners open links).
    page = requests.get(url, timeout=10)
    assert page.status_code == 200 and "<form" in page.text
    assert beacon.api(bob, "GET", PREFS).json()["email_level"] == "all"
    # RFC 8058 one-click: a POST with no credentials but the signed link.
    done = requests.post(url, data={"List-Unsubscribe": "One-Click"}, timeout=10)
    assert done.status_code == 200
    prefs = beacon.api(bob, "GET", PREFS).json()
    assert prefs["email_level"] == "none"
    assert prefs["topics"] == []  # the topic's email override is gone too
    tampered = requests.post(url[:-3] + "xyz", timeout=10)
    assert tampered.status_code == 400

    last = _send(beacon, beacon.client(alice), topic, f"@{bob.username} after unsubscribing")
    fanout_done(beacon, last, 0)
    assert _held(beacon, bob) == 0 and len(sink.messages(to=address)) == 1


def test_do_not_disturb_holds_the_digest_until_it_ends(beacon, sink):
    alice, _ = _person(beacon, "alice")
    bob, address = _person(beacon, "bob", email_level="all", email_delay=0)
    topic = beacon.topic(alice, bob)
    until = datetime.now(UTC) + timedelta(seconds=3)
    snooze = beacon.api(bob, "PATCH", PREFS, json={"snooze_until": until.isoformat()})
    assert snooze.status_code == 200
    _send(beacon, beacon.client(alice), topic, "during the snooze")
    (mail,) = sink.wait_for(1, to=address, timeout=30)
    assert datetime.now(UTC) >= until - timedelta(seconds=1)
    assert "during the snooze" in _text(mail)


def test_a_refused_address_is_marked_failing_after_the_bound(beacon, sink):
    alice, _ = _person(beacon, "alice")
    bob, address = _person(beacon, "bob", email_level="all", email_delay=0)
    topic = beacon.topic(alice, bob)
    sink.refuse(address, 550)
    writer = beacon.client(alice)
    for attempt in (1, 2):  # EMAIL_BOUNCE_LIMIT=2
        _send(beacon, writer, topic, f"bounce {attempt}")
        wait_until(
            lambda n=attempt: [d[0] for d in _digests(beacon, bob)] == ["bounced"] * n,
            timeout=20,
            message=f"digest {attempt} did not bounce",
        )
    email = beacon.api(bob, "GET", PREFS).json()["email"]
    assert email["address"] == address and email["failing"] is True
    assert email["failing_since"] is not None
    # No more digests for a failing address; a new address starts clean.
    fanout_done(beacon, _send(beacon, writer, topic, "not mailed"), 0)
    assert _held(beacon, bob) == 0
    new_address = f"new-{address}"
    beacon.cli("set-email", bob.username, new_address)
    assert beacon.api(bob, "GET", PREFS).json()["email"]["failing"] is False
    _send(beacon, writer, topic, "to the new address")
    (mail,) = sink.wait_for(1, to=new_address)
    assert "to the new address" in _text(mail) and "not mailed" not in _text(mail)


def test_a_digest_is_sent_once_when_the_worker_dies_mid_send(beacon, sink):
    alice, _ = _person(beacon, "alice")
    bob, address = _person(beacon, "bob", email_level="all")
    topic = beacon.topic(alice, bob)
    sink.stall()
    _send(beacon, beacon.client(alice), topic, "worth one email")
    wait_until(lambda: sink.stalled() == 1, timeout=20, message="no send reached DATA")
    beacon.workers["email"].kill()  # mid-send: the message is written, not yet accepted
    sink.release(accept=False)  # the server never said 250: nothing was delivered
    assert sink.messages(to=address) == []
    try:
        beacon.start_worker("email-2", *EMAIL_WORKER)
        (mail,) = sink.wait_for(1, to=address, timeout=60)
        assert "worth one email" in _text(mail)
        wait_until(lambda: [d[0] for d in _digests(beacon, bob)] == ["sent"], timeout=20)
        ((_, attempts, _),) = _digests(beacon, bob)
        assert attempts == 2  # the same digest, sent again: not a second one
        assert len(sink.messages(to=address)) == 1
    finally:
        beacon.extra.pop("email-2").stop()
        beacon.start_worker("email", *EMAIL_WORKER)
        beacon.workers["email"] = beacon.extra.pop("email")


def test_digests_older_than_the_history_are_pruned(beacon, sink):
    from sqlalchemy import update

    from webapp.delivery import digests
    from webapp.extensions import db
    from webapp.models import EmailDigest

    alice, _ = _person(beacon, "alice")
    bob, address = _person(beacon, "bob", email_level="all")
    topic = beacon.topic(alice, bob)
    _send(beacon, beacon.client(alice), topic, "old news")
    sink.wait_for(1, to=address)
    wait_until(lambda: [d[0] for d in _digests(beacon, bob)] == ["sent"])
    with beacon.app.app_context():
        db.session.execute(
            update(EmailDigest)
            .where(EmailDigest.user_id == uuid.UUID(bob.id))
            .values(created_at=datetime.now(UTC) - timedelta(days=31))
        )
        db.session.commit()
        assert digests.prune() >= 1
    assert _digests(beacon, bob) == []


def test_the_cli_refuses_an_address_that_would_name_other_recipients(beacon):
    _one_backend(beacon)
    bob = beacon.user("bob")
    for bad in ("a,b@example.test", "<x@example.test>", "x@localhost", '"x"@example.test'):
        with pytest.raises(AssertionError, match="email must be an address"):
            beacon.cli("set-email", bob.username, bad)
    assert beacon.cli("set-email", bob.username) == "-"
