"""Who may call the integration API: service keys only on ``/api/admin``, a key of scope
``admin`` to provision (a ``publish`` key only publishes), users' tokens only on the user
routes, and a token the API minted for one user reads that user's data alone.

Every refused call names real things (Alice's user, room and topic, Bob's membership, the
product's webhook) with a body that would change them, and afterwards every table the API
writes is exactly as before, row by row. The routes are read from the app's URL map, so a new
route that is not listed here, or not behind its decorator, fails these tests.
"""

from __future__ import annotations

import inspect
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import requests

from tests.security.conftest import AdminWorld

# What the report shows of each route, under /api/admin.
ADMIN = "/api/admin"


@dataclass(frozen=True)
class AdminCall:
    endpoint: str  # the Flask endpoint: every /api/admin rule must have a call here
    method: str
    path: str  # under /api/admin, with the world's ids
    shown: str  # the route as the report shows it
    target: str  # what it names, and what it would do
    body: Any = None
    scope: str = "admin"  # the scope the route takes

    def send(self, world: AdminWorld, credential: str | None, **kw: Any) -> requests.Response:
        if self.body is not None:
            kw.setdefault("json", self.body)
        return world.call(credential, self.method, self.path, **kw)


def admin_calls(w: AdminWorld) -> list[AdminCall]:
    """Every /api/admin route, aimed at Alice's things (or the product's webhook)."""
    user, room = f"/users/{w.alice_ext}", f"/rooms/{w.room_ext}"
    topic, members = f"{room}/topics/{w.topic_ext}", f"/topics/{w.topic_ext}/members"
    hook = f"/webhooks/{w.hook_id}"
    forged = {"topic": w.topic_ext, "sender": w.alice_ext, "message": "forged"}
    steal = {"url": "https://hooks.example.com/steal", "events": ["message.created"]}
    return [
        AdminCall(
            "admin.put_user", "PUT", user, "/users/<ext>", "user (rename)", {"username": "m"}
        ),
        AdminCall("admin.get_user", "GET", user, "/users/<ext>", "user (read)"),
        AdminCall("admin.delete_user", "DELETE", user, "/users/<ext>", "user (erase)"),
        AdminCall(
            "admin.user_token", "POST", f"{user}/token", "/users/<ext>/token", "user (a token)", {}
        ),
        AdminCall("admin.put_room", "PUT", room, "/rooms/<ext>", "room (rename)", {"name": "x"}),
        AdminCall("admin.delete_room", "DELETE", room, "/rooms/<ext>", "room (delete)"),
        AdminCall(
            "admin.put_topic",
            "PUT",
            topic,
            "/rooms/<room>/topics/<ext>",
            "topic (rename)",
            {"name": "x"},
        ),
        AdminCall(
            "admin.delete_topic", "DELETE", topic, "/rooms/<room>/topics/<ext>", "topic (delete)"
        ),
        AdminCall(
            "admin.put_member",
            "PUT",
            f"{members}/{w.carol_ext}",
            "/topics/<topic>/members/<user>",
            "topic (add Carol)",
        ),
        AdminCall(
            "admin.delete_member",
            "DELETE",
            f"{members}/{w.bob_ext}",
            "/topics/<topic>/members/<user>",
            "topic (remove Bob)",
        ),
        AdminCall(
            "admin.publish_message",
            "POST",
            "/messages",
            "/messages",
            "topic (post as Alice)",
            forged,
            scope="publish",
        ),
        AdminCall(
            "admin_webhooks.create", "POST", "/webhooks", "/webhooks", "webhooks (add)", steal
        ),
        AdminCall("admin_webhooks.list_hooks", "GET", "/webhooks", "/webhooks", "webhooks (list)"),
        AdminCall("admin_webhooks.get", "GET", hook, "/webhooks/<id>", "webhook (read)"),
        AdminCall(
            "admin_webhooks.set_enabled",
            "PATCH",
            hook,
            "/webhooks/<id>",
            "webhook (enable)",
            {"enabled": True},
        ),
        AdminCall("admin_webhooks.delete", "DELETE", hook, "/webhooks/<id>", "webhook (delete)"),
    ]


def _decorated_by(view: Any) -> tuple[str, str | None]:
    """("key", scope) for a view behind ``require_key(scope)``, ("user", None) behind
    ``require_user``, ("none", None) otherwise."""
    from webapp.admin.keys import require_key
    from webapp.auth import require_user

    code = getattr(view, "__code__", None)
    if code is require_key("admin")(lambda: None).__code__:
        return "key", inspect.getclosurevars(view).nonlocals["scope"]
    if code is require_user(lambda: None).__code__:
        return "user", None
    return "none", None


