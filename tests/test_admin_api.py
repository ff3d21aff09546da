"""The integration API end to end: service keys, provisioning, memberships with live effects
on every web process, publishing with idempotency keys, and user deletion.

Real web processes, workers, Redis and database; the product's backend is ``requests``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests import conftest
from tests.conftest import Stack, run_flask, shared_services_stack
from tests.harness.waiting import wait_until
from tests.push_helpers import fanout_done, subscribe


@pytest.fixture(scope="module")
def admin_stack(backend: str, request: pytest.FixtureRequest) -> Iterator[Stack]:
    with shared_services_stack(
        request, backend, f"beacon_admin_{backend}", name=f"admin-{backend}"
    ) as stack:
        yield stack


@pytest.fixture
def stack(admin_stack: Stack) -> Iterator[Stack]:
    yield admin_stack
    admin_stack.close_clients()


def _key(stack: Stack, scope: str = "admin") -> str:
    name = f"{scope}-{uuid.uuid4().hex[:8]}"
    key = run_flask(stack.env, "beacon", "create-api-key", name, "--scope", scope).stdout.strip()
    assert key.startswith("bk_")
    return key


class Product:
    """The product's backend: calls /api/admin with a service key."""

    def __init__(self, stack: Stack, key: str) -> None:
        self.stack, self.key = stack, key

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.key}", **kwargs.pop("headers", {})}
        return requests.request(
            method, self.stack.url + "/api/admin" + path, headers=headers, timeout=10, **kwargs
        )

    def user(self, prefix: str = "u") -> tuple[str, conftest.TestUser]:
        """A new user (external id, and a TestUser with a token minted by the API)."""
        ext = f"{prefix}-{uuid.uuid4().hex[:10]}"
        username = f"{prefix}{uuid.uuid4().hex[:8]}"
        r = self.call("PUT", f"/users/{ext}", json={"username": username})
        assert r.status_code == 201, r.text
        token = self.call("POST", f"/users/{ext}/token", json={}).json()["token"]
        return ext, conftest.TestUser(r.json()["id"], username, token)

    def topic(self, *member_exts: str) -> tuple[str, conftest.TestTopic]:
        room_ext, topic_ext = f"r-{uuid.uuid4().hex[:10]}", f"t-{uuid.uuid4().hex[:10]}"
        room = self.call("PUT", f"/rooms/{room_ext}", json={"name": "General"})
        assert room.status_code == 201, room.text
        topic = self.call("PUT", f"/rooms/{room_ext}/topics/{topic_ext}", json={"name": "Lobby"})
        assert topic.status_code == 201, topic.text
        for ext in member_exts:
            assert self.call("PUT", f"/topics/{topic_ext}/members/{ext}").status_code == 201
        return topic_ext, conftest.TestTopic(room.json()["id"], topic.json()["id"])


@pytest.fixture
def product(stack: Stack) -> Product:
    return Product(stack, _key(stack))


def test_keys_and_tokens_are_kept_apart(stack, product):
    ext, user = product.user()
    # No key, a bad key, a JWT: refused on the admin routes.
    assert product.call("GET", f"/users/{ext}", headers={"Authorization": ""}).status_code == 401
    bad = Product(stack, "bk_" + "x" * 43).call("GET", f"/users/{ext}")
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_key"
    jwt = Product(stack, user.token).call("GET", f"/users/{ext}")
    assert jwt.status_code == 403 and jwt.json()["error"] == "service_key_required"
    # A key on a user route: refused.
    refused = requests.get(
        stack.url + "/api/topics", headers={"Authorization": f"Bearer {product.key}"}, timeout=10
    )
    assert refused.status_code == 403 and refused.json()["error"] == "user_token_required"
    ok, error = stack.new_client("key").try_connect(stack.url, product.key)
    assert not ok and "user_token_required" in str(error), error
    # A publish key may publish, not provision.
    publisher = Product(stack, _key(stack, "publish"))
    scoped = publisher.call("PUT", "/users/someone", json={"username": "someone"})
    assert scoped.status_code == 403 and scoped.json()["error"] == "insufficient_scope"
    # The minted token works on the user routes.
    me = stack.api(user, "GET", "/api/users/me")
    assert me.status_code == 200 and me.json()["user_id"] == user.id


