"""What a push may carry and to whom: a push is for its recipient only (never for whoever
holds the browser now), its text always fits the 4 KiB record, and what the network said about
a refused endpoint stays in the server's log, not in the user's history."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest

from tests.harness.processes import wait_log_contains
from tests.harness.waiting import wait_until
from tests.push_helpers import delivered as _delivered
from tests.push_helpers import send as _send
from tests.push_helpers import subscribe as _subscribe
from webapp.delivery.channels.base import Item, Notification
from webapp.delivery.channels.webpush import WebPushChannel
from webapp.delivery.channels.webpush.sender import PushSender
from webapp.delivery.channels.webpush.subscription import SubscriptionKeys
from webapp.platform.text import graphemes

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # one grapheme


def test_emoji_names_and_previews_are_pushed_whole(beacon, reliability):
    """In UTF-8 an emoji costs 4 bytes, not the 12 of its JSON escape: a mention with a long
    emoji name and an emoji message fits the 4 KiB record and is delivered, cut between
    grapheme clusters only (it used to be refused, and counted against the device)."""
    alice = beacon.user("alice", "\U0001f600" * 128)
    bob = beacon.user("bob")
    topic = beacon.topic(alice, bob)
    sub, _row = _subscribe(beacon, bob)
    text = f"@{bob.username} " + FAMILY * 150
    _send(beacon, alice, topic, text)
    (payload,) = _delivered(beacon, sub)
    assert payload["type"] == "mention"
    assert payload["title"].startswith("\U0001f600" * 128 + " mentioned you in ")
    # The preview: 99 whole graphemes of the message, then the ellipsis.
    assert payload["body"] == "".join(graphemes(text)[:99]) + "\u2026"
    history = beacon.api(bob, "GET", "/api/notifications/history").json()["pushes"]
    assert [p["outcome"] for p in history] == ["delivered"]
    reliability.record(
        "input",
        "a mention with a 128-emoji sender name and 150 family emoji (ZWJ sequences)",
        expected="delivered, in UTF-8, preview cut between graphemes",
        observed={"delivered": 1},
    )


def test_a_retry_never_reaches_a_browser_that_moved_to_another_account(beacon, reliability):
    """Bob's push is waiting for its retry when his browser signs in as Carol (same endpoint
    and keys: the subscription moves to her). The retry must not show Bob's message to Carol,
    nor land in her history."""
    alice, bob, carol = beacon.user("alice"), beacon.user("bob"), beacon.user("carol")
    topic = beacon.topic(alice, bob)
    sub, row = _subscribe(beacon, bob)
    # Retry-After (capped at PUSH_RETRY_MAX) keeps each retry a full backoff away.
    beacon.push.set_behaviour(sub, sticky={"status": 503, "retry_after": 30})
    message_id = _send(beacon, alice, topic, "for bob's eyes only")
    wait_until(lambda: beacon.push.attempts(sub) >= 1, message="the first attempt never came")
    body = {"endpoint": sub["endpoint"], "expirationTime": None, "keys": sub["keys"]}
    moved = beacon.api(carol, "POST", "/api/notifications/subscribe", json=body)
    assert moved.status_code in (200, 201) and moved.json()["id"] == row["id"], moved.text
    beacon.push.set_behaviour(sub)  # the browser would now accept pushes
    wait_log_contains(
        beacon.workers["push"],
        f"push skipped subscription={row['id']} message={message_id}: it changed owner",
        timeout=20,
    )
    assert beacon.push.messages(sub) == []
    assert beacon.api(carol, "GET", "/api/notifications/history").json()["pushes"] == []
    reliability.record(
        "input",
        "a push retrying for Bob after his browser moved to Carol's account",
        expected="not sent; nothing in Carol's history",
        observed={"skipped (owner changed)": 1},
    )


def test_refused_hosts_leave_no_network_facts_in_the_reason(
    vapid_keys, monkeypatch: pytest.MonkeyPatch, caplog, reliability
) -> None:
    """What DNS answered (an internal address, a resolver error) goes to the server log; the
    outcome's reason, which the user reads in their push history, is generic. (DNS answers
    cannot be made here without a resolver: getaddrinfo is replaced.)"""
    keys = {"p256dh": "B" + "A" * 86, "auth": "A" * 22}  # never used: refused before sending

    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> list[tuple]:
        if host == "push.internal-dns.example":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.20.30.40", 8443))]
        raise socket.gaierror(-2, "Name or service not known: resolver 10.0.0.53 said so")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    note = Notification({"type": "message", "title": "t", "body": "b"}, "normal", "topic")
    items = [
        Item(SubscriptionKeys(url, keys["p256dh"], keys["auth"]), note)
        for url in (
            "https://push.internal-dns.example:8443/push/a",
            "https://push.nowhere.example/push/b",
        )
    ]
    with PushSender(vapid_keys[0], "mailto:t@example.com", timeout=5, allowed_hosts=()) as sender:
        channel = WebPushChannel(sender, ttl=60, allowed_hosts=())
        with caplog.at_level(logging.WARNING):
            internal, unknown = channel.send(items)
    assert (internal.kind, internal.reason) == ("rejected", "endpoint host is not a public address")
    assert (unknown.kind, unknown.reason) == ("retry", "endpoint host does not resolve")
    assert "10.20.30.40" in caplog.text and "10.0.0.53" in caplog.text  # kept for operators
    reliability.record(
        "input",
        "push endpoints whose host resolves to an internal address, or not at all",
        expected="generic reason in the user's history; the address only in the server log",
        observed={"generic reason": 2},
    )
