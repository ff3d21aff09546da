"""Tokens an attacker can make: expired, not yet valid, unsigned, the wrong algorithm (HS/RS
confusion included), a wrong or stripped signature, a forged header, an unknown user.

Each is presented on a Socket.IO connection (refused with ``connect_error`` and a code) and on
a REST call (401 JSON with the same code), to a web process configured for HS256 (the shared
stack) and to one configured for RS256 (started here on the same database).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import JWT_SECRET, start_web
from tests.harness.ports import free_port
from tests.harness.sio_client import RecordingClient

pytestmark = pytest.mark.filterwarnings("ignore:The HMAC key")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(sub: str, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": sub, "iat": now, "nbf": now, "exp": now + 300, **extra}


def _hand_made(
    header: dict[str, Any], claims: dict[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    """A JWT assembled by hand (PyJWT refuses to make some of these)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(sign(signing_input.encode()))}"


def _pem(key: Any, private: bool) -> str:
    if private:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ATTACKER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ATTACKER_EC = ec.generate_private_key(ec.SECP256R1())


def _tamper(token: str, sub: str) -> str:
    header, _payload, signature = token.split(".")
    payload = _b64(json.dumps(_claims(sub)).encode())
    return f"{header}.{payload}.{signature}"


def _hs256(secret: bytes) -> Callable[[bytes], bytes]:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def hs_cases(user_id: str, other_id: str) -> dict[str, tuple[Any, str]]:
    """name -> (token, expected code) for a server that verifies HS256 with JWT_SECRET."""
    now = int(time.time())
    good = jwt.encode(_claims(user_id), JWT_SECRET, algorithm="HS256")
    return {
        "expired (beyond the leeway)": (
            jwt.encode(_claims(user_id, exp=now - 60), JWT_SECRET, algorithm="HS256"),
            "token_expired",
        ),
        "not yet valid (nbf in an hour)": (
            jwt.encode(_claims(user_id, nbf=now + 3600), JWT_SECRET, algorithm="HS256"),
            "token_not_yet_valid",
        ),
        "issued in the future (iat in an hour)": (
            jwt.encode(_claims(user_id, iat=now + 3600), JWT_SECRET, algorithm="HS256"),
            "token_not_yet_valid",
        ),
        "alg none": (jwt.encode(_claims(user_id), None, algorithm="none"), "invalid_token"),
        "alg NONE, hand-made, empty signature": (
            _hand_made({"alg": "NONE", "typ": "JWT"}, _claims(user_id), lambda _d: b""),
            "invalid_token",
        ),
        "HS512 with the right secret": (
            jwt.encode(_claims(user_id), JWT_SECRET, algorithm="HS512"),
            "invalid_token",
        ),
        "RS256 signed by the attacker": (
            jwt.encode(_claims(user_id), _pem(ATTACKER_RSA, True), algorithm="RS256"),
            "invalid_token",
        ),
        "RS256 with the attacker's key embedded (jwk header)": (
            jwt.encode(
                _claims(user_id),
                _pem(ATTACKER_RSA, True),
                algorithm="RS256",
                headers={
                    "jwk": json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(ATTACKER_RSA.public_key()))
                },
            ),
            "invalid_token",
        ),
        "ES256 signed by the attacker": (
            jwt.encode(_claims(user_id), _pem(ATTACKER_EC, True), algorithm="ES256"),
            "invalid_token",
        ),
        "wrong secret": (
            jwt.encode(_claims(user_id), "not-the-secret-" + "z" * 40, algorithm="HS256"),
            "invalid_token",
        ),
        "payload swapped for another user (signature kept)": (
            _tamper(good, other_id),
            "invalid_token",
        ),
        "signature stripped": (good.rsplit(".", 1)[0] + ".", "invalid_token"),
        "kid pointing at a file": (
            jwt.encode(
                _claims(user_id), JWT_SECRET, algorithm="HS256", headers={"kid": "../../dev/null"}
            ),
            None,  # kid is ignored: still a valid token (the key never comes from the token)
        ),
        "unknown user": (
            jwt.encode(_claims(str(uuid.uuid4())), JWT_SECRET, algorithm="HS256"),
            "unknown_user",
        ),
        "sub not a user id": (
            jwt.encode(_claims("admin"), JWT_SECRET, algorithm="HS256"),
            "invalid_token",
        ),
        "no sub": (
            jwt.encode({"exp": now + 300}, JWT_SECRET, algorithm="HS256"),
            "invalid_token",
        ),
        "no exp": (jwt.encode({"sub": user_id}, JWT_SECRET, algorithm="HS256"), "invalid_token"),
        "garbage": ("a.b.c", "invalid_token"),
        "oversized (10 KB)": ("x" * 10_000, "missing_token"),
        "a number instead of a string": (12345, "missing_token"),
    }


