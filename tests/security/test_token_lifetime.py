"""Open sockets are held to their token: expiry notice, refresh, and closing.

The token used to be verified only at connect, so a socket outlived its ``exp`` and its user's
deletion. These tests run a web process of its own with a short notice
(``TOKEN_EXPIRING_NOTICE=3``), a tight sweep and a 1-second leeway, and 6-second tokens minted
by the real CLI (``beacon token USER --ttl 6``) or signed here with the stack's secret. Every
wait is for an event or a condition; the bounds say how late the server may be.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import jwt
import pytest
from sqlalchemy import delete

from tests.conftest import JWT_SECRET, Stack, shared_services_stack
from tests.harness.sio_client import RecordingClient
from tests.harness.waiting import wait_until

if TYPE_CHECKING:
    from tests.conftest import TestUser

pytestmark = pytest.mark.filterwarnings("ignore:The HMAC key")

NOTICE = 3.0  # TOKEN_EXPIRING_NOTICE
SWEEP = 0.25  # TOKEN_SWEEP_INTERVAL
LEEWAY = 1  # JWT_LEEWAY
# How late past its due time the server may act: a sweep interval plus a loaded machine.
SLACK = SWEEP + 2.0


@pytest.fixture(scope="module")
def short(backend: str, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """A web process (no worker is needed) with short token timings."""
    with shared_services_stack(
        request,
        backend,
        f"beacon_tokens_{backend}",
        name=f"tokens-{backend}",
        workers={},
        TOKEN_EXPIRING_NOTICE=str(NOTICE),
        TOKEN_SWEEP_INTERVAL=str(SWEEP),
        JWT_LEEWAY=str(LEEWAY),
    ) as stack:
        yield stack


@pytest.fixture
def tokens(short: Stack) -> Iterator[Stack]:
    yield short
    short.close_clients()


def _sign(sub: str, exp: int, *, secret: str = JWT_SECRET, **claims: Any) -> str:
    now = int(time.time())
    return jwt.encode(
        {"sub": sub, "iat": now, "nbf": now, "exp": exp, **claims}, secret, algorithm="HS256"
    )


def _exp_of(token: str) -> int:
    return int(jwt.decode(token, options={"verify_signature": False})["exp"])


def _at(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def _cli_token(stack: Stack, user: TestUser, ttl: int) -> str:
    return stack.cli("token", user.username, "--ttl", str(ttl))


def _wait_closed(client: RecordingClient, timeout: float) -> float:
    """Wait for the server to close ``client``; the wall-clock time it happened."""
    client.wait_for_event("disconnect", timeout=timeout)
    wait_until(lambda: not client.connected, timeout=5, message=f"{client.name} still connected")
    return time.time()


def test_expiring_notice_then_close_without_refresh(tokens: Stack, reliability) -> None:
    alice, bob = tokens.user("alice"), tokens.user("bob")
    token = _cli_token(tokens, alice, 6)
    exp = _exp_of(token)
    client = RecordingClient(name="alice")
    tokens.clients.append(client)
    client.connect(tokens.url, token)
    # A refused refresh changes nothing: another user's (long-lived) token is not taken.
    refused = client.call("refresh_token", {"token": bob.token})
    assert refused["ok"] is False and refused["error"] == "token_mismatch", refused

    notice = client.wait_for_event("token_expiring", timeout=exp - time.time() + SLACK)
    noticed_at = time.time()
    assert _at(notice["expires_at"]) == exp
    assert exp - NOTICE - 1 <= noticed_at <= exp - NOTICE + SLACK, (noticed_at, exp)

    expired = client.wait_for_event("token_expired", timeout=exp + LEEWAY - time.time() + SLACK)
    assert _at(expired["expires_at"]) == exp
    closed_at = _wait_closed(client, timeout=5)
    assert exp + LEEWAY - 1 <= closed_at <= exp + LEEWAY + SLACK, (closed_at, exp)
    assert len(client.events("token_expiring")) == 1
    names = [r.name for r in client.received() if r.name != "user_status_change"]
    assert (
        names.index("token_expiring") < names.index("token_expired") < names.index("disconnect")
    ), names

    # The user went offline: nothing of the connection is left behind.
    def online() -> set[str]:
        return {u["user_id"] for u in tokens.api(bob, "GET", "/api/users/online").json()["users"]}

    wait_until(lambda: alice.id not in online(), message="alice still listed online")
    reliability.record(
        "tokens",
        "open socket past its token's `exp`, no refresh (6 s token, notice 3 s, leeway 1 s)",
        expected="`token_expiring` once before `exp`, then `token_expired` and a disconnect "
        "within a sweep after `exp` + leeway",
        observed=f"notice {exp - noticed_at:.1f}s before exp; closed "
        f"{closed_at - exp - LEEWAY:+.1f}s after exp + leeway",
    )


def test_refresh_keeps_the_connection_open(tokens: Stack, reliability) -> None:
    alice, probe_user = tokens.user("alice"), tokens.user("probe")
    topic = tokens.topic(alice)
    exp = int(time.time()) + 6
    client = tokens.client(dataclasses.replace(alice, token=_sign(alice.id, exp)), "alice")
    # The probe's token ends at the same second and is never refreshed: its close proves the
    # sweep went past the first ``exp``.
    probe = tokens.client(dataclasses.replace(probe_user, token=_sign(probe_user.id, exp)), "probe")

    client.wait_for_event("token_expiring", timeout=exp - time.time() + SLACK)
    fresh = _cli_token(tokens, alice, 8)
    ack = client.call("refresh_token", {"token": fresh})
    assert ack == {"ok": True, "expires_at": ack["expires_at"]}, ack
    assert _at(ack["expires_at"]) == _exp_of(fresh)

    probe.wait_for_event("token_expired", timeout=exp + LEEWAY - time.time() + SLACK)
    _wait_closed(probe, timeout=5)
    assert client.connected
    client.assert_no_event("token_expired")
    joined = client.call("join_topic", {"topic_id": topic.topic_id})
    assert joined["ok"], joined

    # The new token gets its own notice (one per token), and can be refreshed again.
    second = client.wait_for_event(
        "token_expiring",
        lambda p: _at(p["expires_at"]) == _exp_of(fresh),
        timeout=_exp_of(fresh) - time.time() + SLACK,
    )
    assert second["expires_at"] == ack["expires_at"]
    again = client.call("refresh_token", {"token": _cli_token(tokens, alice, 600)})
    assert again["ok"], again
    assert len(client.events("token_expiring")) == 2
    reliability.record(
        "tokens",
        "`refresh_token` with a new token of the same user on `token_expiring`",
        expected="ack `{ok, expires_at}`; the socket outlives the first `exp`; a notice for "
        "the new token too",
        observed="acked; still connected after a same-`exp` probe was closed; 2nd notice came",
    )


def _refusal_cases(stack: Stack, user: TestUser, other: TestUser) -> dict[str, tuple[Any, str]]:
    now = int(time.time())
    good = _sign(user.id, now + 300)
    header, _payload, signature = good.split(".")
    swapped = jwt.encode({"sub": other.id, "exp": now + 300}, "x" * 40, algorithm="HS256")
    return {
        "another user's valid token": ({"token": other.token}, "token_mismatch"),
        "a valid token of a user that does not exist": (
            {"token": _sign(str(uuid.uuid4()), now + 300)},
            "token_mismatch",
        ),
        "garbage": ({"token": "a.b.c"}, "invalid_token"),
        "signed with another secret": (
            {"token": _sign(user.id, now + 300, secret="not-the-secret-" + "z" * 40)},
            "invalid_token",
        ),
        "payload swapped for another user (signature kept)": (
            {"token": f"{header}.{swapped.split('.')[1]}.{signature}"},
            "invalid_token",
        ),
        "alg none": (
            {"token": jwt.encode({"sub": user.id, "exp": now + 300}, None, algorithm="none")},
            "invalid_token",
        ),
        "expired (beyond the leeway)": ({"token": _sign(user.id, now - 60)}, "token_expired"),
        "not yet valid": (
            {"token": _sign(user.id, now + 300, nbf=now + 3600)},
            "token_not_yet_valid",
        ),
        "no token": ({}, "missing_token"),
        "a number": ({"token": 12345}, "missing_token"),
        "oversized (10 KB)": ({"token": "x" * 10_000}, "missing_token"),
        "not an object": ("eyJ", "invalid_payload"),
        "an extra field": ({"token": good, "sub": other.id}, "unknown_field"),
    }


def test_refused_refreshes_keep_the_user_and_expiry(tokens: Stack, reliability) -> None:
    alice, bob = tokens.user("alice"), tokens.user("bob")
    own, bobs = tokens.topic(alice), tokens.topic(bob)
    token = _cli_token(tokens, alice, 120)
    client = RecordingClient(name="alice")
    tokens.clients.append(client)
    client.connect(tokens.url, token)
    tally: dict[str, int] = {}
    for name, (payload, code) in _refusal_cases(tokens, alice, bob).items():
        ack = client.call("refresh_token", payload)
        assert ack.get("ok") is False and ack.get("error") == code, (name, ack)
        assert isinstance(ack.get("message"), str) and ack["message"], (name, ack)
        tally[f"`{code}`"] = tally.get(f"`{code}`", 0) + 1
    assert client.connected
    # Still Alice: her topic answers, Bob's does not, and what she sends is hers.
    assert client.call("join_topic", {"topic_id": bobs.topic_id})["error"] == "not_a_member"
    sent = client.call("send_message", own.ref(message="still me"))
    assert sent["ok"] and sent["message"]["sender"]["id"] == alice.id, sent
    # The connection's expiry is the original token's: a valid refresh says the new one.
    fresh = _cli_token(tokens, alice, 240)
    ack = client.call("refresh_token", {"token": fresh})
    assert ack["ok"] and _at(ack["expires_at"]) == _exp_of(fresh) != _exp_of(token), ack
    reliability.record(
        "tokens",
        "`refresh_token` with another user's, forged, expired, malformed or missing tokens",
        expected="refused with a code; the connection keeps its user and its expiry",
        observed=tally,
    )


def test_deleted_user_is_disconnected(tokens: Stack, reliability) -> None:
    carol, bob = tokens.user("carol"), tokens.user("bob")
    phone, laptop = tokens.client(carol, "carol-phone"), tokens.client(carol, "carol-laptop")
    bystander = tokens.client(bob, "bob")
    from webapp.extensions import db
    from webapp.models import User

    with tokens.app.app_context():
        db.session.execute(delete(User).where(User.id == uuid.UUID(carol.id)))
        db.session.commit()
        db.session.remove()
    deleted_at = time.time()
    for client in (phone, laptop):
        revoked = client.wait_for_event("access_revoked", timeout=SLACK + 3)
        assert revoked["error"] == "unknown_user", revoked
        _wait_closed(client, timeout=5)
    took = time.time() - deleted_at
    assert bystander.connected
    assert bystander.call("refresh_token", {"token": _cli_token(tokens, bob, 60)})["ok"]
    reliability.record(
        "tokens",
        "user deleted while 2 of their sockets are open",
        expected="`access_revoked` (`unknown_user`) and a disconnect on each within a sweep; "
        "other users unaffected",
        observed=f"both closed {took:.1f}s after the delete; bystander connected",
    )
