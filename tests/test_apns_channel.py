"""The APNs channel against a fake APNs in its own process (HTTP/2 over TLS, hypercorn).

Headers and bodies as APNs reads them, answers mapped to outcomes, one provider token shared
by a thousand concurrent sends on one connection, the token's refresh rules (with a clock of
our own), the deadline, a GOAWAY mid-batch and a restarted APNs (the next send opens a new
connection), and the same channel in a gevent-patched process, as the push worker runs it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jwt
import pytest

from config.settings import Settings
from tests.fakes.apns import FakeApns, running_fake_apns
from webapp.delivery.channels.apns import MAX_PAYLOAD_BYTES, ApnsChannel
from webapp.delivery.channels.apns.token import ProviderToken, load_key
from webapp.delivery.channels.base import DeviceToken, Item, Notification

pytestmark = pytest.mark.timeout(60)

OTHER_APP = "com.example.beacon.enterprise"
REPO_ROOT = Path(__file__).resolve().parent.parent
TTL = 7200


class Clock:
    """A wall clock the test moves."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeApns]:
    with running_fake_apns(tmp_path_factory.mktemp("apns"), extra_topics=(OTHER_APP,)) as fake:
        yield fake


@pytest.fixture(autouse=True)
def _clean(fake: FakeApns, monkeypatch: pytest.MonkeyPatch) -> None:
    fake.reset()
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(name, fake.ca_file)


def settings(fake: FakeApns, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "apns_key_file": fake.key_file,
        "apns_key_id": fake.key_id,
        "apns_team_id": fake.team_id,
        "apns_topic": fake.topic,
        "apns_host": fake.host,
        "push_ttl": TTL,
        "push_request_timeout": 10.0,
        "push_send_concurrency": 32,
    }
    return dataclasses.replace(Settings(), **{**values, **overrides})  # type: ignore[arg-type]


@pytest.fixture
def channel(fake: FakeApns) -> Iterator[ApnsChannel]:
    with ApnsChannel.from_settings(settings(fake)) as channel:
        yield channel


@pytest.fixture
def clocked(fake: FakeApns) -> Iterator[Callable[[Clock], ApnsChannel]]:
    """Channels whose provider token runs on a test clock."""
    made: list[ApnsChannel] = []

    def make(clock: Clock) -> ApnsChannel:
        key = load_key(Path(fake.key_file).read_bytes())
        token = ProviderToken(key, fake.key_id, fake.team_id, clock=clock)
        channel = ApnsChannel(
            token, origin=f"https://{fake.host}", topic=fake.topic, ttl=TTL, timeout=10.0
        )
        made.append(channel)
        return channel

    yield make
    for channel in made:
        channel.close()


def device() -> str:
    return secrets.token_hex(32)


def message(urgency: str = "normal", body: str = "see you at 5", **extra: object) -> Notification:
    payload = {
        "type": "mention" if urgency == "high" else "message",
        "title": "Ada in #general",
        "body": body,
        "count": 1,
        "topic_id": "6f1c1f0e-0000-4000-8000-000000000001",
        "room_id": "6f1c1f0e-0000-4000-8000-000000000002",
        "message_id": 42,
        "url": "https://beacon.example/?room=r&topic=t",
        **extra,
    }
    return Notification(payload, urgency, collapse_key=str(payload["topic_id"]))


def test_from_settings_needs_the_key_and_ids(fake: FakeApns) -> None:
    with pytest.raises(RuntimeError, match="APNs is disabled"):
        ApnsChannel.from_settings(settings(fake, apns_key_id=None))


