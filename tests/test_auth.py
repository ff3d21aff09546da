"""Connections and REST calls without a valid token are refused."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest

from tests.conftest import JWT_SECRET


def _token(sub: str, *, secret: str = JWT_SECRET, alg: str = "HS256", **claims) -> str:
    now = int(time.time())
    body = {"sub": sub, "iat": now, "exp": now + 300, **claims}
    return jwt.encode(body, secret, algorithm=alg)


def _unsigned(sub: str) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + 300}, None, algorithm="none")


CASES = {
    "missing": lambda uid: None,
    "garbage": lambda uid: "not-a-jwt",
    "expired": lambda uid: _token(uid, exp=int(time.time()) - 3600),
    "not_yet_valid": lambda uid: _token(uid, nbf=int(time.time()) + 3600),
    "forged": lambda uid: _token(uid, secret="another-secret-" + "y" * 40),
    "alg_none": _unsigned,
    "unknown_user": lambda uid: _token(str(uuid.uuid4())),
    "no_exp": lambda uid: jwt.encode({"sub": uid}, JWT_SECRET, algorithm="HS256"),
}
EXPECTED_CODE = {
    "missing": "missing_token",
    "expired": "token_expired",
    "not_yet_valid": "token_not_yet_valid",
    "unknown_user": "unknown_user",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_token_is_refused_on_connect_and_rest(beacon, case):
    user = beacon.user("victim")
    token = CASES[case](user.id)
    client = beacon.new_client(case)
    ok, error = client.try_connect(beacon.url, token)
    assert not ok and not client.connected
    assert isinstance(error, dict) and error.get("message"), error
    assert error["data"]["error"] == EXPECTED_CODE.get(case, "invalid_token")

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = beacon.api(None, "GET", "/api/topics", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == EXPECTED_CODE.get(case, "invalid_token")


def test_valid_token_connects(beacon):
    user = beacon.user("ok")
    client = beacon.client(user)
    assert client.connected
    assert beacon.api(user, "GET", "/api/topics").status_code == 200
