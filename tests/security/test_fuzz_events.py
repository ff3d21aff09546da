"""Property-based fuzzing of every Socket.IO event: each case must be answered with a refusal
ack carrying a documented code (or, for a ``sync`` that is valid, a catch-up holding nothing
of anyone else's); nothing may be stored; nobody else may be disturbed."""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections import Counter

import jwt
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tests.conftest import JWT_SECRET
from tests.security.conftest import REFUSALS, attackers, dumps, raw_call, refusal
from tests.security.strategies import (
    any_char,
    huge_texts,
    ids,
    json_values,
    message_ids,
    nested,
    payloads,
    texts,
    uuid_variants,
)

EXPECTED = "error ack with a documented code; nothing stored; bystander unaffected"
# The codes of every event's refusals: the shared ones and set_presence's own (FRONTEND_GUIDE.md).
CODES = REFUSALS | {"invalid_state"}
PRESENCE_STATES = ("active", "idle")
# Near misses of the two states: case, spaces, NUL, look-alikes, other presence words.
NOT_STATES = [
    "Active",
    "IDLE",
    " idle",
    "active ",
    "idle\x00",
    "active\n",
    "\u0430ctive",  # Cyrillic a
    "ａｃｔｉｖｅ",
    "idle\u200d",
    "offline",
    "away",
    "online",
    "busy",
    "",
]


def _tokens(h):
    """Tokens Mallory may present: Alice's (valid, another user), forged or expired ones."""
    now = int(time.time())
    claims = {"sub": h.mallory.id, "exp": now + 300}
    return st.sampled_from(
        [
            h.alice.token,
            jwt.encode({**claims, "sub": h.alice.id}, "x" * 40, algorithm="HS256"),
            jwt.encode({**claims, "exp": now - 60}, JWT_SECRET, algorithm="HS256"),
            jwt.encode({**claims, "nbf": now + 3600}, JWT_SECRET, algorithm="HS256"),
            jwt.encode(claims, None, algorithm="none"),
            h.mallory.token.rsplit(".", 1)[0] + ".",
        ]
    )


def _fields(h, event):
    if event == "refresh_token":
        return {"token": st.one_of(_tokens(h), texts, json_values)}
    if event == "set_presence":
        # Never a valid state: every case must be refused (the valid ones are tested below).
        states = st.one_of(st.sampled_from(NOT_STATES), texts, huge_texts, json_values)
        return {"state": states.filter(lambda v: v not in PRESENCE_STATES)}
    refs = {
        "topic_id": ids(h.topic.topic_id, h.topic.room_id, h.mallory.id),
        "room_id": ids(h.topic.room_id, h.topic.topic_id),
    }
    if event == "send_message":
        refs["message"] = st.one_of(texts, huge_texts, json_values)
    if event == "mark_as_read":
        refs["message_ids"] = message_ids(*h.message_ids)
    if event == "mark_as_unread":
        refs["message_id"] = st.one_of(
            st.sampled_from(h.message_ids),  # Alice's, in her topic
            st.integers(min_value=-(2**70), max_value=2**70),
            st.sampled_from([0, 1, -1, MAX_BIGINT, MAX_BIGINT + 1, 1.0, 1.5, True, "1"]),
            json_values,
        )
    if event == "sync":
        # The one event whose payload is mostly optional: see _sync_expected.
        return {"since": SINCE}
    return refs


EVENTS = {
    "join_topic": 150,
    "leave_topic": 100,
    "send_message": 200,
    "mark_as_read": 150,
    "refresh_token": 100,
    "set_presence": 120,
    # client state (issue 18)
    "sync": 80,
    "mark_as_unread": 120,
    "typing": 120,
}
MAX_BIGINT = 2**63 - 1
SINCE = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.integers(min_value=0, max_value=2**40),
    st.sampled_from([0, -1, MAX_BIGINT, MAX_BIGINT + 1, 1.0, 0.5, True, False, "0", "1", None]),
    texts,
    json_values,
)