def _rules(world: AdminWorld) -> list[tuple[str, str, str]]:
    """(endpoint, method, rule) of every route of the app."""
    app = world.stack.app
    return [
        (rule.endpoint, method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"})
    ]


# Routes that take no credential at all (probes, the demo page, this API's own description,
# development login; the email unsubscribe link, whose signed token is its credential):
# everything else under /api must be a user route or an admin route.
PUBLIC = {
    "/api/notifications/vapid-public-key",
    "/api/openapi.json",
    "/api/dev/token",
    "/api/dev/users",
    "/api/email/unsubscribe",
}


def test_every_route_is_behind_its_credential(admin_world):
    """Static half of the matrix: each /api/admin rule is behind ``require_key`` with the
    scope listed here (only publishing takes ``publish``), each other /api rule behind
    ``require_user`` unless public; and every /api/admin rule has a call in this file."""
    calls = {c.endpoint: c for c in admin_calls(admin_world)}
    app = admin_world.stack.app
    for endpoint, _method, rule in _rules(admin_world):
        kind, scope = _decorated_by(app.view_functions[endpoint])
        if rule.startswith(ADMIN + "/") or rule == ADMIN:
            assert endpoint in calls, f"{rule} ({endpoint}) is not covered by admin_calls()"
            assert (kind, scope) == ("key", calls[endpoint].scope), (rule, kind, scope)
        elif rule.startswith("/api/") and rule not in PUBLIC:
            assert kind == "user", f"{rule} takes no user token"


def test_only_service_keys_reach_the_integration_api(admin_world, reliability):
    w = admin_world
    calls = admin_calls(w)
    before = w.everything()
    tallies: dict[str, Counter[str]] = {}

    def expect(
        label: str,
        credential: str | None,
        status: int,
        code: str,
        routes: list[AdminCall] = calls,
        **kw: Any,
    ) -> None:
        tally = tallies.setdefault(label, Counter())
        for call in routes:
            response = call.send(w, credential, **kw)
            body = response.json()
            observed = f"{response.status_code} {body.get('error')}"
            tally[observed] += 1
            assert (response.status_code, body.get("error")) == (status, code), (
                label,
                call.method,
                call.path,
                response.text,
            )
            assert isinstance(body.get("message"), str) and body["message"], body

    # Mallory's own JWT, on every route, with Alice's ids: the matrix, one row a route.
    for call in calls:
        response = call.send(w, w.mallory.token)
        body = response.json()
        observed = f"{response.status_code} {body.get('error', '')}".strip()
        reliability.matrix(
            f"{call.method} {ADMIN}{call.shown}",
            f"{call.target}, with Mallory's JWT",
            expected="403 service_key_required",
            observed=observed,
        )
        assert observed == "403 service_key_required", (call.method, call.path, response.text)

    # Tokens the API itself minted are users' tokens too; so is, by its prefix, any bearer
    # that is not a key (keys.py: neither credential is ever tried as the other).
    for token in (w.alice.token, "a.b.c", "garbage"):
        expect("minted", token, 403, "service_key_required")

    # No credential: no header, another scheme (the real key included), an empty bearer.
    for header in ("", "Basic YWRtaW46YWRtaW4=", "Bearer", "Bearer ", f"Token {w.admin_key}"):
        expect("none", None, 401, "missing_key", headers={"Authorization": header})
    expect("none", None, 401, "missing_key")

    # Keys that are not keys: the prefix alone, random, oversized, the admin key altered,
    # a revoked one.
    revoked_name, revoked = w.new_key("admin")
    assert w.call(revoked, "GET", f"/users/{w.alice_ext}").status_code == 200
    w.revoke(revoked_name)
    altered = w.admin_key[:-1] + ("A" if w.admin_key[-1] != "A" else "B")
    for key in ("bk_", "bk_" + uuid.uuid4().hex, "bk_" + "x" * 10_000, altered, revoked):
        expect("invalid", key, 401, "invalid_key")

    # A publish key: refused on every provisioning and webhook route.
    publishing = [c for c in calls if c.scope == "publish"]
    provisioning = [c for c in calls if c.scope == "admin"]
    expect("publish", w.publish_key, 403, "insufficient_scope", provisioning)

    after = w.everything()
    assert after == before, "a refused call changed the database"

    # ...and the same key publishes (as a member only), which is all it can do.
    published: Counter[str] = Counter()
    for call in publishing:
        response = call.send(w, w.publish_key)
        assert response.status_code == 201, response.text
        published[f"{call.method} {ADMIN}{call.shown} {response.status_code}"] += 1
    assert w.everything()["messages"][0] == before["messages"][0] + 1

    n = len(calls)
    reliability.record(
        "tokens",
        f"no credential on every `/api/admin` route ({n}): no header, `Basic`, an empty "
        "bearer, the key under another scheme",
        expected="401 `missing_key` JSON; nothing changed",
        observed=tallies["none"],
    )
    reliability.record(
        "tokens",
        f"`bk_` keys that are not keys on every `/api/admin` route ({n}): the prefix alone, "
        "random, 10 KB, the admin key with its last character changed, a revoked key",
        expected="401 `invalid_key` JSON; nothing changed",
        observed=tallies["invalid"],
    )
    reliability.record(
        "tokens",
        f"a user's token the API minted (`POST .../token`) on every `/api/admin` route ({n}); "
        "bearers without the `bk_` prefix (`a.b.c`, `garbage`)",
        expected="403 `service_key_required`; nothing changed",
        observed=tallies["minted"],
    )
    reliability.record(
        "tokens",
        f"a `publish` key on every provisioning and webhook route ({len(provisioning)}), then on "
        "`POST /api/admin/messages`",
        expected="403 `insufficient_scope`; nothing changed; publishing accepted",
        observed=tallies["publish"] + published,
    )


def _fill(rule: str, world: AdminWorld) -> str:
    """A user route with Alice's ids in its path."""
    return (
        rule.replace("<topic_id>", world.topic.topic_id)
        .replace("<room_id>", world.topic.room_id)
        .replace("<subscription_id>", str(uuid.uuid4()))
    )


def test_service_keys_are_refused_on_user_routes(admin_world, reliability):
    w = admin_world
    app = w.stack.app
    user_routes = [
        (method, rule)
        for endpoint, method, rule in _rules(w)
        if _decorated_by(app.view_functions[endpoint])[0] == "user"
    ]
    assert len(user_routes) >= 10, user_routes
    before = w.everything()
    tally: Counter[str] = Counter()
    for key in (w.admin_key, w.publish_key):
        for method, rule in user_routes:
            body = {"level": "none"} if "preferences/" in rule and method == "PUT" else {}
            response = requests.request(
                method,
                w.stack.url + _fill(rule, w),
                headers={"Authorization": f"Bearer {key}"},
                json=body if method in ("POST", "PUT", "PATCH", "DELETE") else None,
                timeout=10,
            )
            answer = response.json()
            tally[f"{response.status_code} {answer.get('error')}"] += 1
            assert (response.status_code, answer.get("error")) == (403, "user_token_required"), (
                method,
                rule,
                response.text,
            )
    # Nor is a key a token for Socket.IO.
    client = w.stack.new_client("with-a-key")
    ok, error = client.try_connect(w.stack.url, w.admin_key)
    sio = "connected" if ok else (error or {}).get("data", {}).get("error")
    tally[f"Socket.IO connect {sio}"] += 1
    assert not ok and sio == "user_token_required", error
    assert w.everything() == before
    reliability.record(
        "tokens",
        f"the `admin` and `publish` keys on every user route ({len(user_routes)}), and as a "
        "Socket.IO token",
        expected="403 `user_token_required`; Socket.IO refused `user_token_required`",
        observed=tally,
    )


def test_a_minted_token_reads_only_its_users_data(admin_world, reliability):
    """Alice's token, minted by the API, is Alice: Bob's own topic (in another room) and
    his membership data stay out of her reach, on REST and Socket.IO."""
    w = admin_world
    minted = w.admin("POST", f"/users/{w.alice_ext}/token", json={"ttl": 300})
    assert minted.status_code == 200, minted.text
    token = minted.json()["token"]
    before = w.state()

    def rest(method: str, path: str, **kw: Any) -> requests.Response:
        return requests.request(
            method,
            w.stack.url + path,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
            **kw,
        )

    def cell(operation: str, target: str, expected: str, observed: str) -> None:
        reliability.matrix(
            operation,
            f"{target}, with a token minted for Alice",
            expected=expected,
            observed=observed,
        )
        assert observed == expected, (operation, target, observed)

    me = rest("GET", "/api/users/me").json()
    cell(
        "GET /api/users/me",
        "identity",
        "200, herself",
        "200, herself" if me["user_id"] == w.alice.id else f"200, {me}",
    )
    listed = [t["topic_id"] for t in rest("GET", "/api/topics").json()["topics"]]
    leaked = [t for t in listed if t != w.topic.topic_id]
    cell(
        "GET /api/topics",
        "Bob's own topic (listing)",
        "200, only her own",
        "200, only her own" if listed == [w.topic.topic_id] else f"200, leaked {leaked}",
    )
    page = rest("GET", f"/api/topics/{w.bob_topic.topic_id}/messages")
    cell(
        "GET /api/topics/<topic>/messages",
        "Bob's own topic",
        "403 not_a_member",
        f"{page.status_code} {page.json().get('error')}",
    )
    prefs = rest(
        "PUT",
        f"/api/notifications/preferences/topics/{w.bob_topic.topic_id}",
        json={"level": "none"},
    )
    cell(
        "PUT /api/notifications/preferences/topics/<topic>",
        "Bob's own topic",
        "403 not_a_member",
        f"{prefs.status_code} {prefs.json().get('error')}",
    )
    client = w.stack.new_client("alice-minted")
    client.connect(w.stack.url, token)
    ack = client.call("join_topic", w.bob_topic.ref())
    cell("join_topic", "Bob's own topic", "not_a_member", "ok" if ack.get("ok") else ack["error"])
    sent = client.call("send_message", w.bob_topic.ref(message="hi"))
    cell(
        "send_message", "Bob's own topic", "not_a_member", "ok" if sent.get("ok") else sent["error"]
    )
    # Her own topic works with the same token: the refusals above are about Bob's.
    assert client.call("join_topic", w.topic.ref())["ok"]
    assert w.state() == before
    own = rest("GET", f"/api/topics/{w.topic.topic_id}/messages").json()["messages"]
    assert sorted(m["id"] for m in own) == sorted(w.message_ids)
