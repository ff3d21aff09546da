"""``/api/openapi.json`` (webapp/api/openapi.py) is valid OpenAPI 3.1 and cannot drift.

The document is written by hand, so these tests hold it to the code: its (path, method)
pairs are exactly the app's URL rules, their path parameters are declared, each route's
documented security is what the route enforces, and real answers (successes and refusals)
match the documented status codes and schemas (and bodies the routes took match the request
schemas). In-process apps on SQLite: mostly with a Redis address nobody listens on (the routes
that need Redis answer 503, also documented); the integration API's, the client state's and
the notification decisions' and test push's with the session's Redis (the test push with its
worker's side run in the request, over a stand-in push service).
"""

from __future__ import annotations

import functools
import re
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from tests.conftest import ROOT, base_env
from tests.harness.ports import free_port

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
JSON = "application/json"
# Werkzeug's ``<name>`` or ``<converter(args):name>`` is OpenAPI's ``{name}``.
RULE_ARGUMENT = re.compile(r"<(?:[^<>:]+:)?([^<>:]+)>")
MISSING_CREDENTIAL = {"userToken": "missing_token", "serviceKey": "missing_key"}


def _app(tmp_path: Path, redis_url: str, **extra: str) -> Iterator[Flask]:
    from config import load_settings
    from webapp import create_app
    from webapp.extensions import db

    # No limit per service key: with Redis down the admin routes still get past it.
    env = base_env(
        f"sqlite:///{tmp_path / 'beacon.db'}", redis_url, RATE_LIMIT_ADMIN="off", **extra
    )
    app = create_app(load_settings(env), serve_sockets=False)
    with app.app_context():
        db.create_all()
        yield app


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    """The app with a Redis nobody listens on."""
    yield from _app(tmp_path, f"redis://127.0.0.1:{free_port()}/0")


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def _served_document(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200 and response.mimetype == JSON
    return response.get_json()


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    return _served_document(client)


def _app_routes(app: Flask) -> dict[tuple[str, str], set[str]]:
    """(method, OpenAPI path) of every URL rule, with the rule's path parameters."""
    routes = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = RULE_ARGUMENT.sub(r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            routes[(method.lower(), path)] = set(rule.arguments)
    return routes


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    }


def _check(document: dict[str, Any], schema: dict[str, Any], instance: Any) -> None:
    """Validate ``instance`` against a schema of the document (its ``$ref``s resolve there)."""
    root = {**schema, "components": document["components"]}
    validator = Draft202012Validator(root, format_checker=Draft202012Validator.FORMAT_CHECKER)
    validator.validate(instance)


def _refused(document: dict[str, Any], schema: dict[str, Any], instance: Any) -> bool:
    root = {**schema, "components": document["components"]}
    return not Draft202012Validator(root).is_valid(instance)


def test_the_served_document_is_valid_openapi_3_1(document):
    validate(document, cls=OpenAPIV31SpecValidator)
    assert document["openapi"].startswith("3.1.")
    assert document["info"]["title"] == "Beacon"
    schemes = document["components"]["securitySchemes"]
    assert schemes["userToken"]["bearerFormat"] == "JWT"
    assert schemes["serviceKey"]["scheme"] == "bearer"


def test_the_version_is_the_projects(document):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert document["info"]["version"] == project["version"]


def test_documented_routes_are_exactly_the_apps_routes(app, document):
    routes, documented = set(_app_routes(app)), set(_operations(document))
    undocumented = sorted(f"{m.upper()} {p}" for m, p in routes - documented)
    missing = sorted(f"{m.upper()} {p}" for m, p in documented - routes)
    assert not undocumented and not missing, (
        f"routes missing from webapp/api/openapi.py: {undocumented}; "
        f"documented but not routes of the app: {missing}"
    )


def test_every_path_parameter_is_declared(app, document):
    operations = _operations(document)
    for (method, path), arguments in _app_routes(app).items():
        operation = operations.get((method, path))
        if operation is None:
            continue  # reported by the test above
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        assert declared == arguments, f"{method.upper()} {path}: declares {declared}"
        assert set(re.findall(r"{([^}]+)}", path)) == arguments
        for parameter in operation.get("parameters", []):
            assert parameter["in"] != "path" or parameter["required"] is True


def test_every_operation_documents_its_answers(document):
    ids = [op["operationId"] for op in _operations(document).values()]
    assert len(ids) == len(set(ids)), "operationIds must be unique"
    for (method, path), operation in _operations(document).items():
        name = f"{method.upper()} {path}"
        assert operation["summary"] and "security" in operation, name
        assert any(s.startswith("2") for s in operation["responses"]), name
        if "requestBody" in operation:
            assert {"400", "413"} <= set(operation["responses"]), name
        if operation["security"]:
            assert {"401", "403"} <= set(operation["responses"]), name
        if path.startswith("/api/admin/"):
            assert [set(s) for s in operation["security"]] == [{"serviceKey"}], name


def _send(
    client: FlaskClient,
    document: dict[str, Any],
    method: str,
    path: str,
    *,
    token: str | None = None,
    json: Any = None,
    query: str = "",
    **params: str,
):
    """Call a documented operation and check the exchange against the document: a body the
    route took matches the request schema; the answer has a documented status and content
    type, and (JSON) a body that matches its schema."""
    operation = document["paths"][path][method]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = path.format(**params) + (f"?{query}" if query else "")
    response = client.open(url, method=method.upper(), headers=headers, json=json)
    name = f"{method.upper()} {url} -> {response.status_code}"
    if json is not None and response.status_code < 300:
        _check(document, operation["requestBody"]["content"][JSON]["schema"], json)
    documented = operation["responses"].get(str(response.status_code))
    assert documented is not None, f"{name} is not documented: {response.get_data(as_text=True)}"
    content = documented.get("content")
    if content is None:
        assert response.get_data() == b"", name
        return response
    assert response.mimetype in content, f"{name}: {response.mimetype} is not documented"
    if response.mimetype == JSON:
        _check(document, content[JSON]["schema"], response.get_json())
    return response


def _sample_value(name: str) -> str:
    return str(uuid.uuid4()) if name.endswith("_id") else "x-" + name


def test_each_route_enforces_the_documented_security(app, client, document):
    """Without credentials, a route documented with a scheme answers 401 with that scheme's
    code and a public one answers anything else; with a key of scope ``publish``, the admin
    routes documented for ``admin`` answer 403 ``insufficient_scope`` and the others do not.
    So a route cannot be documented public yet need a token, or the other way round. Every
    answer is checked against the document too."""
    from webapp.admin import keys

    publish_key = keys.create("publisher", "publish")
    routes = _app_routes(app)
    for (method, path), operation in _operations(document).items():
        if (method, path) not in routes:
            continue  # reported by test_documented_routes_are_exactly_the_apps_routes
        params = {name: _sample_value(name) for name in routes[(method, path)]}
        response = _send(client, document, method, path, **params)
        name = f"{method.upper()} {path}"
        if not operation["security"]:
            assert response.status_code != 401, name
            continue
        ((scheme, roles),) = operation["security"][0].items()
        assert response.status_code == 401, name
        assert response.get_json()["error"] == MISSING_CREDENTIAL[scheme], name
        if scheme == "serviceKey":
            scoped = _send(client, document, method, path, token=publish_key, **params)
            refused = (
                scoped.status_code == 403 and scoped.get_json()["error"] == "insufficient_scope"
            )
            assert refused == ("publish" not in roles), name


@pytest.fixture
def world(app: Flask) -> dict[str, Any]:
    """Alice (a member of a topic with two messages, a subscription, a push record and
    preferences) and Bob (no topics), with a token each."""
    from webapp.auth import issue_token
    from webapp.extensions import db
    from webapp.models import (
        Channel,
        Message,
        NotificationOverride,
        NotificationSettings,
        PushRecord,
        PushSubscription,
        Topic,
        TopicMember,
        User,
    )

    alice = User(username="alice", display_name="Alice")
    bob = User(username="bob")
    room = Channel(name="general")
    db.session.add_all([alice, bob, room])
    db.session.flush()
    topic = Topic(channel_id=room.id, name="launch")
    db.session.add(topic)
    db.session.flush()
    subscription = PushSubscription(
        user_id=alice.id, endpoint="https://push.example.com/send/abc", p256dh="p", auth="a"
    )
    db.session.add_all(
        [
            TopicMember(topic_id=topic.id, user_id=alice.id, unread_count=2),
            Message(topic_id=topic.id, sender_id=alice.id, body="hello"),
            Message(topic_id=topic.id, sender_id=alice.id, body="again"),
            subscription,
            NotificationSettings(user_id=alice.id, quiet_start=22 * 60, quiet_end=7 * 60),
            NotificationOverride(user_id=alice.id, topic_id=topic.id, level="mentions"),
            NotificationOverride(user_id=alice.id, channel_id=room.id, level="none"),
        ]
    )
    db.session.flush()
    db.session.add(
        PushRecord(
            user_id=alice.id,
            subscription_id=subscription.id,
            push_service="https://push.example.com",
            topic_id=topic.id,
            kind="message",
            outcome="delivered",
            status_code=201,
        )
    )
    db.session.commit()
    settings = app.extensions["beacon_settings"]
    return {
        "alice": issue_token(settings, alice.id),
        "bob": issue_token(settings, bob.id),
        "topic_id": str(topic.id),
        "room_id": str(room.id),
        "subscription_id": str(subscription.id),
    }


def test_real_answers_match_the_documented_schemas(client, document, world):
    alice, bob, topic_id = world["alice"], world["bob"], world["topic_id"]
    send = functools.partial(_send, client, document)
    messages = "/api/topics/{topic_id}/messages"

    topics = send("get", "/api/topics", token=alice).get_json()["topics"]
    assert [t["topic_id"] for t in topics] == [topic_id] and topics[0]["unread_count"] == 2
    page = send("get", messages, token=alice, query="limit=1", topic_id=topic_id).get_json()
    assert len(page["messages"]) == 1 and page["next_before"] is not None
    assert send("get", messages, token=bob, topic_id=topic_id).status_code == 403
    assert send("get", messages, token=alice, topic_id=str(uuid.uuid4())).status_code == 404
    assert send("get", messages, token=alice, topic_id="not-a-uuid").status_code == 400
    assert send("get", "/api/users/me", token=alice).status_code == 200
    # Redis is down in this test: the route says so, in the documented shape.
    assert send("get", "/api/users/online", token=alice).status_code == 503

    preferences = send("get", "/api/notifications/preferences", token=alice).get_json()
    assert preferences["quiet_hours"] == {"start": "22:00", "end": "07:00"}
    assert preferences["rooms"] and preferences["topics"]
    history = "/api/notifications/history"
    assert send("get", "/api/notifications/subscriptions", token=alice).status_code == 200
    assert send("get", history, token=alice).get_json()["pushes"]
    assert send("get", history, token=alice, query="outcome=lost").status_code == 400
    cleared = send(
        "delete", "/api/notifications/preferences/topics/{topic_id}", token=alice, topic_id=topic_id
    )
    assert cleared.status_code == 204
    removed = send(
        "delete",
        "/api/notifications/unsubscribe/{subscription_id}",
        token=alice,
        subscription_id=world["subscription_id"],
    )
    assert removed.status_code == 204
    no_keys = {"endpoint": "https://push.example.com/x"}
    assert (
        send("post", "/api/notifications/subscribe", token=alice, json=no_keys).status_code == 400
    )
    assert send("get", "/api/notifications/vapid-public-key").status_code == 503

    users = send("get", "/api/dev/users").get_json()["users"]
    assert {u["username"] for u in users} == {"alice", "bob"}
    assert send("post", "/api/dev/token", json={"username": "alice"}).status_code == 200
    assert send("get", "/healthz").status_code == 200
    assert send("get", "/readyz").status_code == 503  # Redis is down


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("patch", "/api/notifications/preferences", {"level": "all", "colour": "red"}),
        ("put", "/api/notifications/preferences/topics/{topic_id}", {"level": "all", "x": 1}),
        ("put", "/api/notifications/preferences/rooms/{room_id}", {"level": "all", "x": 1}),
        ("post", "/api/dev/token", {"username": "alice", "admin": True}),
    ],
)
def test_unknown_fields_are_refused_by_the_route_and_by_its_schema(
    client, document, world, method, path, body
):
    schema = document["paths"][path][method]["requestBody"]["content"][JSON]["schema"]
    assert _refused(document, schema, body), "the schema should refuse the unknown field"
    known = {k: v for k, v in body.items() if k in {"level", "username"}}
    _check(document, schema, known)
    response = _send(
        client,
        document,
        method,
        path,
        token=world["alice"],
        json=body,
        topic_id=world["topic_id"],
        room_id=world["room_id"],
    )
    assert response.status_code == 400 and response.get_json()["error"] == "unknown_field"