def test_keys_are_listed_without_secrets_and_revocable(stack):
    name = f"ops-{uuid.uuid4().hex[:8]}"
    key = run_flask(stack.env, "beacon", "create-api-key", name).stdout.strip()
    listed = run_flask(stack.env, "beacon", "list-api-keys").stdout
    line = next(line for line in listed.splitlines() if line.startswith(name + "\t"))
    assert key not in listed and line.split("\t")[1] == "admin"
    assert line.split("\t")[2] == key[:10]
    assert Product(stack, key).call("GET", "/users/nobody").status_code == 404
    run_flask(stack.env, "beacon", "revoke-api-key", name)
    assert Product(stack, key).call("GET", "/users/nobody").status_code == 401
    again = run_flask(stack.env, "beacon", "revoke-api-key", name, check=False)
    assert again.returncode != 0 and "no key named" in again.stderr


def test_keys_are_rate_limited_per_key(request, backend):
    with shared_services_stack(
        request,
        backend,
        f"beacon_admin_limits_{backend}",
        name=f"admin-limits-{backend}",
        workers={},
        RATE_LIMIT_ADMIN="3/60s",
    ) as limited:
        first, second = Product(limited, _key(limited)), Product(limited, _key(limited))
        answers = [first.call("GET", "/users/nobody").status_code for _ in range(4)]
        assert answers == [404, 404, 404, 429]
        assert first.call("GET", "/users/nobody").headers["Retry-After"]
        assert second.call("GET", "/users/nobody").status_code == 404  # its own budget


def test_users_are_created_updated_and_validated(stack, product):
    ext = f"ext-{uuid.uuid4().hex[:8]}"
    name = f"ann{uuid.uuid4().hex[:6]}"
    body = {"username": name, "display_name": "Ann", "email": "ann@example.com"}
    created = product.call("PUT", f"/users/{ext}", json=body)
    assert created.status_code == 201
    user = created.json()
    assert user["external_id"] == ext and user["username"] == name and uuid.UUID(user["id"])
    updated = product.call("PUT", f"/users/{ext}", json={**body, "display_name": "Ann B"})
    assert updated.status_code == 200 and updated.json()["id"] == user["id"]
    assert product.call("GET", f"/users/{ext}").json()["display_name"] == "Ann B"

    other = product.call("PUT", f"/users/x-{ext}", json={"username": name})
    assert other.status_code == 409 and other.json()["error"] == "username_taken"
    cases = [
        ("PUT", "/users/bad%20id", {"username": "a"}, 400, "invalid_external_id"),
        ("PUT", f"/users/{'x' * 129}", {"username": "a"}, 400, "invalid_external_id"),
        ("PUT", f"/users/{ext}", {"username": "a", "admin": True}, 400, "unknown_field"),
        ("PUT", f"/users/{ext}", {"username": "a b"}, 400, "invalid_username"),
        ("PUT", f"/users/{ext}", {"username": name, "email": "nope"}, 400, "invalid_email"),
        ("PUT", f"/users/{ext}", {}, 400, "missing_field"),
        ("PUT", f"/users/{ext}", [1], 400, "invalid_payload"),
        ("GET", "/users/nobody-here", None, 404, "user_not_found"),
        ("POST", f"/users/{ext}/token", {"ttl": 0}, 400, "invalid_ttl"),
        ("POST", f"/users/{ext}/token", {"ttl": "60"}, 400, "invalid_ttl"),
        ("POST", f"/users/{ext}/token", [], 400, "invalid_payload"),
    ]
    for method, path, payload, status, code in cases:
        r = product.call(method, path, json=payload)
        assert (r.status_code, r.json()["error"]) == (status, code), (method, path, r.text)
    big = product.call("PUT", f"/users/{ext}", json={"username": "a" * 100_000})
    assert big.status_code == 413

    minted = product.call("POST", f"/users/{ext}/token", json={"ttl": 60}).json()
    assert minted["token"] and minted["expires_at"]


