"""The local push service must itself be right: it is the judge of the sender's tests.

Requests here are built by hand (PyJWT + http_ece), independently of webapp's sender, and one
test sends through pywebpush, a third-party implementation.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import http_ece
import jwt
import pytest
import pywebpush
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.pushservice import (
    PushService,
    PushServiceClient,
    running_push_service,
    running_push_service_process,
    subscription_id,
)

pytestmark = pytest.mark.timeout(60)

SUB = "mailto:ops@example.com"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def public_b64(key: ec.EllipticCurvePrivateKey) -> str:
    return b64(
        key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )


class Pusher:
    """A minimal, independent Web Push client for probing the service."""

    def __init__(self, client: PushServiceClient) -> None:
        self.client = client
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.session = requests.Session()
        self.session.trust_env = False

    def token(self, **overrides: Any) -> str:
        """An ES256 VAPID JWT; a claim overridden with None is left out."""
        key = overrides.pop("_key", self.key)
        claims = {"aud": self.client.origin, "exp": int(time.time()) + 3600, "sub": SUB}
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, key, algorithm="ES256")

    def authorization(self, token: str | None = None, key: str | None = None) -> str:
        return f"vapid t={token or self.token()}, k={key or public_b64(self.key)}"

    def encrypt(self, sub: dict[str, Any], payload: bytes) -> bytes:
        return http_ece.encrypt(
            payload,
            private_key=ec.generate_private_key(ec.SECP256R1()),
            dh=unb64(sub["keys"]["p256dh"]),
            auth_secret=unb64(sub["keys"]["auth"]),
            version="aes128gcm",
        )

    def post(
        self,
        sub: dict[str, Any],
        payload: bytes = b"hello",
        *,
        body: bytes | None = None,
        **header_overrides: str | None,
    ) -> requests.Response:
        headers: dict[str, str | None] = {
            "Authorization": self.authorization(),
            "TTL": "60",
            "Content-Encoding": "aes128gcm",
        }
        headers.update(header_overrides)
        sent = {k: v for k, v in headers.items() if v is not None}
        data = self.encrypt(sub, payload) if body is None else body
        return self.session.post(sub["endpoint"], data=data, headers=sent, timeout=5)


@pytest.fixture(scope="module")
def push() -> Iterator[PushServiceClient]:
    with running_push_service() as client:
        yield client


@pytest.fixture
def pusher(push: PushServiceClient) -> Iterator[Pusher]:
    p = Pusher(push)
    yield p
    p.session.close()


@pytest.fixture
def sub(push: PushServiceClient) -> dict[str, Any]:
    return push.new_subscription()


def refusal(response: requests.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert words in response.json()["message"]


# -- the browser side ------------------------------------------------------------------------
def test_subscriptions_look_like_a_browsers(push: PushServiceClient, sub: dict) -> None:
    assert sub["endpoint"] == f"{push.base_url}/push/{sub['id']}"
    assert sub["expirationTime"] is None
    point = unb64(sub["keys"]["p256dh"])
    assert len(point) == 65 and point[0] == 4
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    assert len(unb64(sub["keys"]["auth"])) == 16
    assert subscription_id(sub) == subscription_id(sub["endpoint"]) == sub["id"]
    assert push.new_subscription()["keys"] != sub["keys"]


# -- accepted pushes -------------------------------------------------------------------------
def test_a_valid_push_is_decrypted_and_recorded(
    push: PushServiceClient, pusher: Pusher, sub: dict
) -> None:
    payload = os.urandom(1000)
    response = pusher.post(sub, payload, Urgency="high", Topic="abc_DEF-123", TTL="90")
    assert response.status_code == 201
    assert response.headers["Location"]
    record = push.record(sub)
    assert (record["attempts"], record["delivered"], record["refused"]) == (1, 1, 0)
    (message,) = record["messages"]
    assert unb64(message["payload_b64"]) == payload
    assert (message["ttl"], message["urgency"], message["topic"]) == (90, "high", "abc_DEF-123")
    assert message["vapid_token"].count(".") == 2


def test_pywebpush_is_accepted(push: PushServiceClient, sub: dict) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    raw = b64(key.private_numbers().private_value.to_bytes(32, "big"))
    pywebpush.webpush(
        subscription_info={"endpoint": sub["endpoint"], "keys": sub["keys"]},
        data="from pywebpush",
        vapid_private_key=raw,
        vapid_claims={"sub": SUB},
        ttl=30,
        timeout=5,
    )
    assert [m["payload"] for m in push.messages(sub)] == ["from pywebpush"]


# -- refused pushes: the service can fail ----------------------------------------------------
def test_a_forged_jwt_is_refused(push: PushServiceClient, pusher: Pusher, sub: dict) -> None:
    forger = ec.generate_private_key(ec.SECP256R1())
    forged = pusher.token(_key=forger)  # signed by another key than the k= it claims
    response = pusher.post(sub, Authorization=pusher.authorization(token=forged))
    refusal(response, 401, "signature")
    record = push.record(sub)
    assert (record["attempts"], record["delivered"], record["messages"]) == (1, 0, [])
    assert record["refusals"][0]["status"] == 401


def test_an_expired_jwt_is_refused(pusher: Pusher, sub: dict) -> None:
    expired = pusher.token(exp=int(time.time()) - 5)
    refusal(pusher.post(sub, Authorization=pusher.authorization(expired)), 401, "expired")


def test_a_jwt_valid_for_more_than_24_hours_is_refused(pusher: Pusher, sub: dict) -> None:
    long_lived = pusher.token(exp=int(time.time()) + 24 * 3600 + 120)
    refusal(pusher.post(sub, Authorization=pusher.authorization(long_lived)), 401, "24 hours")
    ok = pusher.token(exp=int(time.time()) + 24 * 3600 - 120)
    assert pusher.post(sub, Authorization=pusher.authorization(ok)).status_code == 201


@pytest.mark.parametrize(
    "aud",
    ["https://push.example.com", "http://127.0.0.1:1", "http://localhost", None],
)
def test_a_wrong_audience_is_refused(pusher: Pusher, sub: dict, aud: str | None) -> None:
    token = pusher.token(aud=aud)
    refusal(pusher.post(sub, Authorization=pusher.authorization(token)), 401, "aud")


@pytest.mark.parametrize("subject", ["admin@example.com", "", None, "http://example.com"])
def test_a_bad_subject_is_refused(pusher: Pusher, sub: dict, subject: str | None) -> None:
    token = pusher.token(sub=subject)
    refusal(pusher.post(sub, Authorization=pusher.authorization(token)), 401, "sub")


def test_a_missing_exp_is_refused(pusher: Pusher, sub: dict) -> None:
    token = jwt.encode({"aud": pusher.client.origin, "sub": SUB}, pusher.key, algorithm="ES256")
    refusal(pusher.post(sub, Authorization=pusher.authorization(token)), 401, "exp")


@pytest.mark.parametrize(
    ("authorization", "words"),
    [
        (None, "missing Authorization"),
        ("WebPush abc.def.ghi", "scheme"),
        ("Bearer abc", "scheme"),
        ("vapid t=abc.def.ghi", "t= and k="),
        ("vapid t=abc.def.ghi, k=AAAA", "P-256"),
        ("vapid t=not-a-jwt, k={k}", "malformed"),
        ("vapid t={hs256}, k={k}", "malformed"),
    ],
)
def test_malformed_authorization_is_refused(
    pusher: Pusher, sub: dict, authorization: str | None, words: str
) -> None:
    if authorization is not None:
        hs256 = jwt.encode({"aud": pusher.client.origin, "exp": 2**40, "sub": SUB}, "secret" * 8)
        authorization = authorization.format(k=public_b64(pusher.key), hs256=hs256)
    refusal(pusher.post(sub, Authorization=authorization), 401, words)


def test_vapid_parameters_without_spaces_are_accepted(pusher: Pusher, sub: dict) -> None:
    header = f"vapid t={pusher.token()},k={public_b64(pusher.key)}"
    assert pusher.post(sub, Authorization=header).status_code == 201


def test_a_key_bound_subscription_refuses_other_keys(
    push: PushServiceClient, pusher: Pusher
) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    bound = push.new_subscription(application_server_key=public_b64(other))
    refusal(pusher.post(bound), 403, "applicationServerKey")
    pusher.key = other
    assert pusher.post(bound).status_code == 201


@pytest.mark.parametrize(
    ("headers", "status", "words"),
    [
        ({"TTL": None}, 400, "TTL"),
        ({"TTL": "-1"}, 400, "TTL"),
        ({"Content-Encoding": None}, 400, "aes128gcm"),
        ({"Content-Encoding": "aesgcm"}, 400, "aes128gcm"),
        ({"Urgency": "asap"}, 400, "Urgency"),
        ({"Topic": "has spaces"}, 400, "Topic"),
        ({"Topic": "a" * 33}, 400, "Topic"),
    ],
)
def test_bad_headers_are_refused(
    pusher: Pusher, sub: dict, headers: dict[str, str | None], status: int, words: str
) -> None:
    refusal(pusher.post(sub, **headers), status, words)


def test_bodies_that_do_not_decrypt_are_refused(
    push: PushServiceClient, pusher: Pusher, sub: dict
) -> None:
    refusal(pusher.post(sub, body=os.urandom(200)), 400, "decryption failed")
    other = push.new_subscription()
    refusal(pusher.post(sub, body=pusher.encrypt(other, b"for someone else")), 400, "decryption")
    refusal(pusher.post(sub, body=b"short"), 400, "too short")
    refusal(pusher.post(sub, os.urandom(4096)), 413, "4096")
    assert push.record(sub)["delivered"] == 0


def test_unknown_subscription_is_404(push: PushServiceClient, pusher: Pusher, sub: dict) -> None:
    ghost = {**sub, "endpoint": push.base_url + "/push/0123456789abcdef"}
    assert pusher.post(ghost).status_code == 404
    assert push.stats()["unknown_attempts"] >= 1


def test_unsubscribed_is_410(push: PushServiceClient, pusher: Pusher, sub: dict) -> None:
    push.unsubscribe(sub)
    assert pusher.post(sub).status_code == 410


# -- scripted behaviour ----------------------------------------------------------------------
def test_scripted_responses_then_normal(push: PushServiceClient, pusher: Pusher, sub: dict) -> None:
    push.set_behaviour(
        sub,
        [
            {"status": 429, "retry_after": 2},
            {"status": 503, "retry_after": "Wed, 21 Oct 2037 07:28:00 GMT"},
            {"status": 202},
        ],
    )
    first, second, third, fourth = (pusher.post(sub, f"m{i}".encode()) for i in range(4))
    assert (first.status_code, first.headers["Retry-After"]) == (429, "2")
    assert second.headers["Retry-After"] == "Wed, 21 Oct 2037 07:28:00 GMT"
    assert (third.status_code, fourth.status_code) == (202, 201)
    record = push.record(sub)
    assert (record["attempts"], record["delivered"], record["refused"]) == (4, 2, 2)
    assert [m["payload"] for m in record["messages"]] == ["m2", "m3"]


@pytest.mark.parametrize("status", [410, 404, 413, 500, 400, 403])
def test_sticky_status_for_every_request(
    push: PushServiceClient, pusher: Pusher, sub: dict, status: int
) -> None:
    push.set_behaviour(sub, sticky={"status": status, "body": "nope"})
    assert [pusher.post(sub).status_code for _ in range(3)] == [status] * 3
    assert pusher.post(sub).text == "nope"
    push.set_behaviour(sub)  # clears it
    assert pusher.post(sub).status_code == 201


def test_a_scripted_2xx_still_verifies(push: PushServiceClient, pusher: Pusher, sub: dict) -> None:
    push.set_behaviour(sub, [202])
    forged = pusher.token(_key=ec.generate_private_key(ec.SECP256R1()))
    assert pusher.post(sub, Authorization=pusher.authorization(forged)).status_code == 401


def test_admin_api_over_plain_http(push: PushServiceClient, pusher: Pusher) -> None:
    session = requests.Session()
    session.trust_env = False
    with session:
        created = session.post(push.base_url + "/_admin/subscriptions", timeout=5)
        assert created.status_code == 201
        sub = created.json()
        script = json.dumps([{"status": 429, "retry_after": 1}])
        url = f"{push.base_url}/_admin/behaviour/{sub['id']}"
        assert session.post(url, data=script, timeout=5).status_code == 204
        assert session.post(url, json=[{"status": 99}], timeout=5).status_code == 400
        assert session.post(url, data=b"{nope", timeout=5).status_code == 400
        missing = f"{push.base_url}/_admin/behaviour/nope"
        assert session.post(missing, json=[], timeout=5).status_code == 404
        assert pusher.post(sub).status_code == 429
        assert pusher.post(sub, b"ok").status_code == 201
        record = session.get(f"{push.base_url}/_admin/messages/{sub['id']}", timeout=5).json()
        assert (record["attempts"], record["messages"][0]["payload"]) == (2, "ok")
        assert session.get(push.base_url + "/nope", timeout=5).status_code == 404


# -- lifecycle -------------------------------------------------------------------------------
def test_stop_drops_keep_alive_connections() -> None:
    with running_push_service() as client:
        sub = client.new_subscription()
        pusher = Pusher(client)
        assert pusher.post(sub).status_code == 201
    with pytest.raises(requests.ConnectionError):
        pusher.post(sub)  # the pooled connection is gone and nothing listens any more
    pusher.session.close()


def test_only_loopback_addresses() -> None:
    with pytest.raises(ValueError):
        PushService("0.0.0.0")


def test_as_a_subprocess() -> None:
    with running_push_service_process() as client:
        assert client.service is None
        sub = client.new_subscription()
        pusher = Pusher(client)
        assert pusher.post(sub, b"over there").status_code == 201
        assert client.messages(sub)[0]["payload"] == "over there"
        pusher.session.close()
