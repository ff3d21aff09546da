"""Hostile input against the integration API (``/api/admin``), sent with a valid ``admin`` key:
the product's backend is trusted with its data, not with its input, which may come from its own
users (a username, a slug used as an external id...).

Fuzzed external ids in every path (spellings of real ids that are not them, dot segments,
separators, NUL, unicode, 3000 characters), fuzzed bodies for every route that takes one, and
bodies over 64 KiB. Every answer must be a success or a 4xx JSON ``{error, message}`` whose
code the OpenAPI document lists for the route the server saw (a refusal nobody documented is
a finding too); never a 5xx, never a hang (10 s), and afterwards the server still answers and
nothing of Alice's and Bob's (users, rooms, topics, memberships, messages) has changed.
"""

from __future__ import annotations

import http.client
import json
import re
import uuid
from collections import Counter
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
from hypothesis import example, given, settings
from hypothesis import strategies as st
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from tests.security.conftest import AdminWorld
from tests.security.strategies import (
    CONTENT_TYPES,
    EDGE_STRINGS,
    HOSTILE_ENDPOINTS,
    external_ids,
    huge_texts,
    json_values,
    payloads,
    raw,
    raw_bodies,
    segment,
    texts,
)

EXPECTED = (
    "2xx, or 4xx JSON {error, message} with a code documented for the route; never 5xx, "
    "never a hang; nothing of Alice's changed"
)
LIMIT = 64 * 1024  # MAX_CONTENT_LENGTH
# Werkzeug's ``<name>`` is OpenAPI's ``{name}``; a documented code is written `like_this`.
RULE_ARGUMENT = re.compile(r"<(?:[^<>:]+:)?([^<>:]+)>")
CODE = re.compile(r"`([a-z][a-z0-9_]*)`")


class Documented:
    """The refusals ``/api/openapi.json`` lists for each route, and which route the server
    routes a request to once it has decoded the path (``%2F`` is a ``/`` to it)."""

    def __init__(self, world: AdminWorld) -> None:
        document = requests.get(world.stack.url + "/api/openapi.json", timeout=10).json()
        self.codes: dict[tuple[str, str], dict[int, set[str]]] = {}
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                if not isinstance(operation, dict) or "responses" not in operation:
                    continue
                self.codes[(method.upper(), path)] = {
                    int(status): set(CODE.findall(answer.get("description", "")))
                    for status, answer in operation["responses"].items()
                    if status.isdigit() and int(status) >= 400
                }
        self.adapter = world.stack.app.url_map.bind("localhost")

    def route(self, method: str, url: str) -> tuple[str, dict[int, set[str]]]:
        """The route a request reaches and the refusals documented for it. On every route,
        NUL in the query string is ``400 invalid_text`` (the document's preamble says so)."""
        path = unquote(urlsplit(url).path, errors="replace")
        nul_in_query = {400: {"invalid_text"}}
        try:
            rule, _args = self.adapter.match(path, method=method, return_rule=True)
        except NotFound:
            return "(no route)", {404: {"not_found"}, **nul_in_query}
        except MethodNotAllowed:
            return "(other method)", {405: {"method_not_allowed"}, **nul_in_query}
        except RequestRedirect as redirect:
            raise AssertionError(f"{method} {path} redirects to {redirect.new_url}") from None
        name = RULE_ARGUMENT.sub(r"{\1}", rule.rule)
        assert (method, name) in self.codes, f"{method} {name} is not in the OpenAPI document"
        codes = dict(self.codes[(method, name)])
        codes[400] = codes.get(400, set()) | nul_in_query[400]
        return f"{method} {name}", codes


