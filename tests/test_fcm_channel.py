"""The FCM channel against a fake FCM in its own process (tests/fakes/fcm.py): real TLS,
HTTP/2, the OAuth2 JWT-bearer exchange signed by google-auth, and FCM's error bodies."""

from __future__ import annotations

import dataclasses
import json
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from config import Settings
from tests.fakes.fcm import FakeFcm, device_token, running_fake_fcm, write_service_account
from tests.harness.ports import free_port
from tests.harness.waiting import wait_until
from webapp.delivery.channels.base import DeviceToken, Item, Notification, Outcome
from webapp.delivery.channels.fcm import FcmChannel

ROOT = Path(__file__).resolve().parent.parent
CA_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")
PAYLOAD: dict[str, Any] = {
    "type": "mention",
    "title": "Ann mentioned you in #general",
    "body": "are you there?",
    "count": 2,
    "topic_id": "17",
    "room_id": "4",
    "message_id": 901,
    "url": "https://beacon.example/?room=4&topic=17",
}

MakeChannel = Callable[..., FcmChannel]


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeFcm]:
    with running_fake_fcm(tmp_path_factory.mktemp("fake-fcm")) as running:
        yield running


@pytest.fixture
def make_channel(fake: FakeFcm, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeChannel]:
    """Channels built from settings pointing at the fake, with its CA trusted."""
    fake.reset()
    for name in CA_VARIABLES:
        monkeypatch.setenv(name, fake.ca_file)
    made: list[FcmChannel] = []

    def make(**overrides: Any) -> FcmChannel:
        fields: dict[str, Any] = {
            "fcm_service_account_file": fake.service_account_file,
            "fcm_project_id": fake.project_id,
            "fcm_endpoint": fake.endpoint,
            "push_request_timeout": 5.0,
            "push_send_concurrency": 16,
            "push_ttl": 3600,
        }
        fields.update(overrides)
        channel = FcmChannel.from_settings(dataclasses.replace(Settings(), **fields))
        made.append(channel)
        return channel

    yield make
    for channel in made:
        channel.close()


def item(
    token: str,
    *,
    badge: int | None = None,
    urgency: str = "normal",
    payload: dict[str, Any] | None = None,
    silent: bool = False,
) -> Item:
    note = Notification(dict(PAYLOAD if payload is None else payload), urgency, "17", silent)
    return Item(DeviceToken(token), note, badge)


def assert_no_secrets(outcomes: Sequence[Outcome], *secrets: str) -> None:
    for outcome in outcomes:
        for secret in secrets:
            assert secret not in outcome.reason, outcome


# -- what is sent ------------------------------------------------------------------------------
def test_from_settings_requires_fcm(make_channel, tmp_path):
    with pytest.raises(RuntimeError, match="FCM is disabled"):
        FcmChannel.from_settings(Settings())
    (tmp_path / "bad.json").write_text('{"type": "service_account"}')
    for path in (tmp_path / "missing.json", tmp_path / "bad.json"):
        with pytest.raises(RuntimeError, match="not a readable Google service-account key"):
            make_channel(fcm_service_account_file=str(path))


def test_an_alert_is_delivered_with_fcm_and_apns_fields(fake, make_channel):
    channel = make_channel(push_ttl=600)
    token = device_token()
    before = time.time()
    assert channel.send([item(token, badge=5, urgency="high")]) == [Outcome(200, "delivered")]
    (record,) = fake.records(token)
    message = record["message"]
    assert message["token"] == token
    assert message["notification"] == {"title": PAYLOAD["title"], "body": PAYLOAD["body"]}
    assert message["data"] == {
        "type": "mention",
        "title": PAYLOAD["title"],
        "body": PAYLOAD["body"],
        "count": "2",
        "topic_id": "17",
        "room_id": "4",
        "message_id": "901",
        "url": PAYLOAD["url"],
        "badge": "5",
    }
    assert message["android"] == {
        "priority": "HIGH",
        "ttl": "600s",
        "collapse_key": "17",
        "notification": {"tag": "17", "notification_count": 5},
    }
    headers = message["apns"]["headers"]
    assert headers["apns-priority"] == "10"
    assert headers["apns-push-type"] == "alert"
    assert headers["apns-collapse-id"] == "17"
    assert before + 600 - 1 <= int(headers["apns-expiration"]) <= time.time() + 600
    assert message["apns"]["payload"] == {"aps": {"badge": 5}}


