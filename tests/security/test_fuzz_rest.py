"""Property-based fuzzing of every REST route that takes input: bodies (JSON of every shape,
raw bytes, invalid UTF-8, deep, oversized, any content type), path segments and query strings.
Every answer must be a 2xx or a 4xx with a JSON ``{"error", "message"}`` body (the email
unsubscribe link, for people, answers with its HTML 400 page); never a 5xx, and no row may be
stored for the attacker (checked by the ``hostile`` fixture)."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections import Counter
from typing import Any

import pytest
import requests
from flask import Flask
from hypothesis import example, given, settings
from hypothesis import strategies as st
from itsdangerous import URLSafeSerializer
from sqlalchemy import select

from config import Settings
from tests.conftest import JWT_SECRET, start_web
from tests.harness.ports import free_port
from tests.harness.waiting import wait_until
from tests.security.conftest import attackers
from tests.security.strategies import (
    CONTENT_TYPES,
    EDGE_STRINGS,
    HOSTILE_ENDPOINTS,
    any_char,
    huge_texts,
    json_values,
    payloads,
    raw,
    raw_bodies,
    segment,
    texts,
    uuid_variants,
)

EXPECTED = "2xx or 4xx JSON {error, message}; never 5xx; nothing stored"


def _answer(response: requests.Response, tally: Counter[str]) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body.get("error"), str) and body["error"], body
        assert isinstance(body.get("message"), str) and body["message"], body
        tally[f"{response.status_code} {body['error']}"] += 1
    else:
        tally[str(response.status_code)] += 1


def _call(h, method, path, *, user=None, **kwargs):
    """A request as Mallory (or ``user``)."""
    token = (user or h.mallory).token
    headers = {"Authorization": f"Bearer {token}", **kwargs.pop("headers", {})}
    return requests.request(method, h.stack.url + path, headers=headers, timeout=30, **kwargs)


def test_fuzzed_subscribe_bodies(hostile, reliability):
    tally: Counter[str] = Counter()
    real_keys = hostile.stack.push.new_subscription()["keys"]
    keys = st.one_of(
        st.just(real_keys),
        payloads(
            {"p256dh": st.one_of(texts, json_values), "auth": st.one_of(texts, json_values)},
            binary=False,
        ),
    )
    subscription = payloads(
        {
            "endpoint": st.one_of(st.sampled_from([*HOSTILE_ENDPOINTS, hostile.endpoint]), texts),
            "keys": keys,
            "expirationTime": json_values,
            "label": st.one_of(texts, huge_texts),
        },
        binary=False,
    )

    @example(("json", {"endpoint": "https://10.0.0.1/x", "keys": real_keys, "label": "\x00"}))
    @example(("raw", (b"[" * 5000 + b"]" * 5000, "application/json")))
    @example(("json", {"endpoint": hostile.endpoint, "keys": real_keys}))
    @settings(settings.get_profile("beacon-security"), max_examples=150)
    @given(
        st.one_of(
            subscription.map(lambda b: ("json", b)),
            st.tuples(raw_bodies(), st.sampled_from(CONTENT_TYPES)).map(lambda t: ("raw", t)),
        )
    )
    def case(body):
        kind, value = body
        if kind == "json":
            response = _call(hostile, "POST", "/api/notifications/subscribe", json=value)
        else:
            raw, content_type = value
            headers = {"Content-Type": content_type} if content_type else {}
            response = _call(
                hostile, "POST", "/api/notifications/subscribe", data=raw, headers=headers
            )
        _answer(response, tally)
        assert response.status_code >= 400, response.text  # nothing hostile is accepted

    case()
    reliability.record(
        "input",
        "`POST /api/notifications/subscribe` bodies (hypothesis)",
        expected=EXPECTED,
        observed=tally,
    )


def test_fuzzed_unsubscribe_routes(hostile, reliability):
    tally: Counter[str] = Counter()
    segments = st.one_of(
        st.just(hostile.subscription_id),
        st.uuids().map(str),
        st.sampled_from(EDGE_STRINGS),
        texts,
        st.integers(-(2**70), 2**70).map(str),
    ).map(segment)

    @settings(settings.get_profile("beacon-security"), max_examples=120)
    @given(
        st.one_of(
            segments.map(lambda s: ("id", s)),
            payloads(
                {"endpoint": st.one_of(st.just(hostile.endpoint), texts, json_values)},
                binary=False,
            ).map(lambda b: ("endpoint", b)),
            raw_bodies().map(lambda b: ("raw", b)),
        )
    )
    def case(call):
        kind, value = call
        if kind == "id":
            response = _call(hostile, "DELETE", f"/api/notifications/unsubscribe/{value}")
        elif kind == "endpoint":
            response = _call(
                hostile, "DELETE", "/api/notifications/unsubscribe-by-endpoint", json=value
            )
        else:
            response = _call(
                hostile,
                "DELETE",
                "/api/notifications/unsubscribe-by-endpoint",
                data=value,
                headers={"Content-Type": "application/json"},
            )
        _answer(response, tally)
        assert response.status_code >= 400, response.text

    case()
    reliability.record(
        "input",
        "`DELETE /api/notifications/unsubscribe/<id>` and `/unsubscribe-by-endpoint` (hypothesis)",
        expected=EXPECTED,
        observed=tally,
    )


def test_fuzzed_paths_and_query_strings(hostile, reliability):
    tally: Counter[str] = Counter()
    segments = st.one_of(
        st.just(hostile.topic.topic_id),
        st.uuids().map(str),
        texts,
        st.sampled_from(EDGE_STRINGS),
    ).map(segment)
    query_value = st.one_of(
        st.integers(-(2**70), 2**70).map(str), texts, st.sampled_from(["", "1e3", "0x10", "NaN"])
    )

    # Pinned cases that once broke a route (a NUL reached PostgreSQL: 503 instead of 400).
    @example("dev users", "x", "\x00", "", None, "GET")
    @example("topic messages", "%00", "1", "a\x00", None, "GET")
    @example("dev token", "x", "", "", {"username": "a\x00"}, "POST")
    @settings(settings.get_profile("beacon-security"), max_examples=150)
    @given(
        st.sampled_from(["topic messages", "dev users", "dev token", "any method"]),
        segments,
        query_value,
        query_value,
        json_values,
        st.sampled_from(["PUT", "PATCH", "POST", "DELETE", "OPTIONS", "GET"]),
    )
    def case(route, seg, q1, q2, body, method):
        if route == "topic messages":
            response = _call(
                hostile,
                "GET",
                f"/api/topics/{seg}/messages",
                params={"limit": raw(q1), "before": raw(q2)},
            )
        elif route == "dev users":
            response = _call(hostile, "GET", "/api/dev/users", params={"q": raw(q1)})
        elif route == "dev token":
            response = _call(hostile, "POST", "/api/dev/token", json=body)
        else:
            path = ["/api/topics", "/api/users/me", "/api/users/online", "/healthz"][len(seg) % 4]
            response = _call(hostile, method, path, data=raw(q1))
        _answer(response, tally)

    case()
    reliability.record(
        "input",
        "REST paths, query strings, methods, `POST /api/dev/token` bodies (hypothesis)",
        expected=EXPECTED,
        observed=tally,
    )


def test_fuzzed_preference_and_history_routes(hostile, reliability):
    """Valid bodies may change Mallory's own preferences; nothing may reach Alice's (the
    ``hostile`` fixture compares them) and no input may crash a route."""
    tally: Counter[str] = Counter()
    prefs = "/api/notifications/preferences"
    levels = st.one_of(st.sampled_from(["all", "mentions", "none"]), json_values)
    clock = st.one_of(st.sampled_from(["22:00", "07:30", "24:00", "7:00", "23:60"]), texts)
    settings_body = payloads(
        {
            "level": levels,
            "quiet_hours": st.one_of(
                st.none(), payloads({"start": clock, "end": clock}, binary=False), json_values
            ),
            "time_zone": st.one_of(
                st.sampled_from(["Europe/Paris", "UTC", "posixrules", "../../x", "Etc/GMT+5"]),
                texts,
            ),
            "snooze_until": st.one_of(
                st.sampled_from(["2030-01-01T00:00Z", "2030-01-01", "9999-12-31T23:59:59+14:00"]),
                texts,
                json_values,
            ),
            "snooze_minutes": st.one_of(st.integers(-(2**70), 2**70), json_values),
            "dnd_allow_mentions": json_values,
        },
        binary=False,
    )
    scope_ids = st.one_of(
        st.sampled_from(["topic", "room"]),
        st.uuids().map(str),
        st.sampled_from(EDGE_STRINGS),
        texts,
    )
    query = st.one_of(st.integers(-(2**70), 2**70).map(str), texts)

    @example(("patch", {"time_zone": "\x00"}))
    @example(("level", ("PUT", "topics", "topic", {"level": "none"})))
    @example(("level", ("PUT", "rooms", "room", {"level": "none"})))
    @example(("level", ("PUT", "topics", "topic", "\x00")))
    @settings(settings.get_profile("beacon-security"), max_examples=150)
    @given(
        st.one_of(
            settings_body.map(lambda b: ("patch", b)),
            raw_bodies().map(lambda b: ("raw", b)),
            st.tuples(
                st.sampled_from(["PUT", "DELETE"]),
                st.sampled_from(["topics", "rooms"]),
                scope_ids,
                payloads({"level": levels}, binary=False),
            ).map(lambda t: ("level", t)),
            st.tuples(query, query, st.one_of(query, st.just("failed"))).map(
                lambda t: ("history", t)
            ),
        )
    )
    def case(call):
        kind, value = call
        if kind == "patch":
            response = _call(hostile, "PATCH", prefs, json=value)
        elif kind == "raw":
            response = _call(
                hostile, "PATCH", prefs, data=value, headers={"Content-Type": "application/json"}
            )
        elif kind == "level":
            method, scope, target, body = value
            # Alice's own topic and room are the interesting targets.
            if target == "topic":
                target = hostile.topic.topic_id
            elif target == "room":
                target = hostile.topic.room_id
            response = _call(hostile, method, f"{prefs}/{scope}/{segment(target)}", json=body)
            if method == "PUT" and target in (hostile.topic.topic_id, hostile.topic.room_id):
                # Refused: a bad body first (400), else not hers (403/404).
                assert response.status_code in (400, 403, 404), response.text
        else:
            limit, before, outcome = value
            response = _call(
                hostile,
                "GET",
                "/api/notifications/history",
                params={"limit": raw(limit), "before": raw(before), "outcome": raw(outcome)},
            )
        _answer(response, tally)

    case()
    reliability.record(
        "input",
        "`/api/notifications/preferences` bodies and ids, `/history` queries (hypothesis)",
        expected="2xx or 4xx JSON {error, message}; never 5xx; nothing of Alice's changed",
        observed=tally,
    )


def test_fuzzed_device_registrations_and_deletions(hostile, reliability):
    """``POST /api/notifications/devices`` and ``DELETE /api/notifications/devices/<id>``. This
    stack has no FCM or APNs settings, so a well-formed registration is ``503 push_disabled``:
    the one 5xx allowed, and nothing is stored either way; Alice's device id is 404 for Mallory."""
    tally: Counter[str] = Counter()
    tokens = st.one_of(
        texts,
        huge_texts,
        json_values,
        st.from_regex(r"\A[A-Za-z0-9_:\-]{32,300}\Z"),
        st.from_regex(r"\A(?:[0-9a-fA-F]{2}){32,40}\Z"),
    )
    device = payloads(
        {
            "platform": st.one_of(st.sampled_from(["fcm", "apns", "FCM", "webpush", ""]), texts),
            "token": tokens,
            "app_id": st.one_of(st.none(), texts, st.from_regex(r"\A[a-z][a-z0-9.]{0,40}\Z")),
            "label": st.one_of(st.none(), texts, huge_texts),
        },
        binary=False,
    )
    segments = st.one_of(
        st.just(hostile.subscription_id),
        st.uuids().map(str),
        st.sampled_from(EDGE_STRINGS),
        texts,
    ).map(segment)

    @example(("json", {"platform": "apns", "token": "ab" * 32}))
    @example(("json", {"platform": "fcm", "token": "x" * 40, "app_id": "../../etc"}))
    @example(("delete", hostile.subscription_id))
    @settings(settings.get_profile("beacon-security"), max_examples=150)
    @given(
        st.one_of(
            device.map(lambda b: ("json", b)),
            st.tuples(raw_bodies(), st.sampled_from(CONTENT_TYPES)).map(lambda t: ("raw", t)),
            segments.map(lambda s: ("delete", s)),
        )
    )
    def case(call):
        kind, value = call
        if kind == "json":
            response = _call(hostile, "POST", "/api/notifications/devices", json=value)
        elif kind == "raw":
            body, content_type = value
            headers = {"Content-Type": content_type} if content_type else {}
            response = _call(
                hostile, "POST", "/api/notifications/devices", data=body, headers=headers
            )
        else:
            response = _call(hostile, "DELETE", f"/api/notifications/devices/{value}")
        if response.status_code == 503:
            assert kind == "json" and response.json()["error"] == "push_disabled", response.text
            tally["503 push_disabled"] += 1
        else:
            _answer(response, tally)
        assert response.status_code >= 400, response.text

    case()
    reliability.record(
        "input",
        "`POST /api/notifications/devices` and `DELETE /api/notifications/devices/<id>` "
        "(hypothesis)",
        expected="4xx JSON {error, message} (503 push_disabled for a well-formed device on a "
        "deployment without FCM/APNs); nothing stored; others' devices untouched",
        observed=tally,
    )