def check(documented: Documented, response: requests.Response, tally: Counter[str]) -> None:
    """A success or a documented JSON refusal; a success names only what the path named."""
    method = response.request.method or "GET"
    route, codes = documented.route(method, response.request.url or "")
    status = response.status_code
    assert status < 500, (route, status, response.text[:300])
    # A client follows a 307/308 with the same method and body: to another resource, here.
    assert not 300 <= status < 400, (route, status, response.headers.get("Location"))
    if status >= 400:
        body = response.json()
        assert isinstance(body.get("error"), str) and body["error"], body
        assert isinstance(body.get("message"), str) and body["message"], body
        assert body["error"] in codes.get(status, set()), (
            f"{route} answered {status} {body['error']}, documented: {codes.get(status)}"
        )
        tally[f"{status} {body['error']}"] += 1
        return
    if response.content and "application/json" in response.headers.get("Content-Type", ""):
        named = set(unquote(urlsplit(response.request.url or "").path).split("/"))
        answer = response.json()
        found = {k: v for k, v in answer.items() if k.endswith("external_id")}
        assert set(found.values()) <= named, (route, found, named)
    tally[str(status)] += 1


def _methods(*mine: str) -> st.SearchStrategy[str]:
    """Mostly the route's own methods, sometimes any other."""
    others = ["GET", "PUT", "POST", "PATCH", "DELETE"]
    return st.one_of(st.sampled_from(mine), st.sampled_from(others))


def test_fuzzed_external_ids_in_paths(admin_world, reliability):
    """Every route with an id in its path; the other id of two-id routes is a scratch one
    (so that a well-formed id may succeed without touching Alice's things)."""
    w = admin_world
    documented = Documented(w)
    before = w.state()
    tally: Counter[str] = Counter()
    ids = external_ids(
        w.alice_ext, w.bob_ext, w.carol_ext, w.room_ext, w.topic_ext, w.bob_topic_ext
    )
    hook_ids = st.one_of(st.uuids().map(str), ids)
    routes = {
        "user": ("/users/{}", _methods("PUT", "GET", "DELETE")),
        "token": ("/users/{}/token", _methods("POST")),
        "room": ("/rooms/{}", _methods("PUT", "DELETE")),
        "topic in room": ("/rooms/{}/topics/" + w.scratch_topic_ext, _methods("PUT", "DELETE")),
        "topic": (f"/rooms/{w.scratch_room_ext}/topics/{{}}", _methods("PUT", "DELETE")),
        "members of": ("/topics/{}/members/" + w.carol_ext, _methods("PUT", "DELETE")),
        "member": (f"/topics/{w.scratch_topic_ext}/members/{{}}", _methods("PUT", "DELETE")),
        "webhook": ("/webhooks/{}", _methods("GET", "PATCH", "DELETE")),
    }

    def body(path: str, method: str) -> Any:
        """A valid body for the route: the path is what is on trial."""
        if method not in ("PUT", "POST", "PATCH"):
            return None
        if path.startswith("/users/") and path.endswith("/token"):
            return {"ttl": 60}
        if path.startswith("/users/"):
            return {"username": f"fz{uuid.uuid4().hex[:12]}"}
        if "/topics/" in path and path.startswith("/rooms/"):
            return {"name": f"fuzz {uuid.uuid4().hex[:8]}"}
        if path.startswith("/rooms/"):
            return {"name": "fuzzed"}
        if path.startswith("/webhooks/"):
            return {"enabled": False}
        return None

    calls = st.sampled_from(sorted(routes)).flatmap(
        lambda name: st.tuples(st.just(name), routes[name][1])
    )

    # Pinned: dot segments (a misrouted "/rooms/<room>/topics/.." would be "/rooms/<room>"),
    # NUL, an encoded "/" that reaches another route, the case of a real id, NUL in a query.
    @example(("topic", "DELETE"), "..", None)
    @example(("topic", "PUT"), ".", None)
    @example(("user", "PUT"), "..", None)
    @example(("user", "GET"), "\x00", None)
    @example(("room", "PUT"), f"{w.scratch_room_ext}/topics/{w.scratch_topic_ext}", None)
    @example(("user", "DELETE"), w.alice_ext.upper(), None)
    @example(("user", "GET"), "x", "\x00")
    @settings(settings.get_profile("beacon-security"), max_examples=150)
    @given(calls, ids, st.one_of(st.none(), texts))
    def case(call, ext, query):
        route, method = call
        path = routes[route][0].format(segment(ext))
        response = w.admin(
            method,
            path,
            json=body(path, method),
            params=None if query is None else {"q": raw(query)},
        )
        check(documented, response, tally)

    case()

    @example(w.hook_id.upper(), "GET")
    @settings(settings.get_profile("beacon-security"), max_examples=30)
    @given(hook_ids, _methods("GET", "PATCH", "DELETE"))
    def hook_case(hook, method):
        response = w.admin(method, f"/webhooks/{segment(hook)}", json=body("/webhooks/", method))
        check(documented, response, tally)

    hook_case()
    w.assert_answering()
    assert w.state() == before, "a fuzzed id reached Alice's or Bob's things"
    reliability.record(
        "input",
        "`/api/admin` external ids in paths: spellings of real ids, dot segments, `%2F`, NUL, "
        "unicode, 3000 characters; any method (hypothesis)",
        expected=EXPECTED,
        observed=tally,
    )


