"""Hostile input against the shared stack: an attacker with a valid account and nothing else.

Mallory is signed in but a member of no topic and owner of nothing. Alice owns a topic (with
Bob), messages in it, and a push subscription. Bob is a bystander, connected and joined to the
topic: whatever Mallory sends, his connection must stay up and keep working, and nothing of
Alice's may change. After every test the fixture checks exactly that, and that Mallory owns
no row.
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy import func, select

from tests.conftest import Stack, TestTopic, TestUser
from tests.harness.sio_client import RecordingClient
from tests.harness.waiting import wait_until

settings.register_profile(
    "beacon-security",
    deadline=None,
    database=None,  # no .hypothesis/ directory in the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    print_blob=True,
)

# Every refusal code the protocol documents (PROTOCOL.md). Anything else is a finding.
REFUSALS = {
    "invalid_payload",
    "unknown_field",
    "missing_field",
    "invalid_topic_id",
    "invalid_room_id",
    "invalid_message",
    "invalid_message_ids",
    "invalid_text",
    "empty_message",
    "message_too_long",
    "not_a_member",
    "topic_not_found",
    "room_mismatch",
    "unknown_event",
    "rate_limited",
    # refresh_token
    "missing_token",
    "invalid_token",
    "token_expired",
    "token_not_yet_valid",
    "token_mismatch",
}


def refusal(ack: Any, allowed: set[str] = REFUSALS) -> str:
    """The error code of a well-formed refusal ack; fails on anything else."""
    assert isinstance(ack, dict), ack
    assert ack.get("ok") is False, ack
    assert ack.get("error") in allowed, ack
    assert isinstance(ack.get("message"), str) and ack["message"], ack
    return str(ack["error"])


def raw_call(client: RecordingClient, packet_json: str, timeout: float = 10.0) -> Any:
    """Send a hand-made Socket.IO EVENT packet (``packet_json`` is its JSON array text, which
    the python client could not produce: too deep, NaN, duplicate keys...) and wait for the
    ack; None when the server gave none."""
    sio = client.sio
    done = threading.Event()
    result: list[Any] = []

    def callback(*args: Any) -> None:
        result.append(args[0] if len(args) == 1 else args)
        done.set()

    ack_id = sio._generate_ack_id("/", callback)
    sio.eio.send(f"2{ack_id}{packet_json}")
    return result[0] if done.wait(timeout) else None


@dataclass
class Hostile:
    stack: Stack
    mallory: TestUser
    client: RecordingClient
    alice: TestUser
    bob: TestUser
    topic: TestTopic  # Alice's
    message_ids: list[int]  # Alice's messages in it
    subscription_id: str  # Alice's
    endpoint: str  # Alice's
    bystander: RecordingClient  # Bob, joined to the topic
    tallies: dict[str, Any] = field(default_factory=dict)

    def mallory_rows(self) -> dict[str, int]:
        from webapp.extensions import db
        from webapp.models import Message, PushSubscription, TopicMember

        uid = uuid.UUID(self.mallory.id)
        with self.stack.app.app_context():
            counts = {
                "messages": db.session.execute(
                    select(func.count()).select_from(Message).where(Message.sender_id == uid)
                ).scalar_one(),
                "subscriptions": db.session.execute(
                    select(func.count())
                    .select_from(PushSubscription)
                    .where(PushSubscription.user_id == uid)
                ).scalar_one(),
                "memberships": db.session.execute(
                    select(func.count()).select_from(TopicMember).where(TopicMember.user_id == uid)
                ).scalar_one(),
            }
            db.session.remove()
        return counts

    def alice_state(self) -> dict[str, Any]:
        listed = self.stack.api(self.alice, "GET", "/api/notifications/subscriptions").json()
        page = self.stack.api(self.alice, "GET", f"/api/topics/{self.topic.topic_id}/messages")
        prefs = self.stack.api(self.alice, "GET", "/api/notifications/preferences").json()
        return {
            "preferences": prefs,
            "subscriptions": [s["id"] for s in listed["subscriptions"]],
            "messages": [m["id"] for m in page.json()["messages"]],
            "unread": (
                self.stack.unread(self.alice, self.topic),
                self.stack.unread(self.bob, self.topic),
            ),
        }

    def assert_unharmed(self) -> None:
        assert self.bystander.connected, "the bystander was disconnected"
        ack = self.bystander.call("join_topic", {"topic_id": self.topic.topic_id})
        assert ack["ok"], ack
        assert self.mallory_rows() == {"messages": 0, "subscriptions": 0, "memberships": 0}


@pytest.fixture
def hostile(beacon: Stack) -> Any:
    alice, bob, mallory = beacon.user("alice"), beacon.user("bob"), beacon.user("mallory")
    topic = beacon.topic(alice, bob)
    alice_client = beacon.client(alice, "alice")
    ids = []
    for text in ("one", "two"):
        ack = alice_client.call("send_message", topic.ref(message=text))
        assert ack["ok"], ack
        ids.append(ack["message"]["id"])
    alice_client.disconnect()
    wait_until(lambda: beacon.unread(bob, topic) == 2, message="Alice's messages not counted")
    sub = beacon.push.new_subscription()
    response = beacon.api(
        alice,
        "POST",
        "/api/notifications/subscribe",
        json={"endpoint": sub["endpoint"], "keys": sub["keys"]},
    )
    assert response.status_code == 201, response.text
    bystander = beacon.client(bob, "bob-bystander")
    assert bystander.call("join_topic", {"topic_id": topic.topic_id})["ok"]
    client = beacon.client(mallory, "mallory")
    state = Hostile(
        beacon,
        mallory,
        client,
        alice,
        bob,
        topic,
        ids,
        response.json()["id"],
        sub["endpoint"],
        bystander,
    )
    before = state.alice_state()
    yield state
    state.assert_unharmed()
    assert state.alice_state() == before, "Alice's data changed"


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
