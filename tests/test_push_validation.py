"""Validation of browser PushSubscriptions and the send-time SSRF check (no network used)."""

from __future__ import annotations

import base64
import os
import socket
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from webapp.delivery.channels.webpush.subscription import (
    SubscriptionError,
    SubscriptionKeys,
    validate_subscription,
)
from webapp.platform.outbound.addresses import MAX_URL_LENGTH, TargetError, check_target

ENDPOINT = "https://fcm.googleapis.com/fcm/send/dGVzdC10b2tlbi0xMjM0NTY3ODkw:APA91bH"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def browser_keys() -> tuple[str, str]:
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return b64(point), b64(os.urandom(16))


def subscription(endpoint: str = ENDPOINT, **keys: Any) -> dict[str, Any]:
    p256dh, auth = browser_keys()
    return {
        "endpoint": endpoint,
        "expirationTime": None,
        "keys": {"p256dh": p256dh, "auth": auth, **keys},
    }


def refused(data: object, code: str, allowed: tuple[str, ...] = ()) -> SubscriptionError:
    with pytest.raises(SubscriptionError) as info:
        validate_subscription(data, allowed)
    assert info.value.code == code, info.value.message
    assert info.value.message
    return info.value


# -- accepted --------------------------------------------------------------------------------
def test_a_browser_subscription_is_accepted() -> None:
    data = subscription()
    keys = validate_subscription(data, ())
    assert keys == SubscriptionKeys(ENDPOINT, data["keys"]["p256dh"], data["keys"]["auth"])


def test_padded_keys_are_accepted_and_normalised() -> None:
    data = subscription()
    p256dh, auth = data["keys"]["p256dh"], data["keys"]["auth"]
    data["keys"] = {"p256dh": p256dh + "=" * (-len(p256dh) % 4), "auth": auth + "=="}
    keys = validate_subscription(data, ())
    assert (keys.p256dh, keys.auth) == (p256dh, auth)


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://updates.push.services.mozilla.com/wpush/v2/gAAAAABk",
        "https://web.push.apple.com/QGuQyavXutnMH:443",
        "https://wns2-par02p.notify.windows.com/w/?token=BQYAAAB%2b",
        "https://8.8.8.8/push/abc",
        "https://[2606:4700:4700::1111]/push/abc",
        "https://push.example.com:8443/push/abc",
    ],
)
def test_public_endpoints_are_accepted(endpoint: str) -> None:
    assert validate_subscription(subscription(endpoint), ()).endpoint == endpoint


@pytest.mark.parametrize("expiration", [None, 0, 1735689600000, 1.5])
def test_expiration_time_null_or_number(expiration: object) -> None:
    data = subscription()
    data["expirationTime"] = expiration
    validate_subscription(data, ())
    del data["expirationTime"]
    validate_subscription(data, ())


# -- shape and endpoint syntax ---------------------------------------------------------------
@pytest.mark.parametrize("data", [None, [], "https://x", 42])
def test_not_an_object(data: object) -> None:
    refused(data, "invalid_subscription")


def test_bad_expiration_time() -> None:
    for value in ("soon", True, float("inf"), {}):
        data = subscription()
        data["expirationTime"] = value
        refused(data, "invalid_subscription")


@pytest.mark.parametrize(
    "endpoint",
    [
        None,
        "",
        42,
        "fcm.googleapis.com/fcm/send/abc",
        "ftp://fcm.googleapis.com/x",
        "https:///no-host",
        "https://user:pass@fcm.googleapis.com/x",
        "https://fcm.googleapis.com/a b",
        "https://fcm.googleapis.com/\x00",
        "https://fcm.googleapis.com:99999/x",
        "https://fcm.googleapis.com:abc/x",
        "https://bücher.example/x",
    ],
)
def test_malformed_endpoints(endpoint: object) -> None:
    refused(subscription(endpoint), "invalid_endpoint")  # type: ignore[arg-type]


