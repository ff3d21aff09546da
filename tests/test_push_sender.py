"""PushSender against the local push service over real HTTP on loopback.

The push service decrypts every message and verifies every VAPID JWT itself, so a "delivered"
here means a real browser vendor would have accepted the request. The encryption is also
checked against RFC 8291's worked example and http_ece; TLS (verification, host names,
keep-alive, handshake timeout) against a small https server with a test CA; concurrency with
threads and, in a child process, with gevent greenlets as in the push worker.
"""

from __future__ import annotations

import base64
import email.utils
import http.server
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import http_ece
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.harness.certs import make_certs
from tests.pushservice import PushServiceClient, running_push_service
from webapp.delivery.channels.base import Outcome
from webapp.delivery.channels.webpush.ece import MAX_PAYLOAD_BYTES, _encrypt_with, encrypt_aes128gcm
from webapp.delivery.channels.webpush.sender import PushSender
from webapp.delivery.channels.webpush.subscription import SubscriptionKeys
from webapp.delivery.channels.webpush.vapid import (
    JWT_LIFETIME,
    generate_vapid_keypair,
    vapid_public_key_from_private,
)
from workers.retry import backoff_delay

pytestmark = pytest.mark.timeout(60)

SUBJECT = "mailto:push-tests@example.com"
REPO_ROOT = Path(__file__).resolve().parent.parent


def _unb64(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def keys_of(sub: dict[str, Any]) -> SubscriptionKeys:
    return SubscriptionKeys(sub["endpoint"], sub["keys"]["p256dh"], sub["keys"]["auth"])


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def push() -> Iterator[PushServiceClient]:
    with running_push_service() as client:
        yield client


@pytest.fixture(scope="module")
def vapid() -> tuple[str, str]:
    return generate_vapid_keypair()


@pytest.fixture
def sender(vapid: tuple[str, str]) -> Iterator[PushSender]:
    with PushSender(vapid[0], SUBJECT, timeout=5) as s:
        yield s


@pytest.fixture
def sub(push: PushServiceClient) -> dict[str, Any]:
    return push.new_subscription()


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


# -- delivery --------------------------------------------------------------------------------
def test_payload_decrypts_exactly(push: PushServiceClient, sender: PushSender, sub: dict) -> None:
    binary = os.urandom(MAX_PAYLOAD_BYTES)  # the largest payload that fits one record
    text = json.dumps({"type": "message", "body": "héllo ✓"}).encode()
    assert sender.send(keys_of(sub), binary, ttl=60).kind == "delivered"
    result = sender.send(keys_of(sub), text, ttl=60)
    assert result == Outcome(201, "delivered", None, "201 Created")
    messages = push.messages(sub)
    assert [_unb64(m["payload_b64"]) for m in messages] == [binary, text]
    assert messages[1]["payload"] == text.decode()


def test_each_message_gets_a_fresh_ephemeral_key(
    push: PushServiceClient, sender: PushSender, sub: dict
) -> None:
    keys = keys_of(sub)
    seen = set()
    original = sender._post

    def spy(sub: SubscriptionKeys, target: Any, headers: dict, body: bytes) -> Outcome:
        seen.add(body[21 : 21 + 65])  # aes128gcm header: salt, rs, idlen, keyid (sender key)
        return original(sub, target, headers, body)

    sender._post = spy  # type: ignore[method-assign]
    for _ in range(3):
        assert sender.send(keys, b"same payload", ttl=60).kind == "delivered"
    assert len(seen) == 3


def test_encryption_matches_the_rfc_8291_example() -> None:
    """RFC 8291 appendix A: its keys and salt must give exactly the published message body."""
    curve = ec.SECP256R1()
    as_private = ec.derive_private_key(
        int.from_bytes(_unb64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"), "big"), curve
    )
    ua_point = _unb64(
        "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
    )
    ua_public = ec.EllipticCurvePublicKey.from_encoded_point(curve, ua_point)
    body = _encrypt_with(
        b"When I grow up, I want to be a watermelon",
        ua_public,
        ua_point,
        _unb64("BTBZMqHH6r4Tts7J_aSIgg"),
        as_private,
        _unb64("DGv6ra1nlYgDCS1FRnbzlw"),
    )
    assert body == _unb64(
        "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAm"
        "S6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Q"
        "ulcy4a-fN"
    )


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 330, MAX_PAYLOAD_BYTES])
def test_encrypted_bodies_decrypt_with_http_ece(size: int) -> None:
    receiver = ec.generate_private_key(ec.SECP256R1())
    point = receiver.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    auth = os.urandom(16)
    payload = os.urandom(size)
    body = encrypt_aes128gcm(payload, receiver.public_key(), point, auth)
    assert len(body) == 86 + size + 17 <= 4096  # header, payload, delimiter, tag: one record
    plain = http_ece.decrypt(body, private_key=receiver, auth_secret=auth, version="aes128gcm")
    assert plain == payload
    with pytest.raises(ValueError):
        encrypt_aes128gcm(b"x" * (MAX_PAYLOAD_BYTES + 1), receiver.public_key(), point, auth)