def test_a_normal_alert_without_badge_leaves_the_icon_alone(fake, make_channel):
    token = device_token()
    assert make_channel().send([item(token)])[0].kind == "delivered"
    message = fake.records(token)[0]["message"]
    assert "badge" not in message["data"]
    assert message["android"]["priority"] == "NORMAL"
    assert message["android"]["notification"] == {"tag": "17"}
    assert message["apns"]["headers"]["apns-priority"] == "5"
    assert "payload" not in message["apns"]


def test_a_silent_update_is_data_only_with_content_available(fake, make_channel):
    token = device_token()
    payload = {"type": "read", "topic_id": "17", "badge": 3}
    outcomes = make_channel().send([item(token, badge=3, payload=payload, silent=True)])
    assert outcomes[0].kind == "delivered"
    message = fake.records(token)[0]["message"]
    assert "notification" not in message
    assert message["data"] == {"type": "read", "topic_id": "17", "badge": "3"}
    assert message["android"] == {"priority": "NORMAL", "ttl": "3600s", "collapse_key": "17"}
    headers = message["apns"]["headers"]
    assert headers["apns-push-type"] == "background"
    assert headers["apns-priority"] == "5"
    assert message["apns"]["payload"] == {"aps": {"content-available": 1, "badge": 3}}


def test_a_long_message_is_shortened_to_fit_fcm_limit(fake, make_channel):
    token = device_token()
    payload = dict(PAYLOAD, body="ß" * 5000, title="T" * 3000)
    assert make_channel().send([item(token, payload=payload)])[0].kind == "delivered"
    message = fake.records(token)[0]["message"]
    assert message["data"]["body"].endswith("…") or message["data"]["body"] == ""
    data = json.dumps(message["data"], ensure_ascii=False, separators=(",", ":"))
    assert len(data.encode()) <= 2000
    assert message["notification"].get("body", "") == message["data"]["body"]


def test_a_notification_too_big_without_its_text_is_rejected_unsent(fake, make_channel):
    payload = dict(PAYLOAD, url="https://beacon.example/" + "x" * 5000)
    (outcome,) = make_channel().send([item(device_token(), payload=payload)])
    assert outcome.kind == "rejected" and "4096" in outcome.reason
    assert fake.stats()["sends"] == 0


# -- answers -----------------------------------------------------------------------------------
ANSWERS = [
    # (status, script keywords, kind)
    (404, {"error_code": "UNREGISTERED"}, "expired"),
    (404, {}, "expired"),
    (400, {"error_code": "INVALID_ARGUMENT", "field": "message.token"}, "expired"),
    (
        400,
        {
            "error_code": "INVALID_ARGUMENT",
            "message": "The registration token is not a valid FCM registration token",
        },
        "expired",
    ),
    (400, {"error_code": "INVALID_ARGUMENT", "field": "message.android.ttl"}, "rejected"),
    (400, {"error_code": "INVALID_ARGUMENT"}, "rejected"),
    (403, {"error_code": "SENDER_ID_MISMATCH"}, "expired"),
    (403, {}, "rejected"),
    (401, {"error_code": "THIRD_PARTY_AUTH_ERROR"}, "rejected"),
    (503, {"error_code": "UNAVAILABLE"}, "retry"),
    (500, {"error_code": "INTERNAL"}, "retry"),
    (429, {"error_code": "QUOTA_EXCEEDED"}, "retry"),
]


