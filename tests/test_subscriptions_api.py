"""``/api/notifications``: subscribe (upsert), list, unsubscribe — own subscriptions only."""

from __future__ import annotations

import base64
import os

import pytest

PREFIX = "/api/notifications"


def _body(beacon, endpoint=None, **keys):
    sub = beacon.push.new_subscription()
    return {
        "endpoint": endpoint or sub["endpoint"],
        "expirationTime": None,
        "keys": {**sub["keys"], **keys},
    }


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_vapid_key_is_public(beacon):
    response = beacon.api(None, "GET", f"{PREFIX}/vapid-public-key")
    assert response.status_code == 200
    assert response.json()["public_key"] == beacon.env["VAPID_PUBLIC_KEY"]


def test_subscribe_upserts_and_moves_between_users(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    body = _body(beacon)
    first = beacon.api(alice, "POST", f"{PREFIX}/subscribe", json=body)
    assert first.status_code == 201, first.text
    again = beacon.api(alice, "POST", f"{PREFIX}/subscribe", json=body)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    listed = beacon.api(alice, "GET", f"{PREFIX}/subscriptions").json()["subscriptions"]
    assert [s["id"] for s in listed] == [first.json()["id"]]
    assert "p256dh" not in listed[0] and "auth" not in listed[0]

    # The same browser signs in as Bob: the endpoint is his now.
    moved = beacon.api(bob, "POST", f"{PREFIX}/subscribe", json=body)
    assert moved.status_code == 200
    assert beacon.api(alice, "GET", f"{PREFIX}/subscriptions").json()["subscriptions"] == []
    assert len(beacon.api(bob, "GET", f"{PREFIX}/subscriptions").json()["subscriptions"]) == 1


def test_nobody_deletes_another_users_subscription(beacon):
    alice, mallory = beacon.user("alice"), beacon.user("mallory")
    body = _body(beacon)
    sub_id = beacon.api(alice, "POST", f"{PREFIX}/subscribe", json=body).json()["id"]
    assert beacon.api(mallory, "GET", f"{PREFIX}/subscriptions").json()["subscriptions"] == []
    stolen = beacon.api(mallory, "DELETE", f"{PREFIX}/unsubscribe/{sub_id}")
    assert stolen.status_code == 404 and stolen.json()["error"] == "subscription_not_found"
    by_endpoint = beacon.api(
        mallory, "DELETE", f"{PREFIX}/unsubscribe-by-endpoint", json={"endpoint": body["endpoint"]}
    )
    assert by_endpoint.status_code == 404
    assert len(beacon.api(alice, "GET", f"{PREFIX}/subscriptions").json()["subscriptions"]) == 1

    assert beacon.api(alice, "DELETE", f"{PREFIX}/unsubscribe/{sub_id}").status_code == 204
    assert beacon.api(alice, "DELETE", f"{PREFIX}/unsubscribe/{sub_id}").status_code == 404
    body2 = _body(beacon)
    beacon.api(alice, "POST", f"{PREFIX}/subscribe", json=body2)
    gone = beacon.api(
        alice, "DELETE", f"{PREFIX}/unsubscribe-by-endpoint", json={"endpoint": body2["endpoint"]}
    )
    assert gone.status_code == 204
    assert beacon.api(alice, "GET", f"{PREFIX}/subscriptions").json()["subscriptions"] == []


BAD_SUBSCRIPTIONS = {
    "insecure_endpoint": lambda b: {**b, "endpoint": "http://push.example.com/send/abc"},
    "forbidden_host:loopback": lambda b: {**b, "endpoint": "https://127.0.0.1:9/push/x"},
    "forbidden_host:localhost": lambda b: {**b, "endpoint": "https://localhost/push/x"},
    "forbidden_host:private": lambda b: {**b, "endpoint": "https://10.1.2.3/push/x"},
    "forbidden_host:link_local": lambda b: {**b, "endpoint": "https://169.254.169.254/latest"},
    "forbidden_host:ipv6_loopback": lambda b: {**b, "endpoint": "https://[::1]/push/x"},
    "invalid_p256dh:short": lambda b: {**b, "keys": {**b["keys"], "p256dh": _b64(b"\x04" * 33)}},
    "invalid_p256dh:off_curve": lambda b: {
        **b,
        "keys": {**b["keys"], "p256dh": _b64(b"\x04" + b"\x01" * 64)},
    },
    "invalid_p256dh:not_base64": lambda b: {**b, "keys": {**b["keys"], "p256dh": "!!!"}},
    "invalid_auth": lambda b: {**b, "keys": {**b["keys"], "auth": _b64(os.urandom(8))}},
    "invalid_keys": lambda b: {k: v for k, v in b.items() if k != "keys"},
}


@pytest.mark.parametrize("case", sorted(BAD_SUBSCRIPTIONS))
def test_bad_subscription_is_400_with_a_reason(beacon, case):
    user = beacon.user("sub")
    body = BAD_SUBSCRIPTIONS[case](_body(beacon))
    response = beacon.api(user, "POST", f"{PREFIX}/subscribe", json=body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["error"] == case.split(":")[0] and error["message"]
    assert beacon.api(user, "GET", f"{PREFIX}/subscriptions").json()["subscriptions"] == []


def test_non_json_body_is_refused(beacon):
    user = beacon.user("sub")
    response = beacon.api(user, "POST", f"{PREFIX}/subscribe", data="nope")
    assert response.status_code == 400 and response.json()["error"] == "invalid_payload"