@pytest.fixture
def live_app(tmp_path: Path, redis_server) -> Iterator[Flask]:
    """The app with a real Redis: the integration API's live effects go through it."""
    yield from _app(tmp_path, redis_server.new_db_url())


def test_integration_api_answers_match_the_documented_schemas(live_app):
    from webapp.admin import keys

    client = live_app.test_client()
    document = _served_document(client)
    send = functools.partial(_send, client, document, token=keys.create("product", "admin"))
    user, token = "/api/admin/users/{external_id}", "/api/admin/users/{external_id}/token"
    room, topic = (
        "/api/admin/rooms/{external_id}",
        "/api/admin/rooms/{room_external_id}/topics/{external_id}",
    )
    member = "/api/admin/topics/{topic_external_id}/members/{user_external_id}"
    carol = {"username": "carol", "display_name": "Carol", "email": "carol@example.com"}

    assert send("put", user, json=carol, external_id="u-1").status_code == 201
    assert send("put", user, json={"username": "carol"}, external_id="u-1").status_code == 200
    assert send("put", user, json={"username": "carol"}, external_id="u-2").status_code == 409
    assert send("get", user, external_id="u-1").get_json()["display_name"] is None
    assert send("get", user, external_id="nobody").status_code == 404
    assert send("get", user, external_id="not valid!").status_code == 400
    assert send("post", token, external_id="u-1").status_code == 200
    assert send("post", token, json={"ttl": 0}, external_id="u-1").status_code == 400

    assert send("put", room, json={"name": "General"}, external_id="r-1").status_code == 201
    assert send("put", room, json={"name": "Sales"}, external_id="r-2").status_code == 201
    created = send("put", topic, json={"name": "Lobby"}, room_external_id="r-1", external_id="t-1")
    assert created.status_code == 201
    moved = send("put", topic, json={"name": "Lobby"}, room_external_id="r-2", external_id="t-1")
    assert moved.status_code == 409
    assert send("put", member, topic_external_id="t-1", user_external_id="u-1").status_code == 201
    assert send("put", member, topic_external_id="t-1", user_external_id="u-1").status_code == 200

    publish = {"topic": "t-1", "sender": "u-1", "message": "hi", "idempotency_key": "k-1"}
    first = send("post", "/api/admin/messages", json=publish)
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    replay = send("post", "/api/admin/messages", json=publish)
    assert replay.headers["Idempotent-Replayed"] == "true"
    reused = send("post", "/api/admin/messages", json={**publish, "message": "other"})
    assert reused.status_code == 409

    member_ids = {"topic_external_id": "t-1", "user_external_id": "u-1"}
    assert send("delete", member, **member_ids).status_code == 204
    assert send("delete", topic, room_external_id="r-1", external_id="t-1").status_code == 204
    assert send("delete", room, external_id="r-1").status_code == 204
    assert send("delete", user, external_id="u-1").status_code == 204
    assert send("delete", user, external_id="u-1").status_code == 404

    hooks, hook = "/api/admin/webhooks", "/api/admin/webhooks/{webhook_id}"
    body = {"url": "https://hooks.example.com/beacon", "events": ["message.created"]}
    hook_id = send("post", hooks, json=body).get_json()["id"]
    assert send("post", hooks, json={**body, "url": "http://10.0.0.1/"}).status_code == 400
    assert send("get", hooks).get_json()["webhooks"][0]["id"] == hook_id
    assert send("patch", hook, json={"enabled": False}, webhook_id=hook_id).status_code == 200
    assert send("get", hook, webhook_id=hook_id).get_json()["enabled"] is False
    assert send("delete", hook, webhook_id=hook_id).status_code == 204
    assert send("get", hook, webhook_id=hook_id).status_code == 404