def test_delivered_with_apns_headers_and_body(fake: FakeApns, channel: ApnsChannel) -> None:
    mention, plain = device(), device()
    before = time.time()
    outcomes = channel.send(
        [
            Item(DeviceToken(mention), message("high"), badge=5),
            Item(DeviceToken(plain, app_id=OTHER_APP), message(), badge=None),
        ]
    )
    assert [(o.status, o.kind) for o in outcomes] == [(200, "delivered")] * 2

    [first] = fake.records(mention)
    assert first["http_version"] == "2"  # ALPN h2 on the deployment's CA bundle
    headers = first["headers"]
    assert headers["apns-topic"] == fake.topic
    assert headers["apns-push-type"] == "alert"
    assert headers["apns-priority"] == "10"
    assert headers["apns-collapse-id"] == "6f1c1f0e-0000-4000-8000-000000000001"
    assert before + TTL - 2 <= int(headers["apns-expiration"]) <= time.time() + TTL + 2
    assert first["body"] == {
        "aps": {
            "alert": {"title": "Ada in #general", "body": "see you at 5"},
            "badge": 5,
            "sound": "default",
            "thread-id": "6f1c1f0e-0000-4000-8000-000000000001",
        },
        "type": "mention",
        "count": 1,
        "topic_id": "6f1c1f0e-0000-4000-8000-000000000001",
        "room_id": "6f1c1f0e-0000-4000-8000-000000000002",
        "message_id": 42,
        "url": "https://beacon.example/?room=r&topic=t",
    }

    [second] = fake.records(plain)
    assert second["headers"]["apns-topic"] == OTHER_APP  # the device's app, not the default
    assert second["headers"]["apns-priority"] == "5"
    assert "badge" not in second["body"]["aps"]  # no count known: the icon stays as it is
    claims = jwt.decode(first["provider_token"], options={"verify_signature": False})
    assert claims["iss"] == fake.team_id
    assert jwt.get_unverified_header(first["provider_token"])["kid"] == fake.key_id


def test_silent_update_is_a_background_push(fake: FakeApns, channel: ApnsChannel) -> None:
    token = device()
    read = Notification(
        {"type": "read", "topic_id": "t-1", "badge": 9}, "normal", "t-1", silent=True
    )
    [outcome] = channel.send([Item(DeviceToken(token), read, badge=3)])
    assert outcome.kind == "delivered"
    [record] = fake.records(token)
    assert record["headers"]["apns-push-type"] == "background"
    assert record["headers"]["apns-priority"] == "5"
    assert "apns-collapse-id" not in record["headers"]
    assert record["body"] == {
        "aps": {"content-available": 1, "badge": 3},
        "type": "read",
        "topic_id": "t-1",
    }


def test_a_long_message_is_shortened_to_fit(fake: FakeApns, channel: ApnsChannel) -> None:
    token = device()
    [outcome] = channel.send([Item(DeviceToken(token), message(body="é" * 5000), badge=1)])
    assert outcome.kind == "delivered"
    [record] = fake.records(token)
    size = len(json.dumps(record["body"], ensure_ascii=False, separators=(",", ":")).encode())
    assert MAX_PAYLOAD_BYTES - 8 <= size <= MAX_PAYLOAD_BYTES
    assert record["body"]["aps"]["alert"]["body"].endswith("\u2026")
    assert record["body"]["aps"]["alert"]["title"] == "Ada in #general"


@pytest.mark.parametrize(
    ("status", "reason", "retry_after", "kind", "wait"),
    [
        (410, "Unregistered", None, "expired", None),
        (400, "BadDeviceToken", None, "expired", None),
        (400, "DeviceTokenNotForTopic", None, "rejected", None),
        (400, "BadExpirationDate", None, "rejected", None),
        (413, "PayloadTooLarge", None, "rejected", None),
        (429, "TooManyRequests", "30", "retry", 30.0),
        (500, "InternalServerError", None, "retry", None),
        (503, "ServiceUnavailable", "5", "retry", 5.0),
    ],
)
def test_answers_become_outcomes(
    fake: FakeApns,
    channel: ApnsChannel,
    status: int,
    reason: str,
    retry_after: str | None,
    kind: str,
    wait: float | None,
) -> None:
    token = device()
    fake.script(token, status, reason, retry_after=retry_after)
    [outcome] = channel.send([Item(DeviceToken(token), message())])
    assert (outcome.status, outcome.kind, outcome.reason) == (status, kind, reason)
    assert outcome.retry_after == wait
    assert token not in outcome.reason
    assert [a["status"] for a in fake.attempts(token)] == [status]  # no retry inline


def test_a_token_apns_never_issued_is_not_sent(fake: FakeApns, channel: ApnsChannel) -> None:
    short = secrets.token_hex(16)  # hex, but not what APNs issues: APNs says BadDeviceToken
    outcomes = channel.send(
        [Item(DeviceToken("not-a-token"), message()), Item(DeviceToken(short), message())]
    )
    assert [(o.kind, o.reason) for o in outcomes] == [
        ("expired", "BadDeviceToken"),
        ("expired", "BadDeviceToken"),
    ]
    assert fake.attempts("not-a-token") == []
    assert [a["reason"] for a in fake.attempts(short)] == ["BadDeviceToken"]