@pytest.mark.parametrize(("status", "script", "kind"), ANSWERS)
def test_fcm_errors_become_outcomes(fake, make_channel, status, script, kind):
    channel = make_channel()
    token = device_token()
    # A far side that quotes the device and access tokens back must not get them into a reason.
    script = {"message": "refused {token} sent with {access_token}", **script}
    fake.script(token, status, **script)
    (outcome,) = channel.send([item(token)])
    assert (outcome.status, outcome.kind) == (status, kind), outcome
    assert outcome.reason
    assert_no_secrets([outcome], token, channel.access_tokens.get())
    assert fake.stats()["token_grants"] == 1  # only a plain 401 is worth a new access token


def test_a_malformed_token_refused_by_fcm_expires_the_device(fake, make_channel):
    (outcome,) = make_channel().send([item("not-a-token-" + "z" * 25 + "!")])
    assert (outcome.status, outcome.kind) == (400, "expired")


def test_429_retry_after_is_passed_on(fake, make_channel):
    token = device_token()
    fake.script(token, 429, retry_after=7)
    (outcome,) = make_channel().send([item(token)])
    assert (outcome.kind, outcome.retry_after) == ("retry", 7.0)


def test_a_failing_device_succeeds_once_fcm_recovers(fake, make_channel):
    channel = make_channel()
    token = device_token()
    fake.script(token, 503, times=2)
    kinds = [channel.send([item(token)])[0].kind for _ in range(3)]
    assert kinds == ["retry", "retry", "delivered"]
    assert [a["status"] for a in fake.attempts(token)] == [503, 503, 200]


def test_a_wrong_project_is_rejected(fake, make_channel):
    (outcome,) = make_channel(fcm_project_id="someone-elses").send([item(device_token())])
    assert (outcome.status, outcome.kind) == (403, "rejected")
    assert "FCM_PROJECT_ID" in outcome.reason


# -- the access token --------------------------------------------------------------------------
def test_one_access_token_serves_many_concurrent_sends_over_http2(fake, make_channel):
    channel = make_channel(push_send_concurrency=32)
    tokens = [device_token() for _ in range(200)]
    outcomes = channel.send([item(t, badge=1) for t in tokens])
    assert [o.kind for o in outcomes] == ["delivered"] * 200
    assert channel.send([item(device_token())])[0].kind == "delivered"
    stats = fake.stats()
    assert stats["token_grants"] == 1
    assert stats["access_tokens_seen"] == 1
    assert stats["http_versions"] == {"2": 201}
    assert stats["connections"] <= 2


def test_requests_are_multiplexed_on_one_connection(fake, make_channel):
    channel = make_channel(push_send_concurrency=20)
    fake.script("*", 200, delay=0.3, times=None)
    started = time.monotonic()
    outcomes = channel.send([item(device_token()) for _ in range(40)])
    elapsed = time.monotonic() - started
    assert {o.kind for o in outcomes} == {"delivered"}
    stats = fake.stats()
    assert stats["connections"] == 1
    assert stats["max_in_flight"] >= 10
    assert elapsed < 40 * 0.3 / 4  # concurrent, not one after the other


def test_the_access_token_is_refreshed_when_due(fake, make_channel):
    # google-auth refreshes 225 s before expiry: this token is due one second after its grant.
    fake.set_token_lifetime(226)
    channel = make_channel()
    assert channel.send([item(device_token())])[0].kind == "delivered"
    assert fake.stats()["token_grants"] == 1
    wait_until(lambda: not channel.access_tokens.valid, timeout=10, message="token still valid")
    assert channel.send([item(device_token())])[0].kind == "delivered"
    stats = fake.stats()
    assert (stats["token_grants"], stats["access_tokens_seen"]) == (2, 2)


