"""Hostile input against the shared stack: an attacker with a valid account and nothing else.

Mallory is signed in but a member of no topic and owner of nothing. Alice owns a topic (with
Bob), messages in it, and a push subscription. Bob is a bystander, connected and joined to the
topic: whatever Mallory sends, his connection must stay up and keep working, and nothing of
Alice's may change. After every test the fixture checks exactly that, and that Mallory owns
no row.

The integration API (``/api/admin``) is attacked from the ``admin_world`` fixture: what a
product's backend provisioned with its service key, and the credentials around it (the
``admin`` and ``publish`` keys, tokens the API minted, Mallory's own JWT).
"""

from __future__ import annotations

import json
import math
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
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
    # client state (issue 18): sync, mark_as_unread
    "invalid_since",
    "invalid_message_id",
    "message_not_found",
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


def attackers(h: Hostile, setting: str, calls: int, *, spare: int = 2) -> list[TestUser]:
    """Mallory first, then as many more signed-in attackers (members of nothing) as it takes
    for ``calls`` calls, spread evenly over them, to stay under the shared stack's per-user
    limit ``setting`` (a ``Settings`` field: ``rate_limit_sync``...), with ``spare`` calls of
    each user's burst left over whatever the clock. So a fuzz judges every payload instead of
    meeting ``rate_limited`` (test_limits.py tests the limits themselves)."""
    limit = getattr(h.stack.app.extensions["beacon_settings"], setting)
    per_user = calls if limit is None else max(1, limit.limit - spare)
    more = [h.stack.user(f"mallory{i}") for i in range(math.ceil(calls / per_user) - 1)]
    return [h.mallory, *more]


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


# -- the integration API (/api/admin) ------------------------------------------------------
def _api_key(stack: Stack, scope: str) -> tuple[str, str]:
    """A new service key of ``scope``: (its name, the key)."""
    name = f"sec-{scope}-{uuid.uuid4().hex[:8]}"
    key = stack.cli("create-api-key", name, "--scope", scope)
    assert key.startswith("bk_"), key
    return name, key