def test_fuzzed_admin_bodies(admin_world, reliability):
    """Every route that takes a body, with the right path: bodies of every shape and type,
    unknown fields, huge strings, deep nesting, raw bytes under any content type."""
    w = admin_world
    documented = Documented(w)
    before = w.state()
    tally: Counter[str] = Counter()
    created_hooks: list[str] = []
    scratch_user = f"fz-{uuid.uuid4().hex[:8]}"
    names = st.one_of(texts, huge_texts, json_values, st.sampled_from(EDGE_STRINGS))
    users = payloads(
        {
            "username": st.one_of(
                st.sampled_from([w.alice.username, w.bob.username, w.mallory.username]),
                st.from_regex(r"fz[a-z0-9]{1,10}", fullmatch=True),
                names,
            ),
            "display_name": names,
            "email": st.one_of(
                st.sampled_from(["a@example.com", "a@b", "@x.y", "a@@x.y", "a@x.y" + "y" * 300]),
                names,
            ),
        },
        binary=False,
    )
    ttl = payloads(
        {"ttl": st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([1, 2592000]), names)},
        binary=False,
    )
    named = payloads({"name": names}, binary=False)
    ids = external_ids(w.alice_ext, w.topic_ext)
    message = payloads(
        {
            "topic": st.one_of(st.just(w.scratch_topic_ext), ids, json_values),
            "sender": st.one_of(st.just(w.carol_ext), ids, json_values),
            "message": st.one_of(texts, huge_texts, json_values),
            "idempotency_key": st.one_of(st.none(), texts, huge_texts, json_values),
        },
        binary=False,
    )
    hook = payloads(
        {
            "url": st.one_of(
                st.sampled_from([*HOSTILE_ENDPOINTS, "https://hooks.example.com/fuzz"]), names
            ),
            "events": st.one_of(
                st.lists(st.sampled_from(["message.created", "user.online", "nope"]), max_size=3),
                json_values,
            ),
        },
        binary=False,
    )
    enabled = payloads({"enabled": json_values}, binary=False)
    routes = {
        "user": ("PUT", f"/users/{scratch_user}", users),
        "token": ("POST", f"/users/{w.alice_ext}/token", ttl),
        "room": ("PUT", f"/rooms/{w.scratch_room_ext}", named),
        "topic": ("PUT", f"/rooms/{w.scratch_room_ext}/topics/{w.scratch_topic_ext}", named),
        "message": ("POST", "/messages", message),
        "new webhook": ("POST", "/webhooks", hook),
        # A random id: the body is parsed first, and nothing is ever enabled.
        "webhook": ("PATCH", f"/webhooks/{uuid.uuid4()}", enabled),
    }
    strategies = [
        st.tuples(st.just(name), strategy.map(lambda b: ("json", b)))
        for name, (_method, _path, strategy) in routes.items()
    ]
    raw_calls = st.tuples(
        st.sampled_from(sorted(routes)),
        st.tuples(raw_bodies(), st.sampled_from(CONTENT_TYPES)).map(lambda t: ("raw", t)),
    )

    # Pinned: bodies that are JSON but not objects, where a route reads "no body" as {}.
    @example(("token", ("json", [])))
    @example(("token", ("json", 0)))
    @example(("token", ("json", False)))
    @example(("token", ("json", "")))
    @example(("user", ("json", {"username": "a", "email": "a@x.y" + "y" * 300})))
    @example(("message", ("json", {"topic": w.scratch_topic_ext, "sender": w.carol_ext})))
    @settings(settings.get_profile("beacon-security"), max_examples=200)
    @given(st.one_of(*strategies, raw_calls))
    def case(call):
        name, (kind, value) = call
        method, path, _strategy = routes[name]
        if kind == "json":
            response = w.admin(method, path, json=value)
        else:
            data, content_type = value
            headers = {"Content-Type": content_type} if content_type else {}
            response = w.admin(method, path, data=data, headers=headers)
        check(documented, response, tally)
        if name == "new webhook" and response.status_code == 201:
            created_hooks.append(response.json()["id"])
            assert w.admin("DELETE", f"/webhooks/{created_hooks[-1]}").status_code == 204
        if name == "token" and kind == "json" and response.status_code == 200:
            assert value is None or isinstance(value, dict), f"a token for the body {value!r}"

    case()
    w.assert_answering()
    assert w.state() == before, "a fuzzed body changed Alice's or Bob's things"
    reliability.record(
        "input",
        "`/api/admin` bodies of every route that takes one: wrong types, unknown fields, huge "
        "strings, deep nesting, non-objects, raw bytes (hypothesis)",
        expected=EXPECTED,
        observed=tally,
    )


