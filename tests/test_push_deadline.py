"""One deadline per Web Push request, against push services that trickle their answer.

A socket timeout bounds each read; a service that sends one byte every 0.3 s never trips it.
``PushSender(timeout=...)`` must bound the whole request (connect, TLS handshake, request,
status line, headers, body), with threads and in a gevent-patched process as in the push
worker, and must never pool the connection it gave up on.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.harness.certs import make_certs
from tests.harness.trickle import (
    OK,
    TRICKLE_BODY,
    TRICKLE_HANDSHAKE,
    TRICKLE_HEADERS,
    TrickleServer,
)
from tests.harness.waiting import wait_until
from webapp.delivery.channels.base import Outcome
from webapp.delivery.channels.webpush.sender import PushSender
from webapp.delivery.channels.webpush.subscription import SubscriptionKeys
from webapp.delivery.channels.webpush.vapid import generate_vapid_keypair

pytestmark = pytest.mark.timeout(60)

SUBJECT = "mailto:x@example.com"
REPO_ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 2.0
READ_TIMEOUT = Outcome(None, "retry", None, "network error: ReadTimeout")
CONNECT_TIMEOUT = Outcome(None, "retry", None, "network error: ConnectTimeout")


def fresh_keys(endpoint: str) -> SubscriptionKeys:
    """A browser's subscription keys (a P-256 point and a 16-byte auth secret) for ``endpoint``."""
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return SubscriptionKeys(endpoint, b64(point), b64(os.urandom(16)))


@pytest.fixture(scope="module")
def vapid_key() -> str:
    return generate_vapid_keypair()[0]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A test CA (ca.pem) and a server certificate it signed."""
    return make_certs(tmp_path_factory.mktemp("deadline-tls"))


@pytest.fixture
def server_tls(certs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """The https side of a trickling server; senders made after this trust its certificate."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certs["ca"]))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs["cert"], certs["key"])
    return context


def _timed_send(sender: PushSender, keys: SubscriptionKeys) -> tuple[Outcome, float]:
    started = time.monotonic()
    outcome = sender.send(keys, b"hello", ttl=60)
    return outcome, time.monotonic() - started


def _assert_given_up(server: TrickleServer, index: int = 0) -> None:
    """The sender closed the connection it gave up on (the server saw it go)."""
    wait_until(
        lambda: server.held[index].closed_at is not None,
        timeout=5,
        message="the timed-out connection was left open",
    )


@pytest.mark.parametrize("mode", [TRICKLE_BODY, TRICKLE_HEADERS])
def test_a_trickled_answer_is_cut_at_the_deadline(vapid_key: str, mode: str) -> None:
    with (
        TrickleServer([mode, OK]) as server,
        PushSender(vapid_key, SUBJECT, timeout=TIMEOUT, allowed_hosts=("127.0.0.1",)) as sender,
    ):
        keys = fresh_keys(server.endpoint())
        outcome, elapsed = _timed_send(sender, keys)
        assert outcome == READ_TIMEOUT
        assert TIMEOUT <= elapsed < 4, elapsed
        _assert_given_up(server)
        # Same origin again: a new connection answers; the abandoned one was not pooled.
        assert sender.send(keys, b"again", ttl=60) == Outcome(201, "delivered", None, "201 Created")
        assert [h.mode for h in server.held] == [mode, OK]


def test_a_trickled_answer_over_tls_is_cut_at_the_deadline(
    vapid_key: str, server_tls: ssl.SSLContext
) -> None:
    with (
        TrickleServer([TRICKLE_BODY, OK], tls=server_tls) as server,
        PushSender(vapid_key, SUBJECT, timeout=TIMEOUT, allowed_hosts=("localhost",)) as sender,
    ):
        keys = fresh_keys(server.endpoint(scheme="https"))
        outcome, elapsed = _timed_send(sender, keys)
        assert outcome == READ_TIMEOUT
        assert TIMEOUT <= elapsed < 4, elapsed
        _assert_given_up(server)
        for _ in range(2):  # and keep-alive over TLS still works
            assert sender.send(keys, b"again", ttl=60).kind == "delivered"
        assert [h.mode for h in server.held] == [TRICKLE_BODY, OK]