def _well_formed(h, event):
    """Payloads that pass the shape checks, so that the gates behind them are fuzzed too:
    Alice's topic (in any spelling ``uuid.UUID`` reads), its room or another, her message ids
    or ids of no message; for ``sync``, any ``since`` in range."""
    if event == "sync":
        return st.one_of(
            st.just({}),
            st.fixed_dictionaries({"since": st.one_of(st.integers(0, MAX_BIGINT), SINCE)}),
        )
    if event not in ("mark_as_unread", "typing"):
        return st.nothing()
    topic, room = h.topic.topic_id, h.topic.room_id
    optional = {"room_id": st.sampled_from([room, str(uuid.uuid4()), topic])}
    if event == "mark_as_unread":
        optional["message_id"] = st.one_of(
            st.sampled_from(h.message_ids), st.integers(1, MAX_BIGINT)
        )
    return st.fixed_dictionaries(
        {"topic_id": st.sampled_from([*uuid_variants(topic), str(uuid.uuid4())])},
        optional=optional,
    )


def _sync_expected(payload):
    """Whether a ``sync`` payload must be answered ok (True), refused (False), or may be
    either (None: ``since: null``, which may read as absent, and ids past the database's
    bigint, which may be refused)."""
    if not isinstance(payload, dict) or set(payload) - {"since"}:
        return False
    if "since" not in payload:
        return True
    since = payload["since"]
    if since is None:
        return None
    if isinstance(since, bool) or not isinstance(since, int) or since < 0:
        return False
    return True if since <= MAX_BIGINT else None


def _nothing_leaked(ack, user, payload):
    """A sync answer of a member of nothing: no topic, no other user, no message; its cursor
    is the ``since`` it sent (or null)."""
    assert ack["topics"] == [], ack
    assert {u["user_id"] for u in ack["users"]} <= {user.id}, ack["users"]
    assert ack["cursor"] in (None, payload.get("since")), ack
    assert isinstance(ack["receipts_enabled"], bool), ack
    assert isinstance(ack["preferences"]["share_read_receipts"], bool), ack


# Events limited per user with every call counted before the payload is read: the setting
# that holds each limit.
LIMITED = {
    "set_presence": "rate_limit_set_presence",
    "sync": "rate_limit_sync",
    "mark_as_unread": "rate_limit_mark_as_unread",
}


def _senders(h, event):
    """(user, connection) pairs a fuzzed event is sent from: Mallory's, and for the events of
    ``LIMITED`` as many other signed-in attackers as the shared stack's per-user limit asks
    for. ``set_presence`` keeps its default there (30/10s), so a single sender would see only
    ``rate_limited`` after 30 cases; spread out, no sender reaches a limit whatever the clock,
    and every payload is judged (test_limits.py tests the limits themselves). tests/conftest.py
    ``base_env`` raises the topic events', sync's and mark_as_unread's limits for the fuzz
    (then Mallory alone sends them), ``send_message`` counts only a member's sends, and
    ``typing`` (one per 2 s per user and topic) only a member's typing."""
    if event not in LIMITED:
        return [(h.mallory, h.client)]
    # Each sender keeps two calls spare: one for after the fuzz (its connection still works).
    users = attackers(h, LIMITED[event], EVENTS[event], spare=2)
    return [(h.mallory, h.client)] + [
        (user, h.stack.client(user, user.username)) for user in users[1:]
    ]