# -- attention: idle pushes and missed-message email (issue 17) -----------------------------
LEVELS = ("all", "mentions", "none")
ATTENTION_FIELDS = ("level", "push_when_idle", "email_level", "email_delay", "share_read_receipts")
MAX_EMAIL_DELAY = 86400
not_levels = st.one_of(
    st.sampled_from(["ALL", "None", " none", "mentions\x00", "mention", "", "off", "\u0430ll"]),
    json_values,
)
any_levels = st.one_of(st.sampled_from(LEVELS), not_levels)


def _valid_level(value: Any) -> bool:
    return isinstance(value, str) and value in LEVELS


def _valid_setting(name: str, value: Any) -> bool:
    if name in ("push_when_idle", "share_read_receipts"):
        return isinstance(value, bool)
    if name == "email_delay":
        return value is None or (
            isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_EMAIL_DELAY
        )
    return _valid_level(value)


def _valid_settings_body(body: Any) -> bool:
    return isinstance(body, dict) and all(
        k in ATTENTION_FIELDS and _valid_setting(k, v) for k, v in body.items()
    )


def _parsed(body: bytes) -> Any:
    """A raw body as the server reads it (UTF-8, then Python's JSON); None if it cannot."""
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def _valid_override_body(body: Any) -> bool:
    return (
        isinstance(body, dict)
        and bool(body)
        and all(
            k in ("level", "email_level") and (v is None or _valid_level(v))
            for k, v in body.items()
        )
    )