def test_unknown_external_ids_are_404_with_the_documented_code(admin_world, reliability):
    """Well-formed ids of nothing (never created, deleted, another case, another room's
    topic): the route's own 404 code, nothing changed."""
    w = admin_world
    gone_ext = f"gone-{uuid.uuid4().hex[:8]}"
    made = w.admin("PUT", f"/users/{gone_ext}", json={"username": gone_ext})
    assert made.status_code == 201, made.text
    assert w.admin("DELETE", f"/users/{gone_ext}").status_code == 204
    before = w.everything()
    nobody, alice_case = f"nobody-{uuid.uuid4().hex[:8]}", w.alice_ext.upper()
    room, topic = w.room_ext, w.topic_ext
    message = {"topic": topic, "sender": w.alice_ext, "message": "hi"}
    cases = [
        ("GET", f"/users/{nobody}", None, "user_not_found"),
        ("GET", f"/users/{gone_ext}", None, "user_not_found"),
        ("GET", f"/users/{alice_case}", None, "user_not_found"),
        ("DELETE", f"/users/{nobody}", None, "user_not_found"),
        ("DELETE", f"/users/{gone_ext}", None, "user_not_found"),
        ("POST", f"/users/{nobody}/token", {}, "user_not_found"),
        ("POST", f"/users/{gone_ext}/token", {"ttl": 60}, "user_not_found"),
        ("DELETE", f"/rooms/{nobody}", None, "room_not_found"),
        ("DELETE", f"/rooms/{room.upper()}", None, "room_not_found"),
        ("PUT", f"/rooms/{nobody}/topics/{nobody}", {"name": "x"}, "room_not_found"),
        ("DELETE", f"/rooms/{nobody}/topics/{topic}", None, "room_not_found"),
        ("DELETE", f"/rooms/{room}/topics/{nobody}", None, "topic_not_found"),
        ("DELETE", f"/rooms/{room}/topics/{topic.upper()}", None, "topic_not_found"),
        # Alice's topic named under another room: not found there (not "forbidden").
        ("DELETE", f"/rooms/{w.scratch_room_ext}/topics/{topic}", None, "topic_not_found"),
        ("PUT", f"/topics/{nobody}/members/{w.carol_ext}", None, "topic_not_found"),
        ("PUT", f"/topics/{topic}/members/{nobody}", None, "user_not_found"),
        ("PUT", f"/topics/{topic}/members/{gone_ext}", None, "user_not_found"),
        ("DELETE", f"/topics/{nobody}/members/{w.bob_ext}", None, "topic_not_found"),
        ("DELETE", f"/topics/{topic}/members/{w.bob_ext.upper()}", None, "user_not_found"),
        ("POST", "/messages", {**message, "topic": nobody}, "topic_not_found"),
        ("POST", "/messages", {**message, "sender": nobody}, "user_not_found"),
        ("POST", "/messages", {**message, "sender": gone_ext}, "user_not_found"),
        ("GET", f"/webhooks/{uuid.uuid4()}", None, "webhook_not_found"),
        ("PATCH", f"/webhooks/{uuid.uuid4()}", {"enabled": False}, "webhook_not_found"),
        ("DELETE", f"/webhooks/{uuid.uuid4()}", None, "webhook_not_found"),
    ]
    documented = Documented(w)
    tally: Counter[str] = Counter()
    for method, path, body, code in cases:
        response = w.admin(method, path, json=body)
        check(documented, response, tally)
        assert (response.status_code, response.json()["error"]) == (404, code), (
            method,
            path,
            response.text,
        )
    assert w.everything() == before, "a 404 changed the database"
    reliability.record(
        "input",
        "`/api/admin` well-formed external ids of nothing: never created, deleted, another "
        "case of a real id, a topic named under another room; webhook ids",
        expected="404 `user_not_found` / `room_not_found` / `topic_not_found` / "
        "`webhook_not_found` as documented for the route; nothing changed",
        observed=tally,
    )