@pytest.mark.parametrize("event", sorted(EVENTS))
def test_fuzzed_payloads_are_refused(hostile, reliability, event):
    tally: Counter[str] = Counter()
    senders = _senders(hostile, event)
    if event == "set_presence":
        # Every attacker is announced active before the fuzz; the mark is after that.
        for user, _ in senders:
            hostile.bystander.wait_for_event(
                "user_status_change", lambda p, u=user: p["user_id"] == u.id and p["is_online"]
            )
    mark = hostile.bystander.mark()
    sender = itertools.cycle(senders)

    cases = payloads(_fields(hostile, event))
    well_formed = _well_formed(hostile, event)
    if not well_formed.is_empty:  # half of the cases (one_of would give them a seventh)
        cases = st.booleans().flatmap(lambda w, c=cases: well_formed if w else c)

    @settings(settings.get_profile("beacon-security"), max_examples=EVENTS[event])
    @given(cases)
    def case(payload):
        user, client = next(sender)
        ack = client.call(event, payload, timeout=30)
        if event == "sync":
            expected = _sync_expected(payload)
            if ack.get("ok") is True:
                assert expected is not False, (payload, ack)
                _nothing_leaked(ack, user, payload)
                tally["ok (nothing of others)"] += 1
                return
            assert expected is not True, (payload, ack)
        # A known event is never answered as unknown (refresh_token once was), and no sender
        # goes over a rate limit (see _senders).
        tally[refusal(ack, CODES - {"unknown_event", "rate_limited"})] += 1

    case()
    assert all(client.connected for _, client in senders)
    if event == "set_presence":
        _presence_still_works(hostile, senders, mark)
    if event in ("mark_as_unread", "typing"):
        _bystander_heard_nothing(hostile, mark)
    expected = EXPECTED
    if event == "sync":
        expected = "a valid `since`: ok with nothing of others' topics; else " + EXPECTED
    reliability.record(
        "input", f"`{event}` payloads (hypothesis)", expected=expected, observed=tally
    )


def _bystander_heard_nothing(h, mark):
    """Bob, joined to Alice's topic, heard nothing of the refused calls: Alice (a member)
    types now, Bob gets her ``user_typing``, and nothing else came before it (events on one
    connection arrive in order)."""
    alice = h.stack.client(h.alice, "alice-typing")
    assert alice.call("join_topic", {"topic_id": h.topic.topic_id})["ok"]
    assert alice.call("typing", {"topic_id": h.topic.topic_id}) == {
        "ok": True,
        "topic_id": h.topic.topic_id,
    }
    h.bystander.wait_for_event("user_typing", lambda p: p["user_id"] == h.alice.id, after=mark)
    heard = [
        (r.name, r.payload["user_id"] if isinstance(r.payload, dict) else r.payload)
        for r in h.bystander.received(after=mark)
        if r.name in ("user_typing", "messages_read", "unread_update")
    ]
    assert heard == [("user_typing", h.alice.id)], heard


def _presence_still_works(h, senders, mark):
    """After the refused set_presence cases: each sender's connection still serves the event,
    every refusal left its user's status alone (the only change announced is the valid call's),
    and nobody else's status moved (Bob, the bystander, stays active)."""
    for _, client in senders:
        assert client.call("set_presence", {"state": "idle"}) == {
            "ok": True,
            "state": "idle",
            "status": "idle",
        }
    users = [user for user, _ in senders]
    for user in users:
        h.bystander.wait_for_event(
            "user_status_change",
            lambda p, u=user: p["user_id"] == u.id and p["status"] == "idle",
            after=mark,
        )
    # (Alice's offline from the fixture's setup may still be on its way: not watched here.)
    watched = {h.bob.id, *(u.id for u in users)}
    changes = [
        (p["user_id"], p["status"])
        for p in h.bystander.events("user_status_change", after=mark)
        if p["user_id"] in watched
    ]
    assert sorted(changes) == sorted((u.id, "idle") for u in users), changes
    online = h.stack.api(h.bob, "GET", "/api/users/online").json()["users"]
    statuses = {u["user_id"]: u["status"] for u in online}
    assert statuses[h.bob.id] == "active"
    assert all(statuses[u.id] == "idle" for u in users), statuses


RESERVED = {"connect", "connect_error", "disconnect", *EVENTS}