def test_a_revoked_access_token_is_refreshed_once_for_all_concurrent_sends(fake, make_channel):
    channel = make_channel(push_send_concurrency=25)
    assert channel.send([item(device_token())])[0].kind == "delivered"
    fake.revoke_access_tokens()
    outcomes = channel.send([item(device_token()) for _ in range(50)])
    assert {o.kind for o in outcomes} == {"delivered"}
    stats = fake.stats()
    assert stats["token_grants"] == 2
    assert stats["unauthenticated"] >= 1


def test_a_401_after_a_refresh_is_rejected(fake, make_channel):
    channel = make_channel()
    token = device_token()
    fake.script(token, 401, times=None, message="bad {access_token}")
    (outcome,) = channel.send([item(token)])
    assert (outcome.status, outcome.kind) == (401, "rejected")
    assert_no_secrets([outcome], token, channel.access_tokens.get())
    assert len(fake.attempts(token)) == 2  # the first try and one with a fresh token
    assert fake.stats()["token_grants"] == 2


def test_a_token_endpoint_refusal_is_rejected_then_recovers(fake, make_channel):
    channel = make_channel()
    fake.script_token_endpoint(400, "invalid_grant")
    (outcome,) = channel.send([item(device_token())])
    assert outcome.kind == "rejected" and "FCM_SERVICE_ACCOUNT_FILE" in outcome.reason
    assert channel.send([item(device_token())])[0].kind == "delivered"


def test_an_assertion_signed_with_another_key_is_refused(fake, make_channel, tmp_path):
    forged = tmp_path / "forged.json"
    write_service_account(
        forged,
        project_id=fake.project_id,
        token_uri=fake.token_uri,
        client_email=fake.client_email,
        private_key_id=fake.private_key_id,
    )
    (outcome,) = make_channel(fcm_service_account_file=str(forged)).send([item(device_token())])
    assert outcome.kind == "rejected"
    stats = fake.stats()
    assert (stats["token_grants"], stats["token_refusals"], stats["sends"]) == (0, 1, 0)


def test_the_fake_refuses_what_fcm_refuses(fake, make_channel):
    access = make_channel().access_tokens.get()
    headers = {"Authorization": f"Bearer {access}"}
    url = f"{fake.endpoint}/v1/projects/{fake.project_id}/messages:send"
    bad = {"message": {"token": device_token(), "data": {"count": 2}}}
    context = ssl.create_default_context(cafile=fake.ca_file)
    with httpx.Client(verify=context, trust_env=False) as client:
        answer = client.post(url, json=bad, headers=headers)
        assert answer.status_code == 400
        error = answer.json()["error"]
        assert error["status"] == "INVALID_ARGUMENT"
        assert error["details"][1]["fieldViolations"][0]["field"] == "message.data[count]"
        unauthenticated = client.post(url, json=bad, headers={"Authorization": "Bearer nope"})
        assert unauthenticated.status_code == 401


# -- the network -------------------------------------------------------------------------------
def test_a_dead_server_is_retried_within_the_deadline(fake, make_channel):
    channel = make_channel(fcm_endpoint=f"https://127.0.0.1:{free_port()}", push_request_timeout=3)
    started = time.monotonic()
    outcomes = channel.send([item(device_token()) for _ in range(3)])
    assert time.monotonic() - started < 3
    assert {(o.kind, o.reason) for o in outcomes} == {("retry", "network error: ConnectError")}


def test_a_slow_answer_is_given_up_at_the_deadline(fake, make_channel):
    channel = make_channel(push_request_timeout=1.0)
    slow = device_token()
    fake.script(slow, 200, delay=5)
    channel.access_tokens.get()  # the token exchange is not what is timed here
    started = time.monotonic()
    outcomes = channel.send([item(slow), item(device_token())])
    elapsed = time.monotonic() - started
    assert [o.kind for o in outcomes] == ["retry", "delivered"]
    assert "1s" in outcomes[0].reason
    assert 1.0 <= elapsed < 2.5


