"""Driving Web Push end to end in system tests: subscribe like a browser, send, wait."""

from __future__ import annotations

import json

from tests.harness.processes import wait_log_contains
from tests.harness.waiting import wait_until


def subscribe(beacon, user, **extra):
    """Subscribe like a browser: its own key pair and auth secret, from the push service."""
    sub = beacon.push.new_subscription()
    body = {"endpoint": sub["endpoint"], "expirationTime": None, "keys": sub["keys"], **extra}
    response = beacon.api(user, "POST", "/api/notifications/subscribe", json=body)
    assert response.status_code == 201, response.text
    return sub, response.json()


def send(beacon, user, topic, text):
    client = beacon.client(user)
    ack = client.call("send_message", topic.ref(message=text))
    assert ack["ok"], ack
    client.disconnect()
    return ack["message"]["id"]


def fanout_done(beacon, message_id, subscriptions):
    """The push worker's fan-out log line for the message, once it is written."""
    line = wait_log_contains(beacon.workers["push"], f"fan-out message={message_id} ", timeout=20)
    assert line.rstrip().endswith(f"subscriptions={subscriptions}"), line
    return line


def delivered(beacon, sub, count=1):
    wait_until(
        lambda: len(beacon.push.messages(sub)) >= count,
        timeout=20,
        message=f"fewer than {count} pushes arrived",
    )
    return [json.loads(m["payload"]) for m in beacon.push.messages(sub)]


def pushes_ended(found):
    """A decision whose pushes, if any, have all ended (a push records its deliveries when it
    ends: the tasks record decisions after enqueueing the pushes)."""
    return found["decision"] not in ("pushed", "coalesced") or found["deliveries"]


def decision(beacon, user, message_id, settled=pushes_ended, **params):
    """The user's notification decision for the message (GET /api/notifications/decisions with
    ``params``), once ``settled``."""

    def found():
        answer = beacon.api(user, "GET", "/api/notifications/decisions", params=params)
        assert answer.status_code == 200, answer.text
        mine = [d for d in answer.json()["decisions"] if d["message_id"] == message_id]
        return mine[0] if mine and settled(mine[0]) else None

    return wait_until(found, timeout=20, message=f"a settled decision for message {message_id}")