def test_a_trickled_tls_handshake_is_cut_at_the_deadline(
    vapid_key: str, server_tls: ssl.SSLContext
) -> None:
    with (
        TrickleServer([TRICKLE_HANDSHAKE, OK], tls=server_tls) as server,
        PushSender(vapid_key, SUBJECT, timeout=TIMEOUT, allowed_hosts=("localhost",)) as sender,
    ):
        keys = fresh_keys(server.endpoint(scheme="https"))
        outcome, elapsed = _timed_send(sender, keys)
        assert outcome == CONNECT_TIMEOUT  # the handshake is part of connecting
        assert TIMEOUT <= elapsed < 4, elapsed
        _assert_given_up(server)
        assert sender.send(keys, b"again", ttl=60).kind == "delivered"


def test_concurrent_trickles_each_end_at_their_deadline(vapid_key: str) -> None:
    """send_many's threads: eight held requests end together, none holds the others up."""
    with (
        TrickleServer([TRICKLE_BODY] * 8 + [OK]) as server,
        PushSender(
            vapid_key, SUBJECT, timeout=TIMEOUT, concurrency=8, allowed_hosts=("127.0.0.1",)
        ) as sender,
    ):
        subs = [fresh_keys(server.endpoint(f"/push/{i}")) for i in range(8)]
        started = time.monotonic()
        outcomes = sender.send_many([(s, b"x") for s in subs], ttl=60)
        elapsed = time.monotonic() - started
        assert outcomes == [READ_TIMEOUT] * 8
        assert TIMEOUT <= elapsed < 4, elapsed
        assert sender.send(subs[0], b"again", ttl=60).kind == "delivered"


_GEVENT_SCRIPT = """
from gevent import monkey

monkey.patch_all()

import json
import sys
import time

from gevent.pool import Pool

from webapp.delivery.channels.webpush.sender import PushSender
from webapp.delivery.channels.webpush.subscription import SubscriptionKeys

config = json.load(sys.stdin)
sender = PushSender(
    config["key"], "mailto:x@example.com", timeout=config["timeout"],
    allowed_hosts=("127.0.0.1", "localhost"),
)


def send(sub):
    started = time.monotonic()
    outcome = sender.send(SubscriptionKeys(*sub), b"x", ttl=60)
    return [outcome.kind, outcome.reason, time.monotonic() - started]


results = Pool(len(config["subs"])).map(send, config["subs"])
results.append(send(config["subs"][-1]))  # the same origin again, on a new connection
sender.close()
print(json.dumps(results))
"""


def test_gevent_greenlets_are_held_no_longer_than_the_deadline(
    vapid_key: str, certs: dict[str, Path], server_tls: ssl.SSLContext
) -> None:
    """As in the push worker (``-P gevent``): gevent's own SSLSocket would restart its timeout
    at every byte of a TLS record, so the handshake and the answer are checked over TLS too."""
    with (
        TrickleServer([TRICKLE_BODY, TRICKLE_HEADERS, OK]) as plain,
        TrickleServer([TRICKLE_HANDSHAKE, TRICKLE_BODY, OK], tls=server_tls) as tls,
    ):
        subs = [
            fresh_keys(plain.endpoint("/push/1")),
            fresh_keys(plain.endpoint("/push/2")),
            fresh_keys(tls.endpoint("/push/3", scheme="https")),
            fresh_keys(tls.endpoint("/push/4", scheme="https")),
        ]
        done = subprocess.run(
            [sys.executable, "-c", _GEVENT_SCRIPT],
            input=json.dumps(
                {
                    "key": vapid_key,
                    "timeout": TIMEOUT,
                    "subs": [[s.endpoint, s.p256dh, s.auth] for s in subs],
                }
            ),
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO_ROOT,
            env={**os.environ, "REQUESTS_CA_BUNDLE": str(certs["ca"])},
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        results = json.loads(done.stdout)
    *held, again = results
    reasons = sorted(reason for _, reason, _ in held)
    assert reasons == ["network error: ConnectTimeout"] + ["network error: ReadTimeout"] * 3
    for kind, reason, elapsed in held:
        assert kind == "retry" and TIMEOUT <= elapsed < 4, (reason, elapsed)
    assert again[0] == "delivered", again