def test_a_stalled_connection_is_dropped_and_a_new_one_opened(fake, make_channel):
    channel = make_channel(push_request_timeout=1.0)
    assert channel.send([item(device_token())])[0].kind == "delivered"
    fake.process.send_signal(signal.SIGSTOP)
    try:
        (outcome,) = channel.send([item(device_token())])
        assert (outcome.kind, outcome.reason) == ("retry", "no answer within 1s")
        # The request given up at its deadline still waits on the wire until the connection
        # has been silent for a whole timeout: then it is taken for dead, and the request ends.
        wait_until(lambda: channel.http.in_flight() == 0, timeout=5, message="still waiting")
    finally:
        fake.process.send_signal(signal.SIGCONT)
    assert channel.send([item(device_token())])[0].kind == "delivered"
    assert fake.stats()["connections"] == 2


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "crash"])
def test_after_fcm_drops_the_connection_the_next_send_reconnects(fake, make_channel, crash):
    channel = make_channel()
    assert channel.send([item(device_token())])[0].kind == "delivered"
    fake.restart(crash=crash)  # it also forgets the access tokens it granted
    outcomes = channel.send([item(device_token()) for _ in range(5)])
    assert {o.kind for o in outcomes} == {"delivered"}
    stats = fake.stats()
    assert (stats["connections"], stats["token_grants"]) == (1, 1)


def test_more_requests_than_a_connection_takes_wait_for_a_stream(fake, make_channel):
    # hypercorn allows 100 concurrent streams per connection (FCM's limit is similar), and so
    # does the client: the other 50 wait for a stream, within their deadlines, and go out as
    # the first answers come back.
    channel = make_channel(push_send_concurrency=150)
    fake.script("*", 200, delay=0.3, times=None)
    started = time.monotonic()
    outcomes = channel.send([item(device_token()) for _ in range(150)])
    elapsed = time.monotonic() - started
    assert {o.kind for o in outcomes} == {"delivered"}
    stats = fake.stats()
    assert stats["connections"] == 1
    assert 50 < stats["max_in_flight"] <= 100
    assert elapsed < 3.0  # two rounds of 0.3 s, not 150


def test_large_messages_wait_for_flow_control(fake, make_channel):
    channel = make_channel(push_send_concurrency=64)
    payload = dict(PAYLOAD, body="b" * 1800)  # ~4 kB per request, 256 kB in all
    outcomes = channel.send([item(device_token(), payload=payload) for _ in range(64)])
    assert {o.kind for o in outcomes} == {"delivered"}
    assert all(len(r["message"]["data"]["body"]) == 1800 for r in fake.records())


GEVENT_SCRIPT = """
from gevent import monkey

monkey.patch_all()

import dataclasses, json, sys, time

from config import Settings
from webapp.delivery.channels.base import DeviceToken, Item, Notification
from webapp.delivery.channels.fcm import FcmChannel

account, project, endpoint, slow, tokens = json.loads(sys.argv[1])
settings = dataclasses.replace(
    Settings(),
    fcm_service_account_file=account,
    fcm_project_id=project,
    fcm_endpoint=endpoint,
    push_request_timeout=1.0,
    push_send_concurrency=16,
)
channel = FcmChannel.from_settings(settings)
note = Notification({"type": "message", "title": "t", "body": "b"}, "normal", "1")
started = time.monotonic()
outcomes = channel.send([Item(DeviceToken(t), note) for t in [slow, *tokens]])
print(json.dumps({"kinds": [o.kind for o in outcomes], "elapsed": time.monotonic() - started}))
"""


def test_sends_under_gevent_like_the_push_worker(fake, make_channel):
    slow = device_token()
    fake.script(slow, 200, delay=5)
    tokens = [device_token() for _ in range(60)]
    args = json.dumps([fake.service_account_file, fake.project_id, fake.endpoint, slow, tokens])
    done = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT, args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["kinds"] == ["retry"] + ["delivered"] * 60
    assert result["elapsed"] < 4
    stats = fake.stats()
    assert (stats["token_grants"], stats["http_versions"]) == (1, {"2": 61})
    assert stats["connections"] == 1