def test_rooms_and_topics(stack, product):
    room_ext, topic_ext = f"r-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    assert product.call("PUT", f"/rooms/{room_ext}", json={"name": "Sales"}).status_code == 201
    renamed = product.call("PUT", f"/rooms/{room_ext}", json={"name": "Sales EU"})
    assert renamed.status_code == 200 and renamed.json()["name"] == "Sales EU"
    # Room names need not be unique (two customers' "General").
    twin = product.call("PUT", f"/rooms/{room_ext}-2", json={"name": "Sales EU"})
    assert twin.status_code == 201
    topic = product.call("PUT", f"/rooms/{room_ext}/topics/{topic_ext}", json={"name": "Leads"})
    assert topic.status_code == 201
    assert topic.json()["room_external_id"] == room_ext
    elsewhere = product.call("PUT", f"/rooms/{room_ext}-2/topics/{topic_ext}", json={"name": "x"})
    assert elsewhere.status_code == 409 and elsewhere.json()["error"] == "topic_in_other_room"
    clash = product.call("PUT", f"/rooms/{room_ext}/topics/{topic_ext}-b", json={"name": "Leads"})
    assert clash.status_code == 409 and clash.json()["error"] == "name_taken"
    missing = product.call("PUT", f"/rooms/nope-{room_ext}/topics/t1", json={"name": "x"})
    assert missing.status_code == 404 and missing.json()["error"] == "room_not_found"
    assert product.call("DELETE", f"/rooms/{room_ext}-2").status_code == 204
    assert product.call("DELETE", f"/rooms/{room_ext}-2").status_code == 404


def test_membership_changes_reach_every_web_process(stack, product):
    """Alice is connected to a second web process; the API is called on the first."""
    second_url = stack.start_web(f"web2-{uuid.uuid4().hex[:4]}")
    alice_ext, alice = product.user("alice")
    bob_ext, bob = product.user("bob")
    topic_ext, topic = product.topic(alice_ext, bob_ext)
    other_ext, other = product.topic(alice_ext, bob_ext)

    client = stack.new_client("alice")
    client.connect(second_url, alice.token)
    for t in (topic, other):
        assert client.call("join_topic", t.ref())["ok"]
    bob_client = stack.client(bob)

    mark = client.mark()
    assert product.call("DELETE", f"/topics/{topic_ext}/members/{alice_ext}").status_code == 204
    removed = client.wait_for_event("topic_removed", after=mark)
    assert removed == {"topic_id": topic.topic_id, "room_id": topic.room_id, "reason": "removed"}
    # Bob writes in the topic, then in the other one: Alice gets only the second.
    assert bob_client.call("send_message", topic.ref(message="after"))["ok"]
    assert bob_client.call("send_message", other.ref(message="later"))["ok"]
    client.wait_for_event("new_message", lambda m: m["body"] == "later", after=mark)
    client.assert_no_event("new_message", lambda m: m["body"] == "after", after=mark)
    client.assert_no_event(
        "global_message_alert", lambda m: m["topic_id"] == topic.topic_id, after=mark
    )
    refused = client.call("join_topic", topic.ref())
    assert refused["error"] == "not_a_member"
    # Removing again is idempotent.
    assert product.call("DELETE", f"/topics/{topic_ext}/members/{alice_ext}").status_code == 204

    mark = client.mark()
    assert product.call("PUT", f"/topics/{topic_ext}/members/{alice_ext}").status_code == 201
    added = client.wait_for_event("topic_added", after=mark)
    assert added["topic_id"] == topic.topic_id and added["unread_count"] == 0
    assert added["last_read_message_id"] is not None
    assert product.call("PUT", f"/topics/{topic_ext}/members/{alice_ext}").status_code == 200
    assert client.call("join_topic", topic.ref())["ok"]
    assert product.call("PUT", f"/topics/{other_ext}/members/nobody").status_code == 404