def test_headers_ttl_urgency_topic_arrive(
    push: PushServiceClient, sender: PushSender, sub: dict
) -> None:
    keys = keys_of(sub)
    sender.send(keys, b"a", ttl=120, urgency="high", topic="room:7/topic:42")
    sender.send(keys, b"b", ttl=0, urgency="very-low", topic="room:7/topic:42")
    sender.send(keys, b"c", ttl=30, topic="room:7/topic:43")
    sender.send(keys, b"d", ttl=30)
    first, second, third, fourth = push.messages(sub)
    assert (first["ttl"], first["urgency"]) == (120, "high")
    assert (second["ttl"], second["urgency"]) == (0, "very-low")
    assert (third["urgency"], fourth["urgency"]) == ("normal", "normal")
    # Same topic string -> same collapse key; 32 chars of base64url; no topic -> no header.
    assert first["topic"] == second["topic"] == sender.topic_header("room:7/topic:42")
    assert re.fullmatch(r"[A-Za-z0-9_-]{32}", first["topic"])
    assert third["topic"] != first["topic"]
    assert fourth["topic"] is None
    assert "room" not in first["topic"]  # the push service learns nothing about our rooms


def test_send_many_delivers_all_in_order(vapid: tuple[str, str], push: PushServiceClient) -> None:
    subs = [push.new_subscription() for _ in range(5)]
    messages = [(keys_of(subs[i % 5]), f"message {i}".encode()) for i in range(40)]
    with PushSender(vapid[0], SUBJECT, timeout=5, concurrency=4) as sender:
        results = sender.send_many(messages, ttl=60)
    assert [r.kind for r in results] == ["delivered"] * 40
    for k, s in enumerate(subs):
        got = sorted(m["payload"] for m in push.messages(s))
        assert got == sorted(f"message {i}" for i in range(k, 40, 5))


def test_connections_are_pooled(push: PushServiceClient, sender: PushSender, sub: dict) -> None:
    before = push.stats()["connections"]
    for _ in range(20):
        assert sender.send(keys_of(sub), b"x", ttl=60).kind == "delivered"
    assert push.stats()["connections"] - before == 1


def test_concurrent_sends_get_their_own_connections_then_reuse_them(
    vapid: tuple[str, str], push: PushServiceClient
) -> None:
    subs = [push.new_subscription() for _ in range(8)]
    with PushSender(vapid[0], SUBJECT, timeout=5, pool_maxsize=8, concurrency=1) as sender:
        before = push.stats()["connections"]
        barrier = threading.Barrier(8)
        outcomes: list[str] = []

        def worker(k: int) -> None:
            barrier.wait()
            for i in range(5):
                outcome = sender.send(keys_of(subs[k]), f"{k}:{i}".encode(), ttl=60).kind
                outcomes.append(outcome)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        opened = push.stats()["connections"] - before
        assert outcomes == ["delivered"] * 40
        assert 1 <= opened <= 8  # never more connections than requests in flight
        for _ in range(10):  # idle connections are reused: no new ones
            assert sender.send(keys_of(subs[0]), b"again", ttl=60).kind == "delivered"
        assert push.stats()["connections"] - before == opened
    for k, s in enumerate(subs):  # every message reached its own subscription, intact
        assert [m["payload"] for m in push.messages(s)][:5] == [f"{k}:{i}" for i in range(5)]