def test_fuzzed_unknown_events_are_refused(hostile, reliability):
    tally: Counter[str] = Counter()
    names = st.text(
        any_char.filter(lambda c: "\ud800" > c or c > "\udfff"), min_size=1, max_size=80
    )

    @example("*", None)  # once answered by nobody: the catch-all lost the event name
    @example("message", "hi")
    @settings(settings.get_profile("beacon-security"), max_examples=100)
    @given(names.filter(lambda n: n not in RESERVED), json_values)
    def case(name, payload):
        tally[refusal(hostile.client.call(name, payload, timeout=30), {"unknown_event"})] += 1

    case()
    reliability.record(
        "input", "unknown event names (hypothesis)", expected=EXPECTED, observed=tally
    )


def test_raw_packets_the_client_library_would_not_send(hostile, reliability):
    """Hand-made Socket.IO packets: too deep, NaN/Infinity, duplicate keys, odd event names."""
    topic = hostile.topic.topic_id
    answered: Counter[str] = Counter()
    deep_cases = {
        f"nesting {depth} ({kind})": dumps(["send_message", nested(depth, kind)])
        for depth in (17, 100, 900)
        for kind in ("list", "dict")
    }
    # Deeper than Python's recursion limit: only text can carry it (under the 64 KiB limit).
    for depth, kind, opening, closing in (
        (5_000, "list", "[", "]"),
        (20_000, "list", "[", "]"),
        (5_000, "dict", '{"a":', "}"),
        (9_000, "dict", '{"a":', "}"),
    ):
        middle = "1" if kind == "dict" else ""
        deep_cases[f"nesting {depth} ({kind})"] = (
            '["join_topic",' + opening * depth + middle + closing * depth + "]"
        )
    cases = {
        **deep_cases,
        "NaN topic id": '["join_topic",{"topic_id":NaN}]',
        "Infinity message": f'["send_message",{{"topic_id":"{topic}","message":Infinity}}]',
        "duplicate keys": '["send_message",'
        + f'{{"topic_id":"{topic}","topic_id":"{topic}","message":"x"}}]',
        "huge integer": '["mark_as_read",'
        + f'{{"topic_id":"{topic}","message_ids":[{"9" * 4000}]}}]',
        "numeric event name": f'[42,{{"topic_id":"{topic}"}}]',
        "null event name": "[null,{}]",
        "object as event name": '[{"a":1},{}]',
        "no payload": '["send_message"]',
        "many arguments": '["send_message",{},{},{},{}]',
        "not an array": '{"event":"send_message"}',
        "empty array": "[]",
        "not JSON": '["send_message",{topic_id:}',
        "truncated": '["send_message",{"topic_id":"',
        # The server's own handlers are not events a client may call.
        "event named disconnect": '["disconnect"]',
        "event named connect (new token)": '["connect",{"token":"x"}]',
        "event named connect_error": '["connect_error",{}]',
        "event named *": '["*"]',
        "event named * with a payload": '["*",{"topic_id":"x"}]',
        "NaN state": '["set_presence",{"state":NaN}]',
        "no state": '["set_presence"]',
        "state nested 5000 deep": '["set_presence",{"state":' + "[" * 5000 + "]" * 5000 + "}]",
        "state not JSON": '["set_presence",{"state":idle}]',
        "undecodable event named disconnect": '["disconnect",{',
        # client state (issue 18)
        "NaN since": '["sync",{"since":NaN}]',
        "4000-digit since": '["sync",{"since":' + "9" * 4000 + "}]",
        "since nested 5000 deep": '["sync",{"since":' + "[" * 5000 + "]" * 5000 + "}]",
        "Infinity message id": '["mark_as_unread",'
        + f'{{"topic_id":"{topic}","message_id":Infinity}}]',
        "4000-digit message id": '["mark_as_unread",'
        + f'{{"topic_id":"{topic}","message_id":{"9" * 4000}}}]',
        "typing, duplicate keys": '["typing",'
        + f'{{"topic_id":"{topic}","topic_id":"{uuid.uuid4()}"}}]',
        "typing, no payload": '["typing"]',
    }
    outcomes: dict[str, str] = {}
    for name, packet in cases.items():
        ack = raw_call(hostile.client, packet, timeout=5)
        if ack is None:
            outcomes[name] = "no ack (packet dropped)"
        else:
            code = refusal(ack, CODES)
            outcomes[name] = code
        answered[outcomes[name]] += 1
        assert hostile.client.connected, f"{name}: the sender was disconnected"
        # The connection still serves normal calls after each hostile packet.
        assert refusal(hostile.client.call("join_topic", {"topic_id": topic})) == "not_a_member"
    # Every packet is answered, even those the JSON parser cannot read (see sockets/wire.py).
    unanswered = [n for n in cases if outcomes[n].startswith("no ack")]
    assert not unanswered, {n: outcomes[n] for n in unanswered}
    assert all(outcomes[n] == "unknown_event" for n in cases if n.startswith("event named"))
    # Nobody signed Mallory off: she is still online and was never announced offline.
    online = hostile.stack.api(hostile.bob, "GET", "/api/users/online").json()["users"]
    assert hostile.mallory.id in {u["user_id"] for u in online}
    hostile.bystander.assert_no_event(
        "user_status_change", lambda p: p["user_id"] == hostile.mallory.id and not p["is_online"]
    )
    reliability.record(
        "input",
        "raw Socket.IO packets (nesting to 20 000, 4000-digit numbers, NaN, duplicate keys, "
        "bad event names, the server's own handler names, not an event, malformed JSON; "
        "`sync`, `mark_as_unread`, `typing` too)",
        expected="a refusal ack for every packet, even undecodable ones; connection kept",
        observed=answered,
    )