def test_endpoint_length_limit() -> None:
    base = "https://fcm.googleapis.com/fcm/send/"
    ok = base + "a" * (MAX_URL_LENGTH - len(base))
    validate_subscription(subscription(ok), ())
    error = refused(subscription(ok + "a"), "invalid_endpoint")
    assert "2048" in error.message


def test_http_endpoint_is_refused() -> None:
    error = refused(subscription("http://fcm.googleapis.com/fcm/send/abc"), "insecure_endpoint")
    assert "https" in error.message


# -- SSRF: addresses and internal names ------------------------------------------------------
@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1",  # resolvers accept shortened,
        "2130706433",  # decimal,
        "0x7f000001",  # hex
        "0177.0.0.1",  # and octal spellings
        "10.0.0.5",
        "172.16.3.4",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "[::1]",
        "[::]",
        "[fc00::1]",
        "[fd12:3456:789a::1]",
        "[fe80::1]",
        "[fe80::1%25eth0]",
        "[ff02::1]",
        "[fec0::1]",
        "[::ffff:127.0.0.1]",  # IPv4-mapped
        "[::ffff:7f00:1]",
        "[::ffff:10.1.2.3]",
        "[::ffff:169.254.169.254]",
        "[2002:7f00:1::1]",  # 6to4 wrapping 127.0.0.1
        "[64:ff9b::a00:1]",  # NAT64 wrapping 10.0.0.1
        "[2001:db8::1]",  # documentation
        "localhost",
        "LOCALHOST",
        "localhost.",
        "api.localhost",
        "printer.local",
        "metadata.google.internal",
        "redis",  # single labels resolve through the search domain
        "router.lan",
        "nas.home.arpa",
        "1.2.3.4.5",
    ],
)
def test_non_public_hosts_are_refused(host: str) -> None:
    refused(subscription(f"https://{host}/push/abc"), "forbidden_host")


@pytest.mark.parametrize(
    ("endpoint", "allowed"),
    [
        ("http://127.0.0.1:8089/push/abc", ("127.0.0.1:8089",)),
        ("http://127.0.0.1:8089/push/abc", ("127.0.0.1",)),
        ("http://LocalHost:5000/push/abc", ("localhost:5000",)),
        ("https://localhost/push/abc", ("localhost:443",)),
        ("http://[::1]:9000/push/abc", ("[::1]:9000",)),
        ("http://push.test:80/push/abc", ("push.test",)),
    ],
)
def test_allowlisted_hosts_skip_the_https_and_address_checks(
    endpoint: str, allowed: tuple[str, ...]
) -> None:
    assert validate_subscription(subscription(endpoint), allowed).endpoint == endpoint


def test_the_allowlist_is_exact_about_ports() -> None:
    refused(subscription("http://127.0.0.1:8090/x"), "insecure_endpoint", ("127.0.0.1:8089",))
    refused(subscription("https://127.0.0.1:8090/x"), "forbidden_host", ("127.0.0.1:8089",))
    refused(subscription("https://127.0.0.2/x"), "forbidden_host", ("127.0.0.1",))


# -- keys ------------------------------------------------------------------------------------
def test_missing_keys() -> None:
    data = subscription()
    del data["keys"]
    refused(data, "invalid_keys")
    refused({**subscription(), "keys": "abc"}, "invalid_keys")
    for name in ("p256dh", "auth"):
        data = subscription()
        del data["keys"][name]
        refused(data, f"invalid_{name}")


@pytest.mark.parametrize(
    "value",
    [
        "",
        123,
        "BOr+aV/d",  # standard base64, not base64url
        "BOr aVd",
        "BOr!aVd",
        "A",  # impossible length
        "BAAA=A",  # padding in the middle
    ],
)
def test_bad_base64(value: object) -> None:
    refused(subscription(p256dh=value), "invalid_p256dh")
    refused(subscription(auth=value), "invalid_auth")