def test_client_state_answers_match_the_documented_schemas(live_app):
    """Issue 18's routes (catch-up, mark as unread, read receipts) and the
    ``share_read_receipts`` preference, with a real Redis (the marks announce through it)."""
    from webapp.auth import issue_token
    from webapp.extensions import db
    from webapp.models import Channel, Message, Topic, TopicMember, User

    alice, bob, carol = User(username="alice"), User(username="bob"), User(username="carol")
    room = Channel(name="general")
    db.session.add_all([alice, bob, carol, room])
    db.session.flush()
    topic = Topic(channel_id=room.id, name="launch")
    db.session.add(topic)
    db.session.flush()
    messages = [Message(topic_id=topic.id, sender_id=bob.id, body=f"m{i}") for i in range(3)]
    db.session.add_all(
        [*messages, *(TopicMember(topic_id=topic.id, user_id=u.id) for u in (alice, bob))]
    )
    db.session.commit()
    settings = live_app.extensions["beacon_settings"]
    token = {u.username: issue_token(settings, u.id) for u in (alice, bob, carol)}
    first = min(m.id for m in messages)
    topic_id = str(topic.id)
    client = live_app.test_client()
    document = _served_document(client)
    send = functools.partial(_send, client, document)
    unread, receipts = "/api/topics/{topic_id}/unread", "/api/topics/{topic_id}/receipts"

    def call(method: str, path: str, user: str, **kw: Any):
        return send(method, path, token=token[user], **kw)

    def body(method: str, path: str, user: str, **kw: Any) -> Any:
        return call(method, path, user, **kw).get_json()

    # Bob (the sender) moves his marker to just before the last message, then Alice marks
    # everything unread from the first (a marker of 0 when the first message is id 1). The
    # messages were stored here, not sent: no increment counts them (the unread count is the
    # pipeline's, not this test's).
    last = max(m.id for m in messages)
    marked = body("post", unread, "bob", json={"message_id": last}, topic_id=topic_id)
    assert marked["last_read_message_id"] == last - 1 and marked["unread_count"] == 0
    state = body("post", unread, "alice", json={"message_id": first}, topic_id=topic_id)
    assert state["last_read_message_id"] == first - 1
    assert body("get", "/api/topics", "alice")["topics"][0]["version"] == state["version"]
    schema = document["paths"][unread]["post"]["requestBody"]["content"][JSON]["schema"]
    for sent, code in (
        ({"message_id": 0}, "invalid_message_id"),
        ({"message_id": "1"}, "invalid_message_id"),
        ({"message_id": first, "topic_id": topic_id}, "unknown_field"),
    ):
        refused = call("post", unread, "alice", json=sent, topic_id=topic_id)
        assert (refused.status_code, refused.get_json()["error"]) == (400, code), sent
        assert _refused(document, schema, sent), sent
    far = {"message_id": 10**12}
    assert body("post", unread, "alice", json=far, topic_id=topic_id)["error"] == (
        "message_not_found"
    )
    mine = {"message_id": first}
    assert call("post", unread, "carol", json=mine, topic_id=topic_id).status_code == 403
    assert call("post", unread, "alice", json=mine, topic_id=str(uuid.uuid4())).status_code == 404

    seen = body("get", receipts, "alice", topic_id=topic_id)
    assert seen["enabled"] is True and [r["user_id"] for r in seen["receipts"]] == [str(bob.id)]
    assert call("get", receipts, "alice", query="limit=0", topic_id=topic_id).status_code == 400
    assert call("get", receipts, "carol", topic_id=topic_id).status_code == 403
    assert call("get", receipts, "alice", topic_id="nope").status_code == 400

    caught_up = body("get", "/api/sync", "alice")
    [row] = caught_up["topics"]
    assert len(row["messages"]) == 3 and row["receipts"][0]["user_id"] == str(bob.id)
    assert caught_up["cursor"] == last
    again = body("get", "/api/sync", "alice", query=f"since={last}")
    assert again["topics"][0]["messages"] == [] and again["cursor"] == last
    assert body("get", "/api/sync", "carol", query="since=0")["topics"] == []
    assert call("get", "/api/sync", "alice", query="since=-1").status_code == 400

    prefs = "/api/notifications/preferences"
    private = body("patch", prefs, "alice", json={"share_read_receipts": False})
    assert private["share_read_receipts"] is False
    assert call("patch", prefs, "alice", json={"share_read_receipts": "no"}).status_code == 400
    hidden = body("get", receipts, "alice", topic_id=topic_id)
    assert hidden == {"topic_id": topic_id, "enabled": False, "receipts": [], "has_more": False}
    assert body("get", "/api/sync", "alice")["receipts_enabled"] is False