def test_unicode_messages_round_trip_or_are_refused(beacon, reliability):
    """A member sending any text: stored exactly as sent, or refused with a reason (NUL and
    lone surrogates cannot be stored by PostgreSQL/UTF-8); never a server error."""
    alice, bob = beacon.user("alice"), beacon.user("bob")
    senders = [beacon.user(f"member{i}") for i in range(5)]
    topic = beacon.topic(alice, bob, *senders)
    # Several members take turns: one alone would meet the per-user send rate limit.
    clients = itertools.cycle([beacon.client(u) for u in senders])
    tally: Counter[str] = Counter()
    stored: dict[int, str] = {}

    @settings(settings.get_profile("beacon-security"), max_examples=120)
    @given(
        st.one_of(
            st.text(any_char, min_size=1, max_size=300),
            st.sampled_from(
                ["\x00", "a\x00", "\ud83d", "💥" * 500, "\u202e" + "x" * 10, "\r\n\t x"]
            ),
        )
    )
    def case(text):
        ack = next(clients).call("send_message", topic.ref(message=text), timeout=30)
        if ack["ok"]:
            stored[ack["message"]["id"]] = text
            assert ack["message"]["body"] == text
            tally["stored exactly"] += 1
        else:
            tally[refusal(ack, {"invalid_text", "empty_message", "message_too_long"})] += 1

    case()
    page = beacon.api(alice, "GET", f"/api/topics/{topic.topic_id}/messages?limit=200")
    on_disk = {m["id"]: m["body"] for m in page.json()["messages"]}
    while page.json()["next_before"]:
        before = page.json()["next_before"]
        page = beacon.api(
            alice, "GET", f"/api/topics/{topic.topic_id}/messages?limit=200&before={before}"
        )
        on_disk.update({m["id"]: m["body"] for m in page.json()["messages"]})
    assert on_disk == stored
    assert json.dumps(on_disk)  # every stored body is serialisable text
    reliability.record(
        "input",
        "unicode message bodies from a member (hypothesis)",
        expected="stored and read back byte-exact, or refused with a reason",
        observed=tally,
    )