def _overrides(prefs: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """The overrides of a GET of the preferences, by (scope, id)."""
    return {
        **{
            ("rooms", r["room_id"]): {k: r[k] for k in ("level", "email_level")}
            for r in prefs["rooms"]
        },
        **{
            ("topics", t["topic_id"]): {k: t[k] for k in ("level", "email_level")}
            for t in prefs["topics"]
        },
    }


def test_fuzzed_attention_and_email_preferences(hostile, reliability):
    """The fields issue 17 added: ``push_when_idle``, ``email_level``, ``email_delay`` (PATCH;
    and issue 18's ``share_read_receipts``), and ``email_level`` beside ``level`` in the topic
    and room overrides (PUT/DELETE). Carol, a member of a topic of her own, sends them: her
    bodies reach the parsers (Mallory's would stop at the membership check). Every answer is
    exactly what the documented rules say: a valid body 2xx and stored as sent (a model of her
    preferences follows every answer and must equal what she reads back), anything else 400
    and nothing changed; Alice's topic and room stay refused (403/404) whatever the body. Bob,
    with every new field set away from its default, and Alice never change."""
    stack, bob = hostile.stack, hostile.bob
    carol = stack.user("carol")
    own = stack.topic(carol)
    prefs = "/api/notifications/preferences"
    for method, path, body in (
        (
            "PATCH",
            prefs,
            {
                "push_when_idle": False,
                "email_level": "all",
                "email_delay": 60,
                "share_read_receipts": False,
            },
        ),
        (
            "PUT",
            f"{prefs}/topics/{hostile.topic.topic_id}",
            {"level": "mentions", "email_level": "none"},
        ),
        ("PUT", f"{prefs}/rooms/{hostile.topic.room_id}", {"email_level": "all"}),
    ):
        assert stack.api(bob, method, path, json=body).status_code == 200
    bob_before = stack.api(bob, "GET", prefs).json()

    start = stack.api(carol, "GET", prefs).json()
    model = {k: start[k] for k in ATTENTION_FIELDS}
    assert model == {
        "level": "all",
        "push_when_idle": True,
        "email_level": "mentions",
        "email_delay": None,
        "share_read_receipts": True,
    }
    overrides: dict[tuple[str, str], dict[str, Any]] = {}
    tally: Counter[str] = Counter()
    delays = st.one_of(
        st.integers(-(2**70), 2**70),
        st.integers(-2, MAX_EMAIL_DELAY + 2),
        st.sampled_from([0, MAX_EMAIL_DELAY, MAX_EMAIL_DELAY + 1, -1, None, True, 1.0, 60.5, "60"]),
        json_values,
    )
    flags = st.one_of(st.booleans(), st.sampled_from([0, 1, "true", "false", None]), json_values)
    settings_body = payloads(
        {
            "level": any_levels,
            "push_when_idle": flags,
            "email_level": any_levels,
            "email_delay": delays,
            "share_read_receipts": flags,
        },
        binary=False,
    )
    override_body = payloads(
        {
            "level": st.one_of(st.none(), any_levels),
            "email_level": st.one_of(st.none(), any_levels),
        },
        binary=False,
    )
    targets = st.one_of(
        st.sampled_from(["own", "own", "alice"]),
        st.uuids().map(str),
        st.sampled_from(EDGE_STRINGS),
    )
    raw_patches = st.one_of(
        raw_bodies(),
        st.sampled_from(
            [
                b'{"email_delay": 1e999}',
                b'{"email_delay": NaN}',
                b'{"email_delay": -0}',
                b'{"email_delay": 9' + b"9" * 4000 + b"}",
                b'{"email_delay": 60.0}',
                b'{"push_when_idle": "true"}',
                b'{"email_level": "none\\u0000"}',
                b'{"email_level": "\\ud800"}',
                b'{"share_read_receipts": "false"}',
                b'{"share_read_receipts": 0}',
            ]
        ),
    )

    @example(("patch", {"email_delay": MAX_EMAIL_DELAY + 1}))
    @example(("patch", {"email_delay": True}))
    @example(("patch", {"push_when_idle": 1}))
    @example(
        ("patch", {"email_level": "none", "email_delay": MAX_EMAIL_DELAY, "push_when_idle": False})
    )
    @example(("patch", {"share_read_receipts": False}))
    @example(("patch", {"share_read_receipts": None}))
    @example(("raw", b'{"email_delay": 1e999}'))
    @example(("override", ("PUT", "topics", "alice", {"email_level": "none"})))
    @example(("override", ("PUT", "rooms", "alice", {"email_level": None})))
    @example(("override", ("PUT", "topics", "own", {"email_level": "none"})))
    @example(("override", ("PUT", "topics", "own", {"email_level": None, "level": None})))
    @example(("override", ("PUT", "rooms", "own", {})))
    @settings(settings.get_profile("beacon-security"), max_examples=120)
    @given(
        st.one_of(
            settings_body.map(lambda b: ("patch", b)),
            raw_patches.map(lambda b: ("raw", b)),
            st.tuples(
                st.sampled_from(["PUT", "PUT", "DELETE"]),
                st.sampled_from(["topics", "rooms"]),
                targets,
                override_body,
            ).map(lambda t: ("override", t)),
        )
    )
    def case(call):
        kind, value = call
        if kind == "patch":
            response = _call(hostile, "PATCH", prefs, user=carol, json=value)
            _answer(response, tally)
            valid = _valid_settings_body(value)
            assert response.status_code == (200 if valid else 400), (value, response.text)
            if valid:
                model.update(value)
                assert {k: response.json()[k] for k in ATTENTION_FIELDS} == model, value
            return
        if kind == "raw":
            response = _call(
                hostile,
                "PATCH",
                prefs,
                user=carol,
                data=value,
                headers={"Content-Type": "application/json"},
            )
            _answer(response, tally)
            parsed = _parsed(value)
            if _valid_settings_body(parsed):  # "{}", "-0", " {} "...: Python's JSON rules
                assert response.status_code == 200, (value, response.text)
                model.update(parsed)
                assert {k: response.json()[k] for k in ATTENTION_FIELDS} == model, value
            else:
                assert response.status_code in (400, 413), (value, response.text)
            return
        method, scope, target, body = value
        ids = {
            "topics": (own.topic_id, hostile.topic.topic_id),
            "rooms": (own.room_id, hostile.topic.room_id),
        }
        target = {"own": ids[scope][0], "alice": ids[scope][1]}.get(target, target)
        response = _call(
            hostile, method, f"{prefs}/{scope}/{segment(target)}", user=carol, json=body
        )
        _answer(response, tally)
        if target == ids[scope][1] and method == "PUT":
            # Refused: a body no route could read first (too deep, NUL or a lone surrogate:
            # webapp/api/body.py), else not hers, whatever the levels say.
            refused = (response.status_code, response.json()["error"])
            assert refused in {
                (400, "invalid_payload"),
                (400, "invalid_text"),
                (403, "not_a_member") if scope == "topics" else (404, "room_not_found"),
            }, response.text
        elif target == ids[scope][1]:
            assert response.status_code == 204, response.text  # only her own row, none
        elif target == ids[scope][0] and method == "DELETE":
            assert response.status_code == 204, response.text
            overrides.pop((scope, target), None)
        elif target == ids[scope][0]:
            valid = _valid_override_body(body)
            assert response.status_code == (200 if valid else 400), (body, response.text)
            if valid:
                levels = {
                    "level": None,
                    "email_level": None,
                    **overrides.get((scope, target), {}),
                    **body,
                }
                if levels["level"] is None and levels["email_level"] is None:
                    overrides.pop((scope, target), None)
                else:
                    overrides[(scope, target)] = levels
                answer = response.json()
                assert {k: answer[k] for k in ("level", "email_level")} == levels, (body, answer)
                assert answer["room_id"] == own.room_id

    case()
    now = stack.api(carol, "GET", prefs).json()
    assert {k: now[k] for k in ATTENTION_FIELDS} == model
    assert _overrides(now) == overrides
    assert stack.api(bob, "GET", prefs).json() == bob_before
    reliability.record(
        "input",
        "`/api/notifications/preferences` attention fields: `push_when_idle`, `email_level`, "
        "`email_delay`, `share_read_receipts`, override `email_level` on own, Alice's and "
        "unknown topics and rooms (hypothesis)",
        expected="valid bodies stored exactly as sent, anything else 400 JSON {error, message} "
        "and nothing changed; Alice's topic 403 / room 404; never 5xx; Bob's and Alice's "
        "preferences unchanged",
        observed=tally,
    )


# -- client state (issue 18): catch-up, mark as unread, read receipts ----------------------
MAX_BIGINT = 2**63 - 1
QUERY_INTS = [
    "",
    "0",
    "-0",
    "00",
    "+5",
    " 5",
    "5 ",
    "1e3",
    "0x10",
    "1_000",
    "\u0665",  # an Arabic-Indic 5
    "NaN",
    "-1",
    "1001",
    str(MAX_BIGINT),
    str(MAX_BIGINT + 1),
    "9" * 4400,  # past Python's 4300-digit int() limit
]


def _query_int(value: str) -> int | None:
    """``value`` as the routes read a query integer (Python's ``int``); None if it is not one."""
    try:
        return int(value)
    except ValueError:
        return None


def _plain(value: str, lo: int, hi: int) -> bool:
    """ASCII digits only, in range: a value every reading of "an integer" takes."""
    return value.isascii() and value.isdigit() and len(value) < 30 and lo <= int(value) <= hi


def test_fuzzed_client_state_routes(hostile, reliability):
    """``GET /api/sync?since=``, ``POST /api/topics/<id>/unread`` (bodies of every kind) and
    ``GET /api/topics/<id>/receipts?limit=``, from signed-in attackers who are members of
    nothing: Mallory, and as many more as the shared stack's per-user limits of sync and
    mark-as-unread ask for, so that every case is judged rather than ``429``. A sync with a
    valid ``since`` answers 200 with nothing of anyone else (no topic, no other user, the cursor
    it sent), else 400 ``invalid_since``; the topic routes never answer 2xx (Alice's topic with
    a well-formed request: 403 ``not_a_member``, whatever message id); never 5xx; nothing of
    Alice's or Bob's changes (the fixture)."""
    tally: Counter[str] = Counter()
    examples = 120
    calls = examples + 10  # the pinned examples
    # Separate limits: each pool spreads its route's calls (a cycle, so evenly).
    syncers = itertools.cycle(attackers(hostile, "rate_limit_sync", calls))
    markers = itertools.cycle(attackers(hostile, "rate_limit_mark_as_unread", calls))
    topic = hostile.topic.topic_id
    segments = st.one_of(
        st.just(topic),
        st.just(topic),
        st.sampled_from(uuid_variants(topic)),
        st.just(hostile.topic.room_id),
        st.uuids().map(str),
        st.sampled_from(EDGE_STRINGS),
        texts,
    )
    query_ints = st.one_of(
        st.integers(-(2**70), 2**70).map(str),
        st.integers(0, 2**40).map(str),
        st.sampled_from(QUERY_INTS),
        texts,
    )
    message_id = st.one_of(
        st.sampled_from(hostile.message_ids),
        st.integers(-(2**70), 2**70),
        st.sampled_from([0, 1, MAX_BIGINT, MAX_BIGINT + 1, 1.0, True, "1", None]),
        json_values,
    )
    bodies = st.one_of(
        st.fixed_dictionaries({"message_id": message_id}).map(lambda b: ("json", b)),
        payloads({"message_id": message_id}, binary=False).map(lambda b: ("json", b)),
        st.tuples(raw_bodies(), st.sampled_from(CONTENT_TYPES)).map(lambda t: ("raw", t)),
    )

    @example(("sync", ""))
    @example(("sync", "0"))
    @example(("sync", str(MAX_BIGINT + 1)))
    @example(("sync", "\x00"))
    @example(("sync", "\ud800"))
    @example(("unread", (topic, ("json", {"message_id": hostile.message_ids[0]}))))
    @example(("unread", (topic, ("json", {"message_id": 10**12}))))
    @example(("unread", (topic, ("raw", (b'{"message_id": 1e999}', "application/json")))))
    @example(("receipts", (topic, "")))
    @example(("receipts", (topic, "1001")))
    @settings(settings.get_profile("beacon-security"), max_examples=examples)
    @given(
        st.one_of(
            query_ints.map(lambda q: ("sync", q)),
            st.tuples(segments, bodies).map(lambda t: ("unread", t)),
            st.tuples(segments, query_ints).map(lambda t: ("receipts", t)),
        )
    )
    def case(call):
        kind, value = call
        if kind == "sync":
            user = next(syncers)
            response = _call(hostile, "GET", "/api/sync", user=user, params={"since": raw(value)})
            _answer(response, tally)
            since = _query_int(value) if value else 0
            if "\x00" in value:
                assert response.json()["error"] == "invalid_text", response.text
            elif value == "" or _plain(value, 0, MAX_BIGINT):
                assert response.status_code == 200, (value, response.text)
            elif since is None or not 0 <= since <= MAX_BIGINT:
                assert response.status_code == 400, (value, response.text)
                assert response.json()["error"] == "invalid_since", response.text
            if response.status_code == 200:
                answer = response.json()
                assert answer["topics"] == [], answer
                assert {u["user_id"] for u in answer["users"]} <= {user.id}, answer["users"]
                assert answer["cursor"] in (None, since), answer
            return
        seg, rest = value
        if kind == "unread":
            body_kind, body = rest
            kwargs: dict[str, Any] = {"json": body}
            if body_kind == "raw":
                data, content_type = body
                headers = {"Content-Type": content_type} if content_type else {}
                kwargs = {"data": data, "headers": headers}
            response = _call(
                hostile,
                "POST",
                f"/api/topics/{segment(seg)}/unread",
                user=next(markers),
                **kwargs,
            )
            well_formed = (
                body_kind == "json"
                and isinstance(body, dict)
                and set(body) == {"message_id"}
                and type(body["message_id"]) is int
                and 0 < body["message_id"] <= MAX_BIGINT
            )
        else:
            response = _call(
                hostile,
                "GET",
                f"/api/topics/{segment(seg)}/receipts",
                params={"limit": raw(rest)},
            )
            well_formed = rest == "" or _plain(rest, 1, 1000)
        _answer(response, tally)
        assert response.status_code >= 400, response.text  # a member of nothing
        if seg == topic and well_formed:
            # Alice's topic: not hers, whatever the message id (none is confirmed or denied).
            assert (response.status_code, response.json()["error"]) == (403, "not_a_member")

    case()
    reliability.record(
        "input",
        "`GET /api/sync?since=`, `POST /api/topics/<id>/unread` bodies, "
        "`GET /api/topics/<id>/receipts?limit=` from members of nothing (hypothesis)",
        expected="sync: 200 with nothing of others' topics or users (valid `since`), else 400 "
        "`invalid_since`; topic routes 4xx JSON {error, message} (Alice's topic 403 "
        "`not_a_member`); never 5xx; nothing of Alice's changed",
        observed=tally,
    )


# -- the unsubscribe link (no sign-in: the signed token is the credential) ------------------
LINK_SECRET = "fuzz-email-link-secret-" + "z" * 24
INVALID_LINK = "This unsubscribe link is not valid"
DONE = "You are unsubscribed"


@pytest.fixture(scope="module")
def links_web(stack, run_dir):
    """Another web process of the shared deployment (same database and Redis) that signs
    unsubscribe links: the shared web has no EMAIL_LINK_SECRET, so there every token is
    refused, hostile or not, and a fuzz of it would prove nothing."""
    port = free_port()
    env = {**stack.env, "EMAIL_LINK_SECRET": LINK_SECRET}
    web = start_web(f"web-links-{stack.backend}", env, port, run_dir)
    yield f"http://127.0.0.1:{port}"
    web.stop()


def link_token(user_id: str, secret: str = LINK_SECRET) -> str:
    """What the digest's link carries for ``user_id`` (the product's own signer)."""
    from webapp.delivery.unsubscribe import token_for

    app = Flask(__name__)
    app.extensions["beacon_settings"] = Settings(email_link_secret=secret)
    with app.app_context():
        return token_for(uuid.UUID(user_id))


def _signed(value: Any, secret: str = LINK_SECRET, salt: str | None = None) -> str:
    from webapp.delivery.unsubscribe import SALT

    return URLSafeSerializer(secret, salt=salt or SALT).dumps(value)


def _email_state(stack) -> dict[str, list[tuple[str, ...]]]:
    """Every row the unsubscribe link can change, for every user."""
    from webapp.extensions import db
    from webapp.models import NotificationOverride, NotificationSettings, PendingEmail

    with stack.app.app_context():
        state = {
            model.__tablename__: sorted(
                tuple(str(v) for v in row)
                for row in db.session.execute(select(*model.__table__.columns))
            )
            for model in (NotificationSettings, NotificationOverride, PendingEmail)
        }
        db.session.remove()
    return state


def _is_invalid_link_page(response: requests.Response, query: list, tally: Counter[str]) -> None:
    """The 400 page of a bad link (HTML, no script, the page's CSP). A NUL in the query string
    meets the app-wide refusal first: 400 JSON ``invalid_text`` (webapp/api/body.py)."""
    if any("\x00" in name or "\x00" in value for name, value in query):
        assert response.status_code == 400, (response.status_code, response.text[:300])
        assert response.json()["error"] == "invalid_text" and response.json()["message"]
        tally["400 invalid_text (NUL in the query, JSON)"] += 1
        return
    assert response.status_code == 400, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("text/html"), response.headers
    assert INVALID_LINK in response.text and "<script" not in response.text
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["Cache-Control"] == "no-store"
    tally["400 invalid link page"] += 1


def test_fuzzed_unsubscribe_links(hostile, links_web, reliability):
    """``GET``/``POST /api/email/unsubscribe?token=`` from nobody signed in: forged tokens for
    Alice (another secret, another salt, the JWT secret, Mallory's signature on Alice's id,
    unsigned), correctly signed values that are not a user id, those with unicode, NUL,
    padding and separators around them, huge ones, random text, the token repeated or under
    another name, and bodies of every kind (the token in the form, wrong types, raw bytes).
    Every answer is the 400 page; no row of any user changes. Then Mallory's own link works:
    the fuzz ran against a live route."""
    alice, mallory = hostile.alice, hostile.mallory
    mine = link_token(mallory.id)
    mallory_signature = mine.rsplit(".", 1)[1]
    alice_payload = link_token(alice.id, "another-secret").rsplit(".", 1)[0]
    forged = [
        link_token(alice.id, "another-secret"),
        f"{alice_payload}.{mallory_signature}",
        alice_payload,
        alice_payload + ".",
        alice.id,
        _signed(alice.id, secret=JWT_SECRET),
        _signed(alice.id, salt="itsdangerous"),
        _signed(alice.id, salt="beacon-email-unsubscribe-x"),
        mallory.token,  # her JWT: another credential
        # Signed with the link secret, but not a user id.
        _signed([alice.id]),
        _signed({"user_id": alice.id}),
        _signed(None),
        _signed(7),
        _signed(""),
        _signed(alice.id + "x"),
        _signed("x" * 300),
        _signed(alice.id + "\x00"),
    ]
    edges = [*EDGE_STRINGS, "=", "==", ".", "..", "%00", "\u00e9", "\u202e", "\U0001f4a5"]
    mutated = st.tuples(st.sampled_from(forged), st.sampled_from(edges), st.booleans()).map(
        lambda t: t[1] + t[0] if t[2] else t[0] + t[1]
    )
    tokens = st.one_of(
        st.sampled_from(forged),
        mutated,
        st.sampled_from(EDGE_STRINGS),
        texts,
        st.text(any_char, max_size=200),
        st.integers(0, 300).map(lambda n: "A" * n),
    )
    queries = st.one_of(
        tokens.map(lambda t: [("token", t)]),
        st.integers(201, 6000).map(lambda n: [("token", "x" * n)]),
        st.lists(tokens, min_size=2, max_size=3).map(lambda ts: [("token", t) for t in ts]),
        st.tuples(st.sampled_from(["Token", "TOKEN", "token ", "token[]", "t", ""]), tokens).map(
            lambda t: [t]
        ),
        st.just([]),
    )
    bodies = st.one_of(
        st.none(),
        st.just(("form", {"List-Unsubscribe": "One-Click"})),
        st.dictionaries(
            st.sampled_from(["List-Unsubscribe", "token", "user_id"]),
            st.one_of(texts, st.lists(texts, max_size=3), st.sampled_from([mine, alice.id])),
            max_size=3,
        ).map(lambda d: ("form", d)),
        json_values.map(lambda v: ("json", v)),
        st.tuples(raw_bodies(), st.sampled_from(CONTENT_TYPES)).map(lambda t: ("raw", t)),
    )
    url = links_web + "/api/email/unsubscribe"
    tally: Counter[str] = Counter()
    before = _email_state(hostile.stack)

    @example(("GET", [("token", forged[0])], None))
    @example(("POST", [("token", forged[0])], ("form", {"List-Unsubscribe": "One-Click"})))
    @example(("POST", [("token", forged[1])], None))
    @example(("POST", [("token", "x" * 6000)], None))
    @example(("POST", [("token", "\x00")], None))
    @example(("POST", [("token", "\ud800")], None))
    @example(("POST", [], ("form", {"token": mine})))  # the body is never read
    @example(("GET", [], ("form", {"token": "", "user_id": "\ud800"})))
    @example(("POST", [("Token", mine)], None))  # the name is "token"
    @example(("POST", [("token", forged[1]), ("token", mine)], None))  # the first one counts
    @settings(settings.get_profile("beacon-security"), max_examples=120)
    @given(st.tuples(st.sampled_from(["GET", "POST"]), queries, bodies))
    def case(call):
        method, query, body = call
        kwargs: dict[str, Any] = {}
        if body is not None:
            kind, value = body
            if kind == "form":  # as bytes: lone surrogates too
                kwargs["data"] = {
                    k: [raw(x) for x in v] if isinstance(v, list) else raw(v)
                    for k, v in value.items()
                }
            elif kind == "json":
                kwargs["json"] = value
            else:
                kwargs["data"], content_type = value
                kwargs["headers"] = {"Content-Type": content_type} if content_type else {}
        params = [(raw(name), raw(value)) for name, value in query]
        response = requests.request(method, url, params=params, timeout=30, **kwargs)
        _is_invalid_link_page(response, query, tally)

    case()
    assert _email_state(hostile.stack) == before, "a hostile link changed someone's emails"

    # Mallory's own link: it works, and for her alone.
    done = requests.post(url, params={"token": mine}, timeout=10)
    assert done.status_code == 200 and DONE in done.text, done.text
    after = _email_state(hostile.stack)
    mallory_rows = [r for r in after["notification_settings"] if mallory.id in r]
    assert len(mallory_rows) == 1 and "none" in mallory_rows[0], mallory_rows
    assert {k: [r for r in v if mallory.id not in r] for k, v in after.items()} == before
    reliability.record(
        "input",
        "`GET`/`POST /api/email/unsubscribe?token=` with no sign-in: forged tokens for Alice "
        "(another secret, salt or signature, unsigned), signed non-ids, unicode, NUL, huge, "
        "repeated or misnamed tokens, any body (hypothesis)",
        expected="400 HTML page `This unsubscribe link is not valid` (NUL in the query: the "
        "app-wide 400 JSON `invalid_text`); never 5xx; no user's email settings changed; "
        "the caller's own link still works, for her alone",
        observed=tally,
    )


# -- notification decisions and the test push (issue 20) ------------------------------------
DECISIONS = "/api/notifications/decisions"
# gevent.pywsgi.MAX_REQUEST_LINE: a longer request line is answered 414 by the server itself.
REQUEST_LINE_LIMIT = 8192


def _served(value: str) -> str:
    """A query value as the server reads it: the UTF-8 bytes sent, invalid ones replaced."""
    return raw(value).decode("utf-8", "replace")


def _decisions_model(
    params: dict[str, str], member_of: set[str], topics: set[str]
) -> tuple[int, str] | tuple[int, int, int | None, str | None]:
    """What ``GET /api/notifications/decisions`` must answer: (status, code) for a refusal,
    in the order the route checks (limit, before, topic_id: its form, then that it exists,
    then membership), else (200, limit, before, topic id) as read. Integers are Python's
    ``int`` of the text (as for every query integer), ids ``uuid.UUID``'s reading."""
    served = {name: _served(value) for name, value in params.items()}
    if any("\x00" in value for value in served.values()):
        return 400, "invalid_text"
    limit, before, topic = 50, None, None
    if served.get("limit"):
        limit = _query_int(served["limit"])
        if limit is None or not 1 <= limit <= 200:
            return 400, "invalid_limit"
    if served.get("before"):
        before = _query_int(served["before"])
        if before is None or not 1 <= before <= MAX_BIGINT:
            return 400, "invalid_before"
    if served.get("topic_id"):
        try:
            if len(served["topic_id"]) > 64:
                raise ValueError
            topic = str(uuid.UUID(served["topic_id"]))
        except ValueError:
            return 400, "invalid_topic_id"
        if topic not in topics:
            return 404, "topic_not_found"
        if topic not in member_of:
            return 403, "not_a_member"
    return 200, limit, before, topic


def test_fuzzed_decision_queries(hostile, reliability):
    """``GET /api/notifications/decisions?limit=&before=&topic_id=`` with hostile values, from
    Alice and Bob (members of the topic, each with decisions of Alice's two messages: hers
    ``sender``, his not) and Mallory (a member of nothing). Every answer is exactly what a
    model of the route says: 200 with the caller's own decisions alone (their whole list, read
    once, filtered by topic and ``before``, cut at ``limit``, with its ``next_before``), or 400
    with the code of the first bad value, 404 ``topic_not_found``, 403 ``not_a_member``
    (Mallory with Alice's topic, however it is spelled); never 5xx."""
    topic = hostile.topic.topic_id
    users = {"alice": hostile.alice, "bob": hostile.bob, "mallory": hostile.mallory}
    member_of = {"alice": {topic}, "bob": {topic}, "mallory": set()}

    def whole(name: str) -> list[dict[str, Any]]:
        answer = _call(hostile, "GET", DECISIONS, user=users[name], params={"limit": 200})
        assert answer.status_code == 200, answer.text
        return answer.json()["decisions"]

    ids = sorted(hostile.message_ids, reverse=True)

    def recorded(name: str) -> list[dict[str, Any]] | None:
        found = whole(name)
        return found if [d["message_id"] for d in found] == ids else None

    # The fan-out records the decisions; the fixture only waited for the unread counts.
    own = {
        name: wait_until(
            lambda n=name: recorded(n),
            timeout=20,
            message=f"{name}'s decisions of Alice's messages were not recorded",
        )
        for name in ("alice", "bob")
    }
    own["mallory"] = whole("mallory")
    assert own["mallory"] == []
    assert {d["decision"] for d in own["alice"]} == {"sender"}
    assert "sender" not in {d["decision"] for d in own["bob"]}
    tally: Counter[str] = Counter()
    values = st.one_of(
        st.integers(-(2**70), 2**70).map(str),
        st.integers(0, 300).map(str),
        st.sampled_from(QUERY_INTS),
        texts,
    )
    # Valid values often enough that the answers' contents are judged, not only refusals.
    # (one in four hostile: a bad limit is refused before the other values are looked at).
    valid_limits = st.one_of(
        st.integers(1, 3).map(str), st.integers(1, 200).map(str), st.sampled_from(["200", ""])
    )
    limits = st.integers(0, 3).flatmap(lambda n: values if n == 0 else valid_limits)
    befores = st.one_of(
        st.sampled_from([str(m + d) for m in hostile.message_ids for d in (-1, 0, 1)]),
        st.just(str(MAX_BIGINT)),
        values,
    )
    topic_ids = st.one_of(
        st.sampled_from(uuid_variants(topic)),
        st.just(topic),
        st.just(hostile.topic.room_id),
        st.uuids().map(str),
        st.sampled_from(EDGE_STRINGS),
        texts,
        st.just(topic + "\x00"),
    )
    queries = st.fixed_dictionaries(
        {}, optional={"limit": limits, "before": befores, "topic_id": topic_ids}
    )

    @example(("mallory", {"topic_id": topic}))
    @example(("mallory", {"topic_id": topic.upper(), "limit": "200"}))
    @example(("mallory", {"limit": "0", "topic_id": topic}))  # the limit is judged first
    @example(("bob", {"limit": "1", "before": str(ids[0]), "topic_id": topic}))
    @example(("alice", {"limit": "1"}))
    @example(("alice", {"before": "1"}))
    @example(("bob", {"limit": "201"}))
    @example(("bob", {"before": str(MAX_BIGINT + 1)}))
    @example(("bob", {"limit": "9" * 4400}))
    @example(("bob", {"limit": "9" * 4400, "before": "9" * 4400}))  # over 8 KiB: 414
    @example(("bob", {"topic_id": "\ud800"}))
    @example(("bob", {"topic_id": str(uuid.uuid4())}))
    @settings(settings.get_profile("beacon-security"), max_examples=150)
    @given(st.tuples(st.sampled_from(sorted(users)), queries))
    def case(call):
        name, params = call
        response = _call(
            hostile,
            "GET",
            DECISIONS,
            user=users[name],
            params={key: raw(value) for key, value in params.items()},
        )
        if len(f"GET {response.request.path_url} HTTP/1.1") >= REQUEST_LINE_LIMIT:
            # Refused by the WSGI server (gevent) before the app: 414 with no body.
            assert response.status_code == 414 and not response.content, response.text
            tally["414 (request line over 8 KiB, from gevent)"] += 1
            return
        _answer(response, tally)
        expected = _decisions_model(params, member_of[name], {topic})
        if response.status_code != 200:
            assert (response.status_code, response.json()["error"]) == expected, (name, params)
            return
        assert expected[0] == 200, (name, params, expected, response.text)
        _, limit, before, only = expected
        matching = [
            d
            for d in own[name]
            if (only is None or d["topic_id"] == only)
            and (before is None or d["message_id"] < before)
        ]
        answer = response.json()
        assert answer["decisions"] == matching[:limit], (name, params)
        assert answer["next_before"] == (
            matching[limit - 1]["message_id"] if len(matching) > limit else None
        ), (name, params)

    case()
    reliability.record(
        "input",
        "`GET /api/notifications/decisions?limit=&before=&topic_id=` from members and a "
        "non-member (hypothesis)",
        expected="200 with the caller's own decisions only, exactly as a model of the query "
        "says, or 400 with the first bad value's code / 404 `topic_not_found` / 403 "
        "`not_a_member` (a non-member, whatever the spelling of the id); a request line over "
        "8 KiB 414 from the server; never 5xx",
        observed=tally,
    )


def test_fuzzed_test_push_requests(hostile, reliability):
    """``POST /api/notifications/test`` takes no body: bodies of every kind (JSON, raw bytes,
    invalid UTF-8, too deep, over 64 KiB) under any content type and with odd headers, from
    signed-in attackers with no device, spread evenly over a few of them. Each one's first 3
    calls (``RATE_LIMIT_TEST_PUSH``, 3 a minute) answer 200 with no delivery (they have no
    device: nobody else's is reached) or 202 with the job id, later ones 429 ``rate_limited``
    with ``Retry-After``; never 5xx. Alice's and Bob's devices get nothing."""
    limit = hostile.stack.app.extensions["beacon_settings"].rate_limit_test_push
    assert limit is not None and limit.limit == 3, "the shared stack keeps the default"
    examples = 40
    callers = [hostile.mallory, *(hostile.stack.user(f"mallory{i}") for i in range(7))]
    turns = itertools.cycle(callers)
    calls: Counter[str] = Counter()
    first_call: dict[str, float] = {}
    alice_attempts = hostile.stack.push.attempts(hostile.endpoint)
    tally: Counter[str] = Counter()
    headers = st.dictionaries(
        st.sampled_from(
            [
                "X-HTTP-Method-Override",
                "X-Forwarded-For",
                "Origin",
                "Accept",
                "Content-Encoding",
                "Cookie",
                "X-User-Id",
                "Idempotency-Key",
            ]
        ),
        st.one_of(
            st.sampled_from(
                [
                    "DELETE",
                    "127.0.0.1",
                    "https://evil.example",
                    "text/html",
                    "gzip",
                    "session=x",
                    hostile.alice.id,
                ]
            ),
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
        ),
        max_size=3,
    )
    bodies = st.one_of(
        st.none(),
        json_values.map(lambda v: ("json", v)),
        st.tuples(raw_bodies(), st.sampled_from(CONTENT_TYPES)).map(lambda t: ("raw", t)),
    )

    @example((None, {}))
    @example((("json", {"user_id": hostile.alice.id}), {}))
    @example((("raw", (b'{"x": "' + b"x" * 70_000 + b'"}', "application/json")), {}))
    @example((("raw", (b"\xff\xfe", "text/plain")), {"X-User-Id": hostile.alice.id}))
    @settings(settings.get_profile("beacon-security"), max_examples=examples)
    @given(st.tuples(bodies, headers))
    def case(call):
        body, extra = call
        user = next(turns)
        kwargs: dict[str, Any] = {"headers": dict(extra)}
        if body is not None:
            kind, value = body
            if kind == "json":
                kwargs["json"] = value
            else:
                kwargs["data"], content_type = value
                if content_type:
                    kwargs["headers"]["Content-Type"] = content_type
        first_call.setdefault(user.id, time.monotonic())
        calls[user.id] += 1
        response = _call(hostile, "POST", "/api/notifications/test", user=user, **kwargs)
        _answer(response, tally)
        answer = response.json()
        if response.status_code == 429:
            assert calls[user.id] > limit.limit, "refused within the burst"
            assert answer["error"] == "rate_limited" and answer["retry_after"] > 0, answer
            assert int(response.headers["Retry-After"]) >= 1, response.headers
            return
        # Past the burst, one more every 20 s: only a slow run would see it.
        assert calls[user.id] <= limit.limit or (
            time.monotonic() - first_call[user.id] >= limit.period / limit.limit
        ), (calls[user.id], response.text)
        if response.status_code == 202:
            assert answer == {"job_id": answer["job_id"], "done": False}, answer
        else:
            assert response.status_code == 200, response.text
            assert answer == {"job_id": answer["job_id"], "done": True, "deliveries": []}, answer

    case()
    assert hostile.stack.push.attempts(hostile.endpoint) == alice_attempts
    reliability.record(
        "input",
        "`POST /api/notifications/test` with bodies of every kind (it takes none), content "
        "types and odd headers, from callers with no device (hypothesis)",
        expected="200 with no delivery (or 202 with the job id) within `RATE_LIMIT_TEST_PUSH`, "
        "then 429 `rate_limited` with Retry-After; never 5xx; nobody else's device reached",
        observed=tally,
    )