def test_p256dh_must_be_a_65_byte_uncompressed_point() -> None:
    point = base64.urlsafe_b64decode(subscription()["keys"]["p256dh"] + "=")
    for bad in (point[:64], point + b"\x00", point[:33]):  # wrong lengths (33 = compressed)
        error = refused(subscription(p256dh=b64(bad)), "invalid_p256dh")
        assert "65 bytes" in error.message
    refused(subscription(p256dh=b64(b"\x05" + point[1:])), "invalid_p256dh")


def test_p256dh_must_be_on_the_curve() -> None:
    point = bytearray(base64.urlsafe_b64decode(subscription()["keys"]["p256dh"] + "="))
    point[64] ^= 0x01  # flip a bit of y: (x, y') is not on P-256
    error = refused(subscription(p256dh=b64(bytes(point))), "invalid_p256dh")
    assert "curve" in error.message
    refused(subscription(p256dh=b64(b"\x04" + b"\x00" * 64)), "invalid_p256dh")


@pytest.mark.parametrize("length", [0, 8, 15, 17, 32])
def test_auth_must_be_16_bytes(length: int) -> None:
    error = refused(subscription(auth=b64(os.urandom(length)) or "A"), "invalid_auth")
    assert "auth" in error.message


def test_errors_are_value_errors_with_a_code() -> None:
    error = refused(subscription("http://localhost/x"), "insecure_endpoint")
    assert isinstance(error, ValueError)
    assert str(error) == error.message


# -- send-time check (DNS) -------------------------------------------------------------------
def _fake_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    asked: list[str] = []

    def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[tuple]:
        asked.append(host)
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (
                socket.AF_INET6 if ":" in ip else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (ip, port, 0, 0) if ":" in ip else (ip, port),
            )
            for ip in answers[host]
        ]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_localhost_is_refused_at_send_time() -> None:
    with pytest.raises(TargetError) as info:
        check_target("https://localhost/push/abc", ())
    assert info.value.code == "forbidden_host"


def test_a_name_that_now_resolves_to_loopback_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # It passed validate_subscription (a public-looking name), then was re-pointed: rebinding.
    _fake_dns(monkeypatch, {"push.attacker.example": ["127.0.0.1"]})
    validate_subscription(subscription("https://push.attacker.example/x"), ())
    with pytest.raises(TargetError) as info:
        check_target("https://push.attacker.example/x", ())
    assert info.value.code == "forbidden_host"
    assert "127.0.0.1" in info.value.message


@pytest.mark.parametrize(
    "addresses",
    [["93.184.216.34", "10.0.0.7"], ["2606:2800:220:1::1", "::ffff:127.0.0.1"], ["fe80::1"]],
)
def test_any_non_public_address_refuses(
    monkeypatch: pytest.MonkeyPatch, addresses: list[str]
) -> None:
    _fake_dns(monkeypatch, {"push.example.com": addresses})
    with pytest.raises(TargetError) as info:
        check_target("https://push.example.com/x", ())
    assert info.value.code == "forbidden_host"


def test_public_names_pass_and_failures_are_dns_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _fake_dns(monkeypatch, {"push.example.com": ["93.184.216.34", "2606:2800:220:1::1"]})
    check_target("https://push.example.com/x", ())
    with pytest.raises(TargetError) as info:
        check_target("https://gone.example.com/x", ())
    assert info.value.code == "dns_error"
    assert asked == ["push.example.com", "gone.example.com"]


def test_allowlisted_and_ip_literal_targets_are_not_resolved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked = _fake_dns(monkeypatch, {})
    check_target("http://localhost:8089/push/x", ("localhost:8089",))
    check_target("https://8.8.8.8/push/x", ())
    with pytest.raises(TargetError):
        check_target("https://169.254.169.254/latest/meta-data", ())
    with pytest.raises(TargetError):
        check_target("http://push.example.com/x", ())  # static checks apply too
    assert asked == []