def test_removed_member_is_not_active_and_gets_no_push(stack, product):
    alice_ext, alice = product.user("alice")
    bob_ext, bob = product.user("bob")
    topic_ext, topic = product.topic(alice_ext, bob_ext)
    sub, _ = subscribe(stack, alice)
    client = stack.client(alice)
    assert client.call("join_topic", topic.ref())["ok"]

    def active() -> set[str]:
        with stack.app.app_context():
            from webapp.presence.store import presence

            return presence().active_users(topic.topic_id)

    assert alice.id in active()
    assert product.call("DELETE", f"/topics/{topic_ext}/members/{alice_ext}").status_code == 204
    assert alice.id not in active()
    client.disconnect()
    sent = product.call(
        "POST", "/messages", json={"topic": topic_ext, "sender": bob_ext, "message": "hi"}
    )
    assert sent.status_code == 201
    fanout_done(stack, sent.json()["id"], subscriptions=0)
    assert stack.push.attempts(sub) == 0


def test_publish_posts_through_the_pipeline(stack, product):
    alice_ext, alice = product.user("alice")
    bob_ext, bob = product.user("bob")
    topic_ext, topic = product.topic(alice_ext, bob_ext)
    client = stack.client(alice)
    assert client.call("join_topic", topic.ref())["ok"]
    publisher = Product(stack, _key(stack, "publish"))
    body = {
        "topic": topic_ext,
        "sender": bob_ext,
        "message": "deploy done",
        "idempotency_key": "k-" + topic_ext,
    }
    first = publisher.call("POST", "/messages", json=body)
    assert first.status_code == 201, first.text
    message = first.json()
    assert message["body"] == "deploy done" and message["sender"]["id"] == bob.id
    assert message["topic_id"] == topic.topic_id
    assert client.wait_for_event("new_message")["id"] == message["id"]
    client.wait_for_event("global_message_alert", lambda a: a["message_id"] == message["id"])
    # Carol, added now, is not looking: the next message counts for her.
    carol_ext, carol = product.user("carol")
    assert product.call("PUT", f"/topics/{topic_ext}/members/{carol_ext}").status_code == 201

    replay = publisher.call("POST", "/messages", json=body)
    assert replay.status_code == 201 and replay.json() == message
    assert replay.headers["Idempotent-Replayed"] == "true"
    reused = publisher.call("POST", "/messages", json={**body, "message": "other"})
    assert reused.status_code == 409 and reused.json()["error"] == "idempotency_key_reused"

    again = publisher.call(
        "POST", "/messages", json={**body, "idempotency_key": None, "message": "two"}
    )
    assert again.status_code == 201
    wait_until(lambda: stack.unread(carol, topic) == 1, message="carol's unread count")
    page = stack.api(alice, "GET", f"/api/topics/{topic.topic_id}/messages").json()["messages"]
    assert [m["body"] for m in page] == ["two", "deploy done"]

    cases = [
        ({**body, "sender": carol_ext + "x"}, 404, "user_not_found"),
        ({**body, "topic": "nope"}, 404, "topic_not_found"),
        ({"topic": topic_ext, "sender": bob_ext}, 400, "missing_field"),
        ({**body, "message": ""}, 400, "empty_message"),
        ({**body, "extra": 1}, 400, "unknown_field"),
        ({**body, "idempotency_key": ""}, 400, "invalid_idempotency_key"),
    ]
    for payload, status, code in cases:
        if payload.get("idempotency_key"):
            del payload["idempotency_key"]
        r = publisher.call("POST", "/messages", json=payload)
        assert (r.status_code, r.json()["error"]) == (status, code), (payload, r.text)
    outsider_ext, _ = product.user("out")
    r = publisher.call(
        "POST", "/messages", json={**body, "sender": outsider_ext, "idempotency_key": None}
    )
    assert r.status_code == 403 and r.json()["error"] == "not_a_member"