def _try(url: str, token: Any) -> tuple[str | None, str | None]:
    """(Socket.IO refusal code, REST error code); None where the token was accepted."""
    client = RecordingClient(name="attacker")
    try:
        if isinstance(token, str):
            ok, error = client.try_connect(url, token)
        else:  # a non-string token only fits in the auth object
            ok, error = True, None
            try:
                client.sio.connect(url, auth={"token": token}, wait_timeout=10)
            except Exception:  # noqa: BLE001 - refused
                ok, error = False, client.last_connect_error
    finally:
        client.disconnect()
    sio_code = None if ok else (error or {}).get("data", {}).get("error")
    if not isinstance(token, str):
        return sio_code, None
    response = requests.get(
        url + "/api/topics", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    rest_code = None if response.status_code == 200 else response.json()["error"]
    if response.status_code not in (200, 401):
        raise AssertionError(f"REST answered {response.status_code}: {response.text}")
    return sio_code, rest_code


def _check(url: str, cases: dict[str, tuple[Any, str | None]], reliability, server: str) -> None:
    for name, (token, expected) in cases.items():
        sio_code, rest_code = _try(url, token)
        assert sio_code == expected, (name, sio_code)
        if isinstance(token, str):
            assert rest_code == expected, (name, rest_code)
        outcome = "accepted (as it must)" if expected is None else f"refused `{expected}`"
        reliability.record(
            "tokens",
            f"{server}: {name}",
            expected="Socket.IO connect_error + REST 401 with the code"
            if expected
            else "accepted: the key never comes from the token",
            observed=f"{outcome} on Socket.IO" + (" and REST" if isinstance(token, str) else ""),
        )


def test_hs256_server_refuses_forged_tokens(beacon, reliability):
    user, other = beacon.user("victim"), beacon.user("other")
    _check(beacon.url, hs_cases(user.id, other.id), reliability, "HS256 server")


@pytest.fixture(scope="module")
def rs256_web(stack, run_dir):
    """A web process of the same deployment, verifying RS256 tokens with a public key."""
    env = {
        **stack.env,
        "JWT_ALGORITHM": "RS256",
        "JWT_SECRET": "",
        "JWT_PUBLIC_KEY": _pem(RSA_KEY, False),
        "JWT_PRIVATE_KEY": _pem(RSA_KEY, True),
    }
    port = free_port()
    web = start_web(f"web-rs256-{stack.backend}", env, port, run_dir)
    yield f"http://127.0.0.1:{port}"
    web.stop()


def test_rs256_server_refuses_algorithm_confusion(beacon, rs256_web, reliability):
    user = beacon.user("victim")
    now = int(time.time())
    private = _pem(RSA_KEY, True)
    public_pem = _pem(RSA_KEY, False).encode()
    valid = jwt.encode(_claims(user.id), private, algorithm="RS256")
    cases = {
        "valid RS256 token (control)": (valid, None),
        "HS256 signed with the server's public key (HS/RS confusion)": (
            _hand_made({"alg": "HS256", "typ": "JWT"}, _claims(user.id), _hs256(public_pem)),
            "invalid_token",
        ),
        "HS256 signed with the shared secret of the HS deployment": (
            jwt.encode(_claims(user.id), JWT_SECRET, algorithm="HS256"),
            "invalid_token",
        ),
        "PS256 signed with the right private key": (
            jwt.encode(_claims(user.id), private, algorithm="PS256"),
            "invalid_token",
        ),
        "RS512 signed with the right private key": (
            jwt.encode(_claims(user.id), private, algorithm="RS512"),
            "invalid_token",
        ),
        "RS256 signed by the attacker": (
            jwt.encode(_claims(user.id), _pem(ATTACKER_RSA, True), algorithm="RS256"),
            "invalid_token",
        ),
        "alg none": (jwt.encode(_claims(user.id), None, algorithm="none"), "invalid_token"),
        "expired": (
            jwt.encode(_claims(user.id, exp=now - 60), private, algorithm="RS256"),
            "token_expired",
        ),
        "not yet valid": (
            jwt.encode(_claims(user.id, nbf=now + 3600), private, algorithm="RS256"),
            "token_not_yet_valid",
        ),
        "unknown user": (
            jwt.encode(_claims(str(uuid.uuid4())), private, algorithm="RS256"),
            "unknown_user",
        ),
    }
    _check(rs256_web, cases, reliability, "RS256 server")
