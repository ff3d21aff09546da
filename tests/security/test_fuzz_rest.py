"""Property-based fuzzing of every REST route that takes input: bodies (JSON of every shape,
raw bytes, invalid UTF-8, deep, oversized, any content type), path segments and query strings.
Every answer must be a 2xx or a 4xx with a JSON ``{"error", "message"}`` body; never a 5xx,
and no row may be stored for the attacker (checked by the ``hostile`` fixture)."""

from __future__ import annotations

from collections import Counter

import requests
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.security.strategies import (
    CONTENT_TYPES,
    EDGE_STRINGS,
    HOSTILE_ENDPOINTS,
    huge_texts,
    json_values,
    payloads,
    raw,
    raw_bodies,
    segment,
    texts,
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


def _call(h, method, path, **kwargs):
    headers = {"Authorization": f"Bearer {h.mallory.token}", **kwargs.pop("headers", {})}
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