def test_deleting_a_user(stack, product):
    alice_ext, alice = product.user("alice")
    bob_ext, bob = product.user("bob")
    topic_ext, topic = product.topic(alice_ext, bob_ext)
    sent = product.call(
        "POST", "/messages", json={"topic": topic_ext, "sender": alice_ext, "message": "bye"}
    )
    assert sent.status_code == 201
    sub, _ = subscribe(stack, alice)
    client = stack.client(alice)
    mark = client.mark()

    assert product.call("DELETE", f"/users/{alice_ext}").status_code == 204
    revoked = client.wait_for_event("access_revoked", after=mark)
    assert revoked["error"] == "unknown_user"
    wait_until(lambda: not client.connected, message="alice's socket was not closed")
    assert product.call("GET", f"/users/{alice_ext}").status_code == 404
    assert product.call("DELETE", f"/users/{alice_ext}").status_code == 404
    assert stack.api(alice, "GET", "/api/users/me").status_code == 401
    ok, error = stack.new_client("alice-again").try_connect(stack.url, alice.token)
    assert not ok and "unknown_user" in str(error)

    page = stack.api(bob, "GET", f"/api/topics/{topic.topic_id}/messages").json()["messages"]
    (kept,) = page
    assert kept["body"] == "bye" and kept["sender"] == {
        "id": alice.id,
        "username": None,
        "name": "Deleted user",
        "deleted": True,
    }
    with stack.app.app_context():
        from sqlalchemy import func, select

        from webapp.extensions import db
        from webapp.models import PushSubscription, TopicMember, User

        uid = uuid.UUID(alice.id)
        assert db.session.scalar(select(func.count()).where(TopicMember.user_id == uid)) == 0
        assert db.session.scalar(select(func.count()).where(PushSubscription.user_id == uid)) == 0
        row = db.session.get(User, uid)
        assert row.deleted_at is not None and row.email is None and row.external_id is None
    # The external id is free again: a new user.
    again = product.call("PUT", f"/users/{alice_ext}", json={"username": alice.username})
    assert again.status_code == 201 and again.json()["id"] != alice.id
    assert sub  # the device was deleted with the user (checked above)


def test_deleted_users_queued_pushes_are_not_sent(request, backend):
    """Pushes waiting in the queue when the user is deleted find no device."""
    with shared_services_stack(
        request,
        backend,
        f"beacon_admin_queued_{backend}",
        name=f"admin-queued-{backend}",
        workers={"unread": ("unread",)},  # no push worker yet: the fan-outs wait
    ) as queued:
        product = Product(queued, _key(queued))
        alice_ext, alice = product.user("alice")
        bob_ext, bob = product.user("bob")
        carol_ext, carol = product.user("carol")
        topic_ext, _topic = product.topic(alice_ext, bob_ext, carol_ext)
        alice_sub, _ = subscribe(queued, alice)
        carol_sub, _ = subscribe(queued, carol)
        for text in ("one", "two"):
            r = product.call(
                "POST", "/messages", json={"topic": topic_ext, "sender": bob_ext, "message": text}
            )
            assert r.status_code == 201
        assert product.call("DELETE", f"/users/{alice_ext}").status_code == 204
        queued.start_worker("push", "push", "-P", "gevent", "-c", "10")
        wait_until(
            lambda: len(queued.push.messages(carol_sub)) == 2, timeout=30, message="carol's pushes"
        )
        assert queued.push.attempts(alice_sub) == 0