def test_one_provider_token_and_one_connection_for_a_thousand_sends(
    fake: FakeApns, channel: ApnsChannel
) -> None:
    """Four batches of 250 at once from four threads (as four worker greenlets would), 32
    streams in flight each, share the connection and the token."""
    tokens = [device() for _ in range(1000)]
    note = message()
    results: list[list[str]] = []

    def batch(part: list[str]) -> None:
        outcomes = channel.send([Item(DeviceToken(t), note, badge=1) for t in part])
        results.append([o.kind for o in outcomes])

    threads = [threading.Thread(target=batch, args=(tokens[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(50)
    assert sorted(len(r) for r in results) == [250] * 4
    assert {kind for r in results for kind in r} == {"delivered"}
    stats = fake.stats()
    assert stats["streams"] == stats["delivered"] == 1000
    assert stats["provider_tokens"] == 1
    assert channel.token.signed == 1
    assert stats["connections"] <= 2


def test_a_token_older_than_50_minutes_is_replaced(
    fake: FakeApns, clocked: Callable[[Clock], ApnsChannel]
) -> None:
    clock = Clock(time.time() - 55 * 60)  # tokens stay within APNs' hour
    channel = clocked(clock)
    token = device()
    for advance in (0, 4 * 60, 47 * 60):  # ages: 0, 4 and 51 minutes
        clock.advance(advance)
        assert channel.send([Item(DeviceToken(token), message())])[0].kind == "delivered"
    first, second, third = (r["provider_token"] for r in fake.records(token))
    assert first == second != third
    assert jwt.decode(third, options={"verify_signature": False})["iat"] == int(clock())
    assert channel.token.signed == 2


def test_an_expired_provider_token_is_replaced_at_most_every_20_minutes(
    fake: FakeApns, clocked: Callable[[Clock], ApnsChannel]
) -> None:
    start = time.time() - 50 * 60
    clock = Clock(start)
    channel = clocked(clock)
    token = device()
    assert channel.send([Item(DeviceToken(token), message())])[0].kind == "delivered"

    clock.advance(25 * 60)  # 25 minutes old: may be replaced, and the push is retried once
    fake.expire_provider_tokens(issued_before=int(clock()))
    [outcome] = channel.send([Item(DeviceToken(token), message())])
    assert (outcome.status, outcome.kind) == (200, "delivered")
    assert channel.token.signed == 2
    assert [a["status"] for a in fake.attempts(token)] == [200, 403, 200]

    clock.advance(5 * 60)  # the new one is 5 minutes old: not replaced, the push is refused
    fake.expire_provider_tokens(issued_before=int(clock()))
    [outcome] = channel.send([Item(DeviceToken(token), message())])
    assert (outcome.status, outcome.kind, outcome.reason) == (
        403,
        "rejected",
        "ExpiredProviderToken",
    )
    fake.expire_provider_tokens(issued_before=start)
    fake.script(token, 403, "InvalidProviderToken")
    [outcome] = channel.send([Item(DeviceToken(token), message())])
    assert (outcome.status, outcome.kind, outcome.reason) == (
        403,
        "rejected",
        "InvalidProviderToken",
    )
    assert channel.token.signed == 2

    clock.advance(16 * 60)  # 21 minutes: replaced again
    fake.expire_provider_tokens(issued_before=int(clock()))
    assert channel.send([Item(DeviceToken(token), message())])[0].kind == "delivered"
    assert channel.token.signed == 3
    assert len({r["provider_token"] for r in fake.records(token)}) == 3


def test_concurrent_rejections_share_one_new_token(
    fake: FakeApns, clocked: Callable[[Clock], ApnsChannel]
) -> None:
    clock = Clock(time.time() - 30 * 60)
    channel = clocked(clock)
    channel.token.get()
    clock.advance(25 * 60)
    fake.expire_provider_tokens(issued_before=int(clock()))
    outcomes = channel.send([Item(DeviceToken(device()), message()) for _ in range(40)])
    assert {o.kind for o in outcomes} == {"delivered"}
    assert channel.token.signed == 2
    stats = fake.stats()
    assert (stats["provider_tokens"], stats["delivered"]) == (1, 40)  # accepted tokens: 1


def test_a_request_is_given_up_at_its_deadline(fake: FakeApns) -> None:
    slow, fine = device(), device()
    with ApnsChannel.from_settings(settings(fake, push_request_timeout=0.5)) as channel:

        def delivers() -> bool:
            """A send to a device that answers at once gets through: on a loaded machine one
            may miss this short deadline, so a few tries (each bounded by it) are allowed."""
            tries = (channel.send([Item(DeviceToken(fine), message())])[0] for _ in range(5))
            return any(outcome.kind == "delivered" for outcome in tries)

        assert delivers()
        fake.script(slow, 200, delay=5.0)
        started = time.monotonic()
        [outcome] = channel.send([Item(DeviceToken(slow), message())])
        assert time.monotonic() - started < 2.0
        assert (outcome.status, outcome.kind) == (None, "retry")
        assert outcome.reason.startswith("network error:")
        assert slow not in outcome.reason
        assert delivers()  # the channel is not wedged by the request it gave up on


@pytest.mark.parametrize("crash", [True, False], ids=["killed", "stopped"])
def test_after_apns_restarts_the_next_send_reconnects(
    fake: FakeApns, channel: ApnsChannel, crash: bool
) -> None:
    token = device()
    assert channel.send([Item(DeviceToken(token), message())])[0].kind == "delivered"
    fake.restart(crash=crash)  # the open connection is dropped (killed) or closed (GOAWAY)
    assert channel.send([Item(DeviceToken(token), message())])[0].kind == "delivered"
    assert len(fake.records(token)) == 1  # the restarted fake starts empty


def test_apns_down_is_a_retry_without_the_token(fake: FakeApns, channel: ApnsChannel) -> None:
    token = device()
    assert channel.send([Item(DeviceToken(token), message())])[0].kind == "delivered"
    fake.process.stop()
    try:
        [outcome] = channel.send([Item(DeviceToken(token), message())])
    finally:
        fake.process.start()
        fake.wait_ready()
    assert (outcome.status, outcome.kind) == (None, "retry")
    assert outcome.reason == "network error: ConnectError"
    assert channel.send([Item(DeviceToken(token), message())])[0].kind == "delivered"


def test_a_goaway_mid_batch_moves_the_rest_to_a_new_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_fake_apns(tmp_path, max_requests_per_connection=100) as strict:
        for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
            monkeypatch.setenv(name, strict.ca_file)
        with ApnsChannel.from_settings(settings(strict)) as channel:
            tokens = [device() for _ in range(300)]
            outcomes = channel.send([Item(DeviceToken(t), message()) for t in tokens])
        assert {o.kind for o in outcomes} == {"delivered"}
        stats = strict.stats()
        assert stats["connections"] >= 3
        # A stream APNs took just before its GOAWAY may be sent twice (its answer was lost).
        assert {r["token"] for r in strict.records()} == set(tokens)


GEVENT_SCRIPT = """
from gevent import monkey

monkey.patch_all()

import json, secrets, time

import gevent

from config.settings import load_settings
from webapp.delivery.channels.apns import ApnsChannel
from webapp.delivery.channels.base import DeviceToken, Item, Notification

channel = ApnsChannel.from_settings(load_settings())
note = Notification({"type": "message", "title": "t", "body": "b"}, "normal", "k")
ticks = []


def tick():
    while True:
        gevent.sleep(0.01)
        ticks.append(1)


ticker = gevent.spawn(tick)
started = time.monotonic()
jobs = [
    gevent.spawn(channel.send, [Item(DeviceToken(secrets.token_hex(32)), note)] * 100)
    for _ in range(4)
]
gevent.joinall(jobs, raise_error=True)
elapsed = time.monotonic() - started
ticker.kill()
channel.close()
kinds = sorted({o.kind for job in jobs for o in job.value})
print(json.dumps({"kinds": kinds, "elapsed": elapsed, "ticks": len(ticks)}))
"""


def test_in_a_gevent_worker_sends_share_the_hub(fake: FakeApns) -> None:
    """The push worker's pool: monkey-patched, four batches at once from greenlets; the loop
    thread is a greenlet too, and other greenlets keep running while pushes are in flight."""
    env = {**fake.env(), "BEACON_ENV_FILE": "", "PUSH_SEND_CONCURRENCY": "16"}
    done = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["kinds"] == ["delivered"]
    assert result["ticks"] >= result["elapsed"] / 0.01 / 3  # the hub was never held for long
    stats = fake.stats()
    assert (stats["delivered"], stats["provider_tokens"]) == (400, 1)
    assert stats["connections"] <= 2