def test_dot_segments_are_not_external_ids(admin_world, reliability):
    """``.`` and ``..`` match the id pattern's characters but are dot segments in a URL:
    clients and proxies resolve them, so a topic ``..`` of room R is ``/rooms/R`` to them (its
    DELETE would delete the room). They are refused wherever an id is taken, path or body."""
    w = admin_world
    documented = Documented(w)
    before = w.everything()
    room, topic = w.scratch_room_ext, w.scratch_topic_ext
    message = {"topic": topic, "sender": w.carol_ext, "message": "hi"}
    tally: Counter[str] = Counter()
    for dots in (".", ".."):
        seg = segment(dots)
        cases = [
            ("PUT", f"/users/{seg}", {"username": f"dots{uuid.uuid4().hex[:8]}"}, "external_id"),
            ("PUT", f"/rooms/{seg}", {"name": "dots"}, "external_id"),
            ("PUT", f"/rooms/{room}/topics/{seg}", {"name": "dots"}, "external_id"),
            ("PUT", f"/rooms/{seg}/topics/{topic}", {"name": "dots"}, "room_external_id"),
            ("PUT", f"/topics/{topic}/members/{seg}", None, "user_external_id"),
            ("POST", "/messages", {**message, "topic": dots}, "topic"),
            ("POST", "/messages", {**message, "sender": dots}, "sender"),
        ]
        for method, path, body, field in cases:
            response = w.admin(method, path, json=body)
            check(documented, response, tally)
            assert (response.status_code, response.json()["error"]) == (400, f"invalid_{field}"), (
                method,
                path,
                body,
                response.text,
            )
    assert w.everything() == before
    reliability.record(
        "input",
        "`.` and `..` as external ids (path segments sent as `%2E`, and in bodies)",
        expected="400 `invalid_<field>`: not ids (a client resolves them); nothing created",
        observed=tally,
    )


def test_an_encoded_slash_never_reaches_the_neighbouring_id(admin_world, reliability):
    """The server decodes ``%2F`` to ``/`` before routing, so an id that starts or ends with
    one leaves an empty segment (``/topics/t//members/c``). Werkzeug's default answer to that
    is a 308 towards the path without it, which clients follow with the same method and body:
    the request would act on Alice's things by their real ids. It is refused where it is."""
    w = admin_world
    documented = Documented(w)
    before = w.everything()
    members = f"/topics/{w.topic_ext}/members"
    cases = [
        ("PUT", f"/topics/{w.topic_ext}%2F/members/{w.carol_ext}", None),  # add Carol
        ("DELETE", f"{members}/%2F{w.bob_ext}", None),  # remove Bob
        ("DELETE", f"/rooms/%2F{w.room_ext}", None),
        ("DELETE", f"/rooms/{w.room_ext}/topics/%2F{w.topic_ext}", None),
        ("DELETE", f"/users/%2F{w.alice_ext}", None),
        ("PUT", f"/users/%2F%2F{w.alice_ext}", {"username": "renamed"}),
        ("POST", f"/users/{w.alice_ext}%2F/token", {}),
        ("GET", f"/users/%2F{w.alice_ext}", None),
        ("DELETE", f"/webhooks/%2F{w.hook_id}", None),
    ]
    tally: Counter[str] = Counter()
    for method, path, body in cases:
        response = w.admin(method, path, json=body)
        check(documented, response, tally)
        assert (response.status_code, response.json()["error"]) == (404, "not_found"), (
            method,
            path,
            response.status_code,
            response.headers.get("Location"),
        )
    assert w.everything() == before
    reliability.record(
        "input",
        "`/api/admin` ids starting or ending with an encoded `/` (`%2F`), next to Alice's real "
        "ids (empty path segments once decoded)",
        expected="404 `not_found`, never a redirect to the path without the empty segment; "
        "nothing changed",
        observed=tally,
    )