_GEVENT_SCRIPT = """
from gevent import monkey

monkey.patch_all()

import json
import sys

from gevent.pool import Pool

from webapp.delivery.channels.webpush.sender import PushSender
from webapp.delivery.channels.webpush.subscription import SubscriptionKeys

config = json.load(sys.stdin)
subs = [SubscriptionKeys(*s) for s in config["subs"]]
sender = PushSender(
    config["key"],
    "mailto:push-tests@example.com",
    timeout=5,
    allowed_hosts=(config["allowed"],),  # the connect-time guard runs as well
)


def send(i):
    return sender.send(subs[i % len(subs)], f"g{i}".encode(), ttl=60).kind


outcomes = Pool(50).map(send, range(200))
sender.close()
print(json.dumps(outcomes))
"""


def _send_from_greenlets(config: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    """Run ``_GEVENT_SCRIPT`` in a child process (monkey-patching is process-wide)."""
    done = subprocess.run(
        [sys.executable, "-c", _GEVENT_SCRIPT],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_gevent_greenlets_share_the_sender_safely(
    vapid: tuple[str, str], push: PushServiceClient
) -> None:
    """As in the push worker (``celery -P gevent -c 50``): monkey-patched, 50 greenlets."""
    subs = [push.new_subscription() for _ in range(10)]
    config = {
        "key": vapid[0],
        "allowed": push.base_url.split("://", 1)[1],
        "subs": [[s["endpoint"], s["keys"]["p256dh"], s["keys"]["auth"]] for s in subs],
    }
    before = push.stats()["connections"]
    assert _send_from_greenlets(config) == ["delivered"] * 200
    opened = push.stats()["connections"] - before
    # The greenlets overlapped, each request on a connection of its own, and the default pool
    # (64 idle per origin) keeps them all for reuse: at most one per greenlet.
    assert 1 < opened <= 50
    got = sorted(m["payload"] for s in subs for m in push.messages(s))
    assert got == sorted(f"g{i}" for i in range(200))


def test_a_connection_the_push_service_closed_is_not_reused(
    push: PushServiceClient, sender: PushSender, sub: dict
) -> None:
    assert sender.send(keys_of(sub), b"x", ttl=60).kind == "delivered"
    assert push.service is not None
    push.service._server.close_connections()  # as a push service's idle timeout would
    time.sleep(0.1)
    before = push.stats()["connections"]  # (the admin client reconnects too, before this)
    assert sender.send(keys_of(sub), b"y", ttl=60).kind == "delivered"
    assert push.stats()["connections"] - before == 1


def test_a_long_answer_is_cut_off_and_its_connection_dropped(
    push: PushServiceClient, sender: PushSender, sub: dict
) -> None:
    push.set_behaviour(sub, [{"status": 400, "body": "because " + "z" * 20_000}])
    before = push.stats()["connections"]
    result = sender.send(keys_of(sub), b"x", ttl=60)
    assert (result.status, result.kind) == (400, "rejected")
    assert result.reason.startswith("400 Bad Request: because zzz") and len(result.reason) <= 200
    # The unread rest of that answer must not be taken for the next answer.
    assert sender.send(keys_of(sub), b"y", ttl=60).kind == "delivered"
    assert push.stats()["connections"] - before == 2


# -- status mapping --------------------------------------------------------------------------
@pytest.mark.parametrize("status", [404, 410])
def test_gone_subscriptions_are_expired(
    push: PushServiceClient, sender: PushSender, sub: dict, status: int
) -> None:
    push.set_behaviour(sub, sticky=status)
    for _ in range(2):
        result = sender.send(keys_of(sub), b"x", ttl=60)
        assert (result.status, result.kind) == (status, "expired")


def test_unknown_and_unsubscribed_endpoints_are_expired(
    push: PushServiceClient, sender: PushSender, sub: dict
) -> None:
    unknown = SubscriptionKeys(
        push.base_url + "/push/no-such-id", sub["keys"]["p256dh"], sub["keys"]["auth"]
    )
    assert sender.send(unknown, b"x", ttl=60).status == 404
    push.unsubscribe(sub)
    result = sender.send(keys_of(sub), b"x", ttl=60)
    assert (result.status, result.kind) == (410, "expired")


def test_429_with_retry_after_seconds_then_delivered(
    push: PushServiceClient, sender: PushSender, sub: dict
) -> None:
    push.set_behaviour(sub, [{"status": 429, "retry_after": 7}, {"status": 201}])
    first = sender.send(keys_of(sub), b"x", ttl=60)
    assert (first.status, first.kind, first.retry_after) == (429, "retry", 7.0)
    assert sender.send(keys_of(sub), b"y", ttl=60).kind == "delivered"
    assert sender.send(keys_of(sub), b"z", ttl=60).kind == "delivered"  # script used up
    record = push.record(sub)
    assert (record["attempts"], record["delivered"]) == (3, 2)
    assert [m["payload"] for m in record["messages"]] == ["y", "z"]


def test_retry_after_http_date_is_relative_to_the_clock(
    vapid: tuple[str, str], push: PushServiceClient, sub: dict
) -> None:
    clock = FakeClock(float(int(time.time())))
    date = email.utils.formatdate(clock.now + 120, usegmt=True)
    push.set_behaviour(sub, [{"status": 503, "retry_after": date}])
    with PushSender(vapid[0], SUBJECT, timeout=5, clock=clock) as sender:
        result = sender.send(keys_of(sub), b"x", ttl=60)
    assert (result.status, result.kind, result.retry_after) == (503, "retry", 120.0)


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried(
    push: PushServiceClient, sender: PushSender, sub: dict, status: int
) -> None:
    push.set_behaviour(sub, [status])
    result = sender.send(keys_of(sub), b"x", ttl=60)
    assert (result.status, result.kind, result.retry_after) == (status, "retry", None)


@pytest.mark.parametrize("status", [400, 401, 403, 413, 415])
def test_client_errors_are_rejected_with_the_reason(
    push: PushServiceClient, sender: PushSender, sub: dict, status: int
) -> None:
    push.set_behaviour(sub, sticky={"status": status, "body": f"because {status} " + "z" * 500})
    result = sender.send(keys_of(sub), b"x", ttl=60)
    assert (result.status, result.kind, result.retry_after) == (status, "rejected", None)
    assert result.reason.startswith(f"{status} ") and f"because {status}" in result.reason
    assert len(result.reason) <= 200


def test_reasons_never_contain_the_endpoint_or_keys(
    push: PushServiceClient, sender: PushSender, sub: dict
) -> None:
    echo = f"bad request for {sub['endpoint']} keys {sub['keys']['p256dh']} {sub['keys']['auth']}"
    push.set_behaviour(sub, [{"status": 400, "body": echo}, {"status": 500, "body": sub["id"]}])
    for _ in range(2):
        reason = sender.send(keys_of(sub), b"x", ttl=60).reason
        assert "<redacted>" in reason
        for secret in (sub["id"], sub["keys"]["p256dh"], sub["keys"]["auth"], "/push/"):
            assert secret not in reason
    assert "endpoint=<redacted>" in repr(keys_of(sub))


def test_redirects_are_not_followed(push: PushServiceClient, sender: PushSender, sub: dict) -> None:
    other = push.new_subscription()
    push.set_behaviour(sub, [{"status": 307, "headers": {"Location": other["endpoint"]}}])
    result = sender.send(keys_of(sub), b"x", ttl=60)
    assert (result.status, result.kind) == (307, "rejected")
    assert push.attempts(other) == 0


def test_a_subscription_bound_to_another_vapid_key_is_refused(
    push: PushServiceClient, sender: PushSender
) -> None:
    _, someone_elses_key = generate_vapid_keypair()
    sub = push.new_subscription(application_server_key=someone_elses_key)
    result = sender.send(keys_of(sub), b"x", ttl=60)
    assert (result.status, result.kind) == (403, "rejected")
    bound = push.new_subscription(application_server_key=sender.public_key)
    assert sender.send(keys_of(bound), b"x", ttl=60).kind == "delivered"


# -- network failures ------------------------------------------------------------------------
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_is_retried(sender: PushSender, sub: dict) -> None:
    port = _closed_port()
    keys = SubscriptionKeys(
        f"http://127.0.0.1:{port}/push/abc", sub["keys"]["p256dh"], sub["keys"]["auth"]
    )
    result = sender.send(keys, b"x", ttl=60)
    assert (result.status, result.kind, result.retry_after) == (None, "retry", None)
    assert result.reason == "network error: ConnectionError"
    assert str(port) not in result.reason


def test_a_hanging_push_service_times_out(vapid: tuple[str, str], sub: dict) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # the kernel accepts the connection; nobody ever answers
    try:
        port = listener.getsockname()[1]
        keys = SubscriptionKeys(
            f"http://127.0.0.1:{port}/push/abc", sub["keys"]["p256dh"], sub["keys"]["auth"]
        )
        with PushSender(vapid[0], SUBJECT, timeout=0.3) as sender:
            result = sender.send(keys, b"x", ttl=60)
    finally:
        listener.close()
    assert (result.status, result.kind) == (None, "retry")
    assert result.reason == "network error: ReadTimeout"


def test_a_stopped_push_service_is_a_network_error(vapid: tuple[str, str]) -> None:
    with running_push_service() as temporary:
        sub = temporary.new_subscription()
        sender = PushSender(vapid[0], SUBJECT, timeout=5)
        assert sender.send(keys_of(sub), b"x", ttl=60).kind == "delivered"
    # The pooled keep-alive connection was dropped with the service; nothing listens now.
    result = sender.send(keys_of(sub), b"x", ttl=60)
    assert (result.status, result.kind) == (None, "retry")
    sender.close()


# -- connect-time address guard --------------------------------------------------------------
def test_the_guard_refuses_loopback_unless_allowlisted(
    vapid: tuple[str, str], push: PushServiceClient, sub: dict
) -> None:
    with PushSender(vapid[0], SUBJECT, timeout=5, allowed_hosts=()) as guarded:
        result = guarded.send(keys_of(sub), b"x", ttl=60)
    assert (result.status, result.kind) == (None, "rejected")
    assert "non-public address" in result.reason
    assert push.attempts(sub) == 0
    host_port = push.base_url.split("://", 1)[1]
    with PushSender(vapid[0], SUBJECT, timeout=5, allowed_hosts=(host_port,)) as allowed:
        assert allowed.send(keys_of(sub), b"x", ttl=60).kind == "delivered"


def test_the_guard_stops_dns_rebinding_after_the_check(
    vapid: tuple[str, str], push: PushServiceClient, sub: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from webapp.platform.outbound.addresses import check_target

    port = int(push.base_url.rsplit(":", 1)[1])
    answers = iter(["93.184.216.34"] + ["127.0.0.1"] * 10)  # public for the check, then not

    def getaddrinfo(host: str, *args: Any, **kwargs: Any) -> list[tuple]:
        assert host == "push.rebind.example"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    endpoint = f"http://push.rebind.example:{port}/push/{sub['id']}"
    # The worker's pre-flight check sees a public address (http is refused before DNS, so
    # check the https twin of the URL)...
    check_target(endpoint.replace("http:", "https:", 1), ())
    rebound = SubscriptionKeys(endpoint, sub["keys"]["p256dh"], sub["keys"]["auth"])
    # ...then the name re-points to loopback before the HTTP client connects.
    with PushSender(vapid[0], SUBJECT, timeout=5, allowed_hosts=()) as guarded:
        result = guarded.send(rebound, b"x", ttl=60)
    assert (result.kind, push.attempts(sub)) == ("rejected", 0)
    with PushSender(vapid[0], SUBJECT, timeout=5) as unguarded:
        unguarded.send(rebound, b"x", ttl=60)
    assert push.attempts(sub) == 1  # without the guard the request reaches loopback


# -- TLS -------------------------------------------------------------------------------------
@dataclass
class TLSPushService:
    """A minimal https push service answering 201 to every POST (no decryption here)."""

    port: int
    requests: list[dict[str, str]]
    connections: list[int]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A test CA (ca.pem) and a server certificate it signed, for "localhost" only."""
    return make_certs(tmp_path_factory.mktemp("tls"), addresses=())


@pytest.fixture
def tls_push(certs: dict[str, Path]) -> Iterator[TLSPushService]:
    state = TLSPushService(0, [], [])

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def setup(self) -> None:
            super().setup()
            state.connections.append(1)

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            state.requests.append({"host": self.headers["Host"], "path": self.path})
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs["cert"], certs["key"])

    class Server(http.server.ThreadingHTTPServer):
        # 50 greenlets connect at once: the default backlog of 5 drops connection attempts,
        # and a retransmitted SYN plus the handshakes (done one by one in accept) can then
        # outlast the sender's timeout on a loaded machine. The local push service uses 128.
        request_queue_size = 128

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_https_is_verified_against_the_configured_ca_bundle(
    vapid: tuple[str, str],
    sub: dict,
    certs: dict[str, Path],
    tls_push: TLSPushService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certs["ca"]))
    keys = SubscriptionKeys(
        f"https://localhost:{tls_push.port}/push/abc", sub["keys"]["p256dh"], sub["keys"]["auth"]
    )
    with PushSender(vapid[0], SUBJECT, timeout=5) as sender:
        for _ in range(3):
            assert sender.send(keys, b"x", ttl=60) == Outcome(201, "delivered", None, "201 Created")
    assert tls_push.requests == [{"host": f"localhost:{tls_push.port}", "path": "/push/abc"}] * 3
    assert len(tls_push.connections) == 1  # keep-alive over TLS too


def test_untrusted_certificates_are_refused(
    vapid: tuple[str, str], sub: dict, tls_push: TLSPushService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    keys = SubscriptionKeys(
        f"https://localhost:{tls_push.port}/push/abc", sub["keys"]["p256dh"], sub["keys"]["auth"]
    )
    with PushSender(vapid[0], SUBJECT, timeout=5) as sender:  # certifi's CAs: not ours
        result = sender.send(keys, b"x", ttl=60)
    assert result == Outcome(None, "retry", None, "network error: SSLError")
    assert tls_push.requests == []


def test_a_certificate_for_another_host_is_refused(
    vapid: tuple[str, str],
    sub: dict,
    certs: dict[str, Path],
    tls_push: TLSPushService,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certs["ca"]))
    keys = SubscriptionKeys(  # the certificate names localhost, not 127.0.0.1
        f"https://127.0.0.1:{tls_push.port}/push/abc", sub["keys"]["p256dh"], sub["keys"]["auth"]
    )
    with PushSender(vapid[0], SUBJECT, timeout=5) as sender:
        result = sender.send(keys, b"x", ttl=60)
    assert result == Outcome(None, "retry", None, "network error: SSLError")
    assert tls_push.requests == []


def test_gevent_greenlets_share_tls_connections(
    vapid: tuple[str, str], sub: dict, certs: dict[str, Path], tls_push: TLSPushService
) -> None:
    endpoint = f"https://localhost:{tls_push.port}/push/abc"
    config = {
        "key": vapid[0],
        "allowed": f"localhost:{tls_push.port}",
        "subs": [[endpoint, sub["keys"]["p256dh"], sub["keys"]["auth"]]],
    }
    outcomes = _send_from_greenlets(config, {"REQUESTS_CA_BUNDLE": str(certs["ca"])})
    assert outcomes == ["delivered"] * 200
    assert len(tls_push.requests) == 200
    assert 1 < len(tls_push.connections) <= 50


def test_a_stalled_tls_handshake_times_out(vapid: tuple[str, str], sub: dict) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # the kernel accepts the connection; no TLS server ever answers
    try:
        port = listener.getsockname()[1]
        keys = SubscriptionKeys(
            f"https://localhost:{port}/push/abc", sub["keys"]["p256dh"], sub["keys"]["auth"]
        )
        with PushSender(vapid[0], SUBJECT, timeout=0.3) as sender:
            started = time.monotonic()
            result = sender.send(keys, b"x", ttl=60)
            assert time.monotonic() - started < 3
    finally:
        listener.close()
    assert result == Outcome(None, "retry", None, "network error: ConnectTimeout")


# -- VAPID -----------------------------------------------------------------------------------
def test_vapid_header_format_and_claims(
    push: PushServiceClient, vapid: tuple[str, str], sub: dict
) -> None:
    now = int(time.time())
    clock = FakeClock(float(now))
    with PushSender(vapid[0], SUBJECT, timeout=5, clock=clock) as sender:
        assert sender.public_key == vapid[1] == vapid_public_key_from_private(vapid[0])
        assert sender.send(keys_of(sub), b"x", ttl=60).kind == "delivered"
    token = push.messages(sub)[0]["vapid_token"]
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _unb64(vapid[1]))
    claims = jwt.decode(token, public, algorithms=["ES256"], audience=push.origin)
    assert claims == {"aud": push.origin, "exp": now + JWT_LIFETIME, "sub": SUBJECT}
    assert jwt.get_unverified_header(token)["alg"] == "ES256"


def test_vapid_jwt_is_reused_then_refreshed_near_expiry(
    push: PushServiceClient, vapid: tuple[str, str], sub: dict
) -> None:
    start = float(int(time.time()))
    clock = FakeClock(start)
    keys = keys_of(sub)
    with PushSender(vapid[0], SUBJECT, timeout=5, clock=clock) as sender:
        for offset in (0, 60, 3600, JWT_LIFETIME - 3601):  # more than an hour left: reuse
            clock.now = start + offset
            assert sender.send(keys, b"x", ttl=60).kind == "delivered"
        clock.now = start + JWT_LIFETIME - 3599  # within the last hour: re-sign
        assert sender.send(keys, b"x", ttl=60).kind == "delivered"
        clock.now += 600
        assert sender.send(keys, b"x", ttl=60).kind == "delivered"
    tokens = [m["vapid_token"] for m in push.messages(sub)]
    assert len(set(tokens[:4])) == 1
    assert tokens[4] == tokens[5] != tokens[0]
    assert _claims(tokens[0])["exp"] == start + JWT_LIFETIME
    assert _claims(tokens[4])["exp"] == start + 2 * JWT_LIFETIME - 3599
    # The push service checks exp against real time: the refreshed one is < 24 h ahead.


def test_vapid_jwt_is_cached_per_origin(vapid: tuple[str, str], push: PushServiceClient) -> None:
    with running_push_service() as other, PushSender(vapid[0], SUBJECT, timeout=5) as sender:
        a, b = push.new_subscription(), other.new_subscription()
        for _ in range(2):
            assert sender.send(keys_of(a), b"x", ttl=60).kind == "delivered"
            assert sender.send(keys_of(b), b"x", ttl=60).kind == "delivered"
        tokens_a = {m["vapid_token"] for m in push.messages(a)}
        tokens_b = {m["vapid_token"] for m in other.messages(b)}
    assert len(tokens_a) == len(tokens_b) == 1
    assert _claims(tokens_a.pop())["aud"] == push.origin
    assert _claims(tokens_b.pop())["aud"] == other.origin


def test_jwt_cache_is_safe_under_threads(vapid: tuple[str, str], push: PushServiceClient) -> None:
    sub = push.new_subscription()
    with PushSender(vapid[0], SUBJECT, timeout=5, concurrency=8) as sender:
        barrier = threading.Barrier(8)
        results: list[str] = []

        def worker() -> None:
            barrier.wait()
            results.append(sender.send(keys_of(sub), b"x", ttl=60).kind)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == ["delivered"] * 8
    assert len({m["vapid_token"] for m in push.messages(sub)}) == 1


# -- keys and arguments ----------------------------------------------------------------------
def test_generated_keypair_formats() -> None:
    private, public = generate_vapid_keypair()
    assert len(_unb64(private)) == 32 and "=" not in private
    point = _unb64(public)
    assert len(point) == 65 and point[0] == 4
    assert vapid_public_key_from_private(private) == public


def test_pem_private_keys_are_accepted(push: PushServiceClient, sub: dict) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = vapid_public_key_from_private(pem)
    raw = key.private_numbers().private_value.to_bytes(32, "big")
    assert public == vapid_public_key_from_private(base64.urlsafe_b64encode(raw).decode())
    with PushSender(pem, SUBJECT, timeout=5) as sender:
        assert sender.public_key == public
        assert sender.send(keys_of(sub), b"x", ttl=60).kind == "delivered"


@pytest.mark.parametrize("bad", ["", "not-a-key!", "AAAA", base64.b64encode(b"x" * 40).decode()])
def test_bad_private_keys_are_refused_without_echoing_them(bad: str) -> None:
    with pytest.raises(ValueError) as info:
        PushSender(bad, SUBJECT, timeout=5)
    if bad:
        assert bad not in str(info.value)


def test_argument_checks(sender: PushSender, sub: dict, vapid: tuple[str, str]) -> None:
    with pytest.raises(ValueError):
        sender.send(keys_of(sub), b"x", ttl=60, urgency="urgent")
    with pytest.raises(ValueError):
        sender.send(keys_of(sub), b"x", ttl=-1)
    with pytest.raises(ValueError):
        PushSender(vapid[0], "admin@example.com", timeout=5)
    with pytest.raises(ValueError):
        PushSender(vapid[0], SUBJECT, timeout=0)


def test_unsendable_messages_are_rejected_locally(
    push: PushServiceClient, sender: PushSender, sub: dict
) -> None:
    too_big = sender.send(keys_of(sub), b"x" * (MAX_PAYLOAD_BYTES + 1), ttl=60)
    assert (too_big.status, too_big.kind) == (None, "rejected")
    broken = SubscriptionKeys(sub["endpoint"], "AAAA", sub["keys"]["auth"])
    assert sender.send(broken, b"x", ttl=60).kind == "rejected"
    not_a_url = SubscriptionKeys("mailto:x@example.com", sub["keys"]["p256dh"], sub["keys"]["auth"])
    assert sender.send(not_a_url, b"x", ttl=60).kind == "rejected"
    for bad in (" x", "\r\nX-Injected: 1", "/é"):  # nothing a request line cannot carry
        spaced = SubscriptionKeys(sub["endpoint"] + bad, sub["keys"]["p256dh"], sub["keys"]["auth"])
        result = sender.send(spaced, b"x", ttl=60)
        assert (result.kind, result.reason) == ("rejected", "invalid endpoint URL")
    assert push.attempts(sub) == 0


# -- backoff ---------------------------------------------------------------------------------
def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    top = [backoff_delay(a, 2.0, 300.0, None, rng=lambda: 0.999999) for a in range(10)]
    assert [round(d) for d in top[:8]] == [2, 4, 8, 16, 32, 64, 128, 256]
    assert top[8] == top[9] == pytest.approx(300.0 * 0.999999)
    assert backoff_delay(3, 2.0, 300.0, None, rng=lambda: 0.0) == 0.0
    assert backoff_delay(3, 2.0, 300.0, None, rng=lambda: 0.5) == 8.0
    assert backoff_delay(10_000, 2.0, 300.0, None, rng=lambda: 1.0) == 300.0  # no overflow
    assert backoff_delay(-5, 2.0, 300.0, None, rng=lambda: 1.0) == 2.0


def test_backoff_honours_retry_after_as_a_floor_within_the_cap() -> None:
    assert backoff_delay(0, 2.0, 300.0, 30.0, rng=lambda: 0.0) == 30.0
    assert backoff_delay(6, 2.0, 300.0, 30.0, rng=lambda: 0.5) == 64.0  # jitter above it
    assert backoff_delay(0, 2.0, 300.0, 3600.0, rng=lambda: 0.0) == 300.0
    delays = {backoff_delay(4, 1.0, 60.0, None) for _ in range(50)}
    assert len(delays) > 1 and all(0 <= d < 16 for d in delays)