@dataclass
class AdminWorld:
    """What the product's backend set up through ``/api/admin`` with its ``admin`` key.

    Alice and Bob share a topic (with messages) in Alice's room; Bob has a topic of his own in
    another room; Carol is provisioned and a member of nothing of theirs. Alice's and Bob's
    tokens were minted by the API. The scratch room and topic (Carol a member) are what tests
    may change. Mallory is a signed-in user the product never provisioned. Every external id
    has letters, so that its upper-case spelling is another id.
    """

    stack: Stack
    admin_key: str
    publish_key: str
    alice_ext: str
    bob_ext: str
    carol_ext: str
    alice: TestUser
    bob: TestUser
    room_ext: str
    topic_ext: str
    topic: TestTopic  # Alice's and Bob's, in Alice's room
    bob_topic_ext: str
    bob_topic: TestTopic  # Bob's alone, in his room
    scratch_room_ext: str
    scratch_topic_ext: str
    message_ids: list[int]  # in Alice's topic
    mallory: TestUser
    hook_id: str  # a registered webhook (disabled: nothing is ever sent to it)
    key_names: list[str] = field(default_factory=list)

    def call(
        self, credential: str | None, method: str, path: str, **kwargs: Any
    ) -> requests.Response:
        """``/api/admin`` + ``path`` with ``Authorization: Bearer <credential>`` (none when
        None); a request that takes 10 s is a hang and fails the test. Redirects are not
        followed."""
        headers = dict(kwargs.pop("headers", {}))
        if credential is not None:
            headers.setdefault("Authorization", f"Bearer {credential}")
        return requests.request(
            method,
            self.stack.url + "/api/admin" + path,
            headers=headers,
            timeout=10,
            allow_redirects=False,  # a redirect is an answer to judge, not to follow
            **kwargs,
        )

    def admin(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.call(self.admin_key, method, path, **kwargs)

    def new_key(self, scope: str) -> tuple[str, str]:
        """Another key, revoked after the test (unless the test revoked it)."""
        name, key = _api_key(self.stack, scope)
        self.key_names.append(name)
        return name, key

    def revoke(self, name: str) -> None:
        self.stack.cli("revoke-api-key", name)
        self.key_names.remove(name)

    def state(self) -> dict[str, Any]:
        """Alice's, Bob's and Carol's rows, their rooms, topics, memberships and messages, as
        stored (presence and unread counts aside: they move on their own)."""
        from webapp.extensions import db
        from webapp.models import Channel, Message, Topic, TopicMember, User

        users = [uuid.UUID(u.id) for u in (self.alice, self.bob)]
        topics = [uuid.UUID(t.topic_id) for t in (self.topic, self.bob_topic)]
        rooms = [uuid.UUID(t.room_id) for t in (self.topic, self.bob_topic)]
        with self.stack.app.app_context():
            people = db.session.execute(
                select(
                    User.id,
                    User.external_id,
                    User.username,
                    User.display_name,
                    User.email,
                    User.deleted_at,
                ).where((User.id.in_(users)) | (User.external_id == self.carol_ext))
            ).all()
            state = {
                "users": sorted(tuple(str(v) for v in row) for row in people),
                "rooms": sorted(
                    tuple(str(v) for v in row)
                    for row in db.session.execute(
                        select(Channel.id, Channel.external_id, Channel.name).where(
                            Channel.id.in_(rooms)
                        )
                    )
                ),
                "topics": sorted(
                    tuple(str(v) for v in row)
                    for row in db.session.execute(
                        select(Topic.id, Topic.external_id, Topic.channel_id, Topic.name).where(
                            Topic.id.in_(topics)
                        )
                    )
                ),
                "members": sorted(
                    (str(t), str(u))
                    for t, u in db.session.execute(
                        select(TopicMember.topic_id, TopicMember.user_id).where(
                            TopicMember.topic_id.in_(topics)
                        )
                    )
                ),
                "messages": sorted(
                    (m, str(t), str(s), b)
                    for m, t, s, b in db.session.execute(
                        select(Message.id, Message.topic_id, Message.sender_id, Message.body).where(
                            Message.topic_id.in_(topics)
                        )
                    )
                ),
            }
            db.session.remove()
        return state

    def everything(self) -> dict[str, Any]:
        """A fingerprint of every table the integration API writes: the whole database as the
        API could change it (a refused call must leave it exactly so)."""
        from webapp.extensions import db
        from webapp.models import (
            ApiKey,
            Channel,
            Message,
            PublishedMessage,
            Topic,
            TopicMember,
            User,
            Webhook,
        )

        def rows(*columns: Any) -> list[tuple[str, ...]]:
            return sorted(
                tuple(str(v) for v in row) for row in db.session.execute(select(*columns))
            )

        with self.stack.app.app_context():
            state = {
                "users": rows(
                    User.id,
                    User.external_id,
                    User.username,
                    User.display_name,
                    User.email,
                    User.deleted_at,
                ),
                "rooms": rows(Channel.id, Channel.external_id, Channel.name),
                "topics": rows(Topic.id, Topic.external_id, Topic.channel_id, Topic.name),
                "members": rows(TopicMember.topic_id, TopicMember.user_id),
                "messages": tuple(
                    db.session.execute(
                        select(func.count(), func.max(Message.id)).select_from(Message)
                    ).one()
                ),
                "idempotency keys": rows(PublishedMessage.key),
                "webhooks": rows(Webhook.id, Webhook.url, Webhook.events, Webhook.disabled_at),
                "keys": rows(ApiKey.name, ApiKey.scope),
            }
            db.session.remove()
        return state

    def assert_answering(self) -> None:
        """The server still answers, and still knows Alice."""
        again = self.admin("GET", f"/users/{self.alice_ext}")
        assert again.status_code == 200 and again.json()["id"] == self.alice.id, again.text


@pytest.fixture
def admin_world(beacon: Stack) -> Any:
    admin_name, admin_key = _api_key(beacon, "admin")
    publish_name, publish_key = _api_key(beacon, "publish")
    tag = uuid.uuid4().hex[:8]

    def call(method: str, path: str, expected: int, **kwargs: Any) -> dict[str, Any]:
        response = requests.request(
            method,
            f"{beacon.url}/api/admin{path}",
            headers={"Authorization": f"Bearer {admin_key}"},
            timeout=10,
            **kwargs,
        )
        assert response.status_code == expected, (method, path, response.text)
        return response.json() if response.content else {}

    def user(name: str) -> tuple[str, TestUser]:
        ext = f"{name}-{tag}"
        created = call("PUT", f"/users/{ext}", 201, json={"username": f"{name}{tag}"})
        token = call("POST", f"/users/{ext}/token", 200, json={})["token"]
        return ext, TestUser(created["id"], created["username"], token)

    def topic(room_ext: str, topic_ext: str, *members: str) -> TestTopic:
        room = call("PUT", f"/rooms/{room_ext}", 201, json={"name": "General"})
        made = call("PUT", f"/rooms/{room_ext}/topics/{topic_ext}", 201, json={"name": "Lobby"})
        for ext in members:
            call("PUT", f"/topics/{topic_ext}/members/{ext}", 201)
        return TestTopic(room["id"], made["id"])

    alice_ext, alice = user("alice")
    bob_ext, bob = user("bob")
    carol_ext, _carol = user("carol")
    room_ext, topic_ext = f"room-{tag}", f"topic-{tag}"
    shared = topic(room_ext, topic_ext, alice_ext, bob_ext)
    bob_topic_ext = f"bobs-{tag}"
    bobs = topic(f"bobs-room-{tag}", bob_topic_ext, bob_ext)
    scratch_room_ext, scratch_topic_ext = f"scratch-room-{tag}", f"scratch-{tag}"
    topic(scratch_room_ext, scratch_topic_ext, carol_ext)
    message_ids = [
        call(
            "POST",
            "/messages",
            201,
            json={"topic": topic_ext, "sender": alice_ext, "message": f"secret {i}"},
        )["id"]
        for i in range(2)
    ]
    call("POST", "/messages", 201, json={"topic": bob_topic_ext, "sender": bob_ext, "message": "b"})
    hook = call(
        "POST",
        "/webhooks",
        201,
        json={"url": f"https://hooks.example.com/{tag}", "events": ["message.created"]},
    )
    call("PATCH", f"/webhooks/{hook['id']}", 200, json={"enabled": False})
    world = AdminWorld(
        beacon,
        admin_key,
        publish_key,
        alice_ext,
        bob_ext,
        carol_ext,
        alice,
        bob,
        room_ext,
        topic_ext,
        shared,
        bob_topic_ext,
        bobs,
        scratch_room_ext,
        scratch_topic_ext,
        message_ids,
        beacon.user("mallory"),
        hook["id"],
        [admin_name, publish_name],
    )
    yield world
    call("DELETE", f"/webhooks/{world.hook_id}", 204)
    for name in world.key_names:
        beacon.cli("revoke-api-key", name)