def _chunked(data: bytes, size: int = 8192):
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_oversized_admin_bodies_are_413(admin_world, reliability):
    """Over 64 KiB: 413 JSON on every route that reads a body, whether the length is declared,
    chunked, or declared far larger than what is sent; exactly 64 KiB is read (and refused
    for what it says, not for its size). The server answers at once and still answers."""
    w = admin_world
    before = w.state()
    routes = [
        ("PUT", f"/users/{w.carol_ext}", "username"),
        ("POST", f"/users/{w.alice_ext}/token", "ttl"),
        ("PUT", f"/rooms/{w.room_ext}", "name"),
        ("PUT", f"/rooms/{w.room_ext}/topics/{w.topic_ext}", "name"),
        ("POST", "/messages", "message"),
        ("POST", "/webhooks", "url"),
        ("PATCH", f"/webhooks/{w.hook_id}", "enabled"),
    ]

    def body(field: str, size: int) -> bytes:
        head = f'{{"{field}": "'.encode()
        return head + b"x" * (size - len(head) - 2) + b'"}'

    tally: Counter[str] = Counter()
    for method, path, field in routes:
        for label, kwargs, expected in (
            ("limit + 1", {"data": body(field, LIMIT + 1)}, 413),
            ("1 MiB", {"data": body(field, 1024 * 1024)}, 413),
            ("1 MiB chunked", {"data": _chunked(body(field, 1024 * 1024))}, 413),
            ("exactly the limit", {"data": body(field, LIMIT)}, 400),
        ):
            response = w.admin(method, path, headers={"Content-Type": "application/json"}, **kwargs)
            answer = response.json()
            tally[f"{label}: {response.status_code} {answer.get('error')}"] += 1
            assert response.status_code == expected, (method, path, label, response.text[:200])
            if expected == 413:
                assert answer["error"] == "request_entity_too_large", answer
                assert answer["message"], answer
        # Declared as 1 GiB, 10 bytes sent: refused on the header, without waiting for it.
        status = _declared_but_not_sent(w, method, "/api/admin" + path, 1 << 30)
        tally[f"declared 1 GiB, 10 bytes sent: {status}"] += 1
        assert status.startswith("413"), (method, path, status)
    w.assert_answering()
    assert w.state() == before
    reliability.record(
        "limits",
        f"`/api/admin` bodies over 64 KiB on every route that reads one ({len(routes)}): "
        "declared, chunked, declared 1 GiB with 10 bytes sent",
        expected="413 JSON `request_entity_too_large` at once; exactly 64 KiB read (400 for its "
        "content); nothing changed; the server still answers",
        observed=tally,
    )


def _declared_but_not_sent(world: AdminWorld, method: str, path: str, length: int) -> str:
    """Send headers declaring ``length`` bytes and only 10 of them: the status and error
    code the server answers with (within 10 s, or the test fails as a hang)."""
    url = urlsplit(world.stack.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        connection.putrequest(method, path)
        connection.putheader("Authorization", f"Bearer {world.admin_key}")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(length))
        connection.endheaders(b'{"x": "xxx')
        response = connection.getresponse()
        answer = json.loads(response.read())
        return f"{response.status} {answer.get('error')}"
    finally:
        connection.close()