@pytest.fixture
def push_app(tmp_path: Path, redis_server, vapid_keys) -> Iterator[Flask]:
    """The app with a real Redis and Web Push configured; the tests stand in for the push
    worker and the push service (nothing is sent)."""
    yield from _app(
        tmp_path,
        redis_server.new_db_url(),
        VAPID_PRIVATE_KEY=vapid_keys[0],
        VAPID_PUBLIC_KEY=vapid_keys[1],
        VAPID_SUBJECT="mailto:ops@beacon.test",
        TEST_PUSH_WAIT="0.2",
    )


class _FakeChannel:
    """A push service that takes the first device and says the others are gone."""

    def send(self, items: list[Any]) -> list[Any]:
        from webapp.delivery.channels.base import Outcome

        return [
            Outcome(201, "delivered") if i == 0 else Outcome(410, "expired", reason="gone")
            for i in range(len(items))
        ]


def test_decision_and_test_push_answers_match_the_documented_schemas(push_app, monkeypatch):
    """Issue 20's routes: ``GET /api/notifications/decisions`` over decisions recorded as the
    planning step records them (with push history rows behind the pushed ones), and ``POST
    /api/notifications/test`` with the worker run in the request (200), with no worker (202)
    and past ``RATE_LIMIT_TEST_PUSH`` (429)."""
    from webapp.auth import issue_token
    from webapp.delivery import channels, decisions, probe
    from webapp.delivery.decisions import Decision
    from webapp.extensions import db
    from webapp.models import (
        Channel,
        Message,
        PushRecord,
        PushSubscription,
        Topic,
        TopicMember,
        User,
    )
    from webapp.platform import queue

    alice, bob = User(username="alice"), User(username="bob")
    room = Channel(name="general")
    db.session.add_all([alice, bob, room])
    db.session.flush()
    topic = Topic(channel_id=room.id, name="launch")
    db.session.add(topic)
    db.session.flush()
    messages = [Message(topic_id=topic.id, sender_id=alice.id, body=f"m{i}") for i in range(5)]
    phone = PushSubscription(
        user_id=alice.id,
        endpoint="https://push.example.com/send/phone",
        p256dh="p",
        auth="a",
        user_agent="Phone",
    )
    laptop = PushSubscription(
        user_id=alice.id, endpoint="https://push.example.com/send/laptop", p256dh="p", auth="a"
    )
    db.session.add_all([*messages, phone, laptop, TopicMember(topic_id=topic.id, user_id=alice.id)])
    db.session.flush()
    ids = [m.id for m in messages]

    def record(message_id: int, subscription: PushSubscription, outcome: str, status: int):
        return PushRecord(
            user_id=alice.id,
            subscription_id=subscription.id,
            push_service="https://push.example.com",
            topic_id=topic.id,
            message_id=message_id,
            kind="message",
            outcome=outcome,
            status_code=status,
            reason=None if outcome == "delivered" else f"HTTP {status}",
        )

    db.session.add_all(
        [
            record(ids[2], phone, "delivered", 201),
            record(ids[3], phone, "failed", 403),
            record(ids[3], laptop, "expired", 410),
        ]
    )
    db.session.commit()
    devices = {str(phone.id), str(laptop.id)}
    mine = functools.partial(Decision, str(alice.id), str(topic.id))
    decisions.record(
        [
            mine(ids[0], "level", rule="topic"),
            mine(ids[1], "online", detail="idle"),
            mine(ids[2], "pushed"),
            mine(ids[3], "pushed"),
            mine(ids[4], "coalesced"),  # its window is still open
            # Bob's, of a topic he is not a member of: never shown to anyone.
            Decision(str(bob.id), str(topic.id), ids[4], "no_device"),
        ]
    )
    settings = push_app.extensions["beacon_settings"]
    token = {u.username: issue_token(settings, u.id) for u in (alice, bob)}
    client = push_app.test_client()
    document = _served_document(client)
    send = functools.partial(_send, client, document)
    path = "/api/notifications/decisions"
    topic_id = str(topic.id)

    def call(user: str, query: str = "", method: str = "get", route: str = path):
        return send(method, route, token=token[user], query=query)

    page = call("alice", "limit=3").get_json()
    kinds = [(d["message_id"], d["decision"], d["carried_by"]) for d in page["decisions"]]
    assert kinds == [
        (ids[4], "coalesced", None),
        (ids[3], "failed", None),
        (ids[2], "pushed", None),
    ]
    assert page["next_before"] == ids[2]
    failed, pushed = page["decisions"][1], page["decisions"][2]
    assert sorted(d["outcome"] for d in failed["deliveries"]) == ["expired", "failed"]
    assert [(d["device_label"], d["status"]) for d in pushed["deliveries"]] == [("Phone", 201)]
    rest = call("alice", f"before={page['next_before']}&topic_id={topic_id}").get_json()
    assert [(d["decision"], d["rule"], d["detail"]) for d in rest["decisions"]] == [
        ("online", None, "idle"),
        ("level", "topic", None),
    ]
    assert rest["next_before"] is None
    assert call("bob").get_json() == {"decisions": [], "next_before": None}
    for query, code in (
        ("limit=0", "invalid_limit"),
        (f"limit={decisions.KEEP + 1}", "invalid_limit"),
        ("before=0", "invalid_before"),
        ("before=x", "invalid_before"),
        ("topic_id=nope", "invalid_topic_id"),
    ):
        refused = call("alice", query)
        assert (refused.status_code, refused.get_json()["error"]) == (400, code), query
    assert call("bob", f"topic_id={topic_id}").get_json()["error"] == "not_a_member"
    assert call("alice", f"topic_id={uuid.uuid4()}").status_code == 404

    # The test push: the worker's side runs in the request (so the web's wait finds the result
    # at once), over a push service that takes the first device and says the other is gone.
    test = "/api/notifications/test"
    monkeypatch.setattr(channels, "get", lambda name: _FakeChannel())
    monkeypatch.setattr(
        queue, "test_push", lambda user_id, job_id: probe.send(uuid.UUID(user_id), job_id)
    )
    done = call("alice", method="post", route=test).get_json()
    assert done["done"] is True and len(done["job_id"]) == 32
    outcomes = {d["device_id"]: d["outcome"] for d in done["deliveries"]}
    assert sorted(outcomes.values()) == ["delivered", "expired"]
    assert set(outcomes) == devices
    # The device the push service said was gone is deleted, as after any push.
    listed = call("alice", route="/api/notifications/subscriptions").get_json()["subscriptions"]
    assert [s["id"] for s in listed] == [d for d, o in outcomes.items() if o == "delivered"]
    assert call("bob", method="post", route=test).get_json()["deliveries"] == []
    # No worker answers within TEST_PUSH_WAIT: 202 with the job id.
    monkeypatch.setattr(queue, "test_push", lambda user_id, job_id: None)
    pending = call("alice", method="post", route=test)
    assert pending.status_code == 202 and pending.get_json()["done"] is False
    assert call("alice", method="post", route=test).status_code == 202
    limited = call("alice", method="post", route=test)  # RATE_LIMIT_TEST_PUSH: 3 a minute
    assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1


def test_a_test_push_without_a_push_channel_is_the_documented_503(live_app):
    from webapp.auth import issue_token
    from webapp.extensions import db
    from webapp.models import User

    alice = User(username="alice")
    db.session.add(alice)
    db.session.commit()
    token = issue_token(live_app.extensions["beacon_settings"], alice.id)
    client = live_app.test_client()
    refused = _send(
        client, _served_document(client), "post", "/api/notifications/test", token=token
    )
    assert refused.status_code == 503 and refused.get_json()["error"] == "push_disabled"
