"""Mobile push end to end: devices registered over REST, pushes through the real push worker to
a fake FCM (OAuth token endpoint and HTTP v1 send, verifying the assertion and the bearer
token) and a fake APNs (HTTP/2 over TLS, verifying the provider token), both real processes
on loopback, beside the Web Push service of the other tests.

One stack per backend for the module, with both fakes configured (one CA bundle holding both
fakes' CAs), no coalescing (each message is its own push) and quick retries. Each test makes
its own users and devices.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import DEFAULT_WORKERS, Stack, shared_services_stack
from tests.fakes.apns import FakeApns, running_fake_apns
from tests.fakes.fcm import FakeFcm, device_token, running_fake_fcm
from tests.harness.processes import wait_log_contains
from tests.harness.waiting import wait_until
from tests.push_helpers import delivered, send, subscribe
from tests.test_webhooks import Receiver

if TYPE_CHECKING:
    from tests.conftest import TestUser

WAIT = 20.0


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeFcm, FakeApns, str]]:
    folder = tmp_path_factory.mktemp("mobile-fakes")
    with (
        running_fake_fcm(folder / "fcm") as fcm,
        running_fake_apns(folder / "apns", extra_topics=("com.example.other",)) as apns,
    ):
        bundle = folder / "ca-bundle.pem"
        bundle.write_text(Path(fcm.ca_file).read_text() + Path(apns.ca_file).read_text())
        yield fcm, apns, str(bundle)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


@pytest.fixture(scope="module")
def mobile_stack(
    backend: str,
    request: pytest.FixtureRequest,
    fakes: tuple[FakeFcm, FakeApns, str],
    receiver: Receiver,
) -> Iterator[Stack]:
    fcm, apns, bundle = fakes
    env = {**apns.env(), **fcm.env(bundle)}
    with shared_services_stack(
        request,
        backend,
        f"beacon_mobile_{backend}",
        name=f"mobile-{backend}",
        workers={**DEFAULT_WORKERS, "webhooks": ("webhooks", "-P", "gevent", "-c", "5")},
        WEBHOOK_ALLOWED_HOSTS=f"127.0.0.1:{receiver.port}",
        PUSH_COALESCE_WINDOW="0",
        PUSH_MAX_RETRIES="3",
        PUSH_RETRY_BASE="0.2",
        PUSH_RETRY_MAX="1",
        PUSH_MAX_SUBSCRIPTIONS="4",
        **env,
    ) as stack:
        yield stack


@pytest.fixture
def beacon(mobile_stack: Stack) -> Iterator[Stack]:
    yield mobile_stack
    mobile_stack.close_clients()


@pytest.fixture
def fcm(fakes: tuple[FakeFcm, FakeApns, str]) -> FakeFcm:
    return fakes[0]


@pytest.fixture
def apns(fakes: tuple[FakeFcm, FakeApns, str]) -> FakeApns:
    return fakes[1]


def apns_token() -> str:
    return secrets.token_hex(32)


def register(beacon: Stack, user: TestUser, platform: str, token: str, **extra: Any) -> dict:
    response = beacon.api(
        user,
        "POST",
        "/api/notifications/devices",
        json={"platform": platform, "token": token, **extra},
    )
    assert response.status_code == 201, response.text
    return response.json()


def devices_of(beacon: Stack, user: TestUser) -> list[dict[str, Any]]:
    response = beacon.api(user, "GET", "/api/notifications/subscriptions")
    assert response.status_code == 200, response.text
    return response.json()["subscriptions"]


def history(beacon: Stack, user: TestUser) -> list[dict[str, Any]]:
    response = beacon.api(user, "GET", "/api/notifications/history")
    assert response.status_code == 200, response.text
    return response.json()["pushes"]


def at_least(fetch: Any, count: int, what: str) -> list[dict[str, Any]]:
    """``fetch()`` once it returns ``count`` rows or more."""

    def enough() -> list[dict[str, Any]] | None:
        rows = fetch()
        return rows if len(rows) >= count else None

    return wait_until(enough, timeout=WAIT, message=f"fewer than {count} {what}")


def wait_history(beacon: Stack, user: TestUser, count: int) -> list[dict[str, Any]]:
    return at_least(lambda: history(beacon, user), count, "pushes in the history")


def fcm_records(fcm: FakeFcm, token: str, count: int = 1) -> list[dict[str, Any]]:
    return at_least(lambda: fcm.records(token), count, "FCM messages arrived")


def apns_records(apns: FakeApns, token: str, count: int = 1) -> list[dict[str, Any]]:
    return at_least(lambda: apns.records(token), count, "APNs pushes arrived")


# -- devices over REST -----------------------------------------------------------------------
def test_devices_are_registered_listed_with_their_type_and_deleted(beacon: Stack) -> None:
    alice = beacon.user("alice")
    mallory = beacon.user("mallory")
    token = device_token()
    first = register(beacon, alice, "fcm", token, app_id="com.example.chat", label="Pixel 8")
    assert first["type"] == "fcm" and first["app_id"] == "com.example.chat"
    assert first["label"] == "Pixel 8" and first["token_hint"] == f"…{token[-8:]}"
    again = beacon.api(
        alice, "POST", "/api/notifications/devices", json={"platform": "fcm", "token": token}
    )
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    upper = "AB" * 32
    phone = register(beacon, alice, "apns", upper)
    assert phone["token_hint"] == f"…{upper.lower()[-8:]}"
    _, browser = subscribe(beacon, alice)

    listed = devices_of(beacon, alice)
    assert {d["type"] for d in listed} == {"webpush", "fcm", "apns"}
    assert all(token not in str(d) for d in listed), "the whole token is never shown"
    assert [d["id"] for d in listed if d["type"] == "webpush"] == [browser["id"]]

    # Someone else's device is not found, and is not deleted.
    gone = beacon.api(mallory, "DELETE", f"/api/notifications/devices/{first['id']}")
    assert gone.status_code == 404 and gone.json()["error"] == "subscription_not_found"
    assert (
        beacon.api(alice, "DELETE", f"/api/notifications/devices/{first['id']}").status_code == 204
    )
    assert {d["type"] for d in devices_of(beacon, alice)} == {"webpush", "apns"}


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"platform": "gcm", "token": "x" * 40}, "invalid_platform"),
        ({"platform": "fcm", "token": "short"}, "invalid_token"),
        ({"platform": "fcm", "token": "bad token with spaces" * 3}, "invalid_token"),
        ({"platform": "fcm", "token": "x" * 4097}, "invalid_token"),
        ({"platform": "apns", "token": "zz" * 32}, "invalid_token"),
        ({"platform": "apns", "token": "abc"}, "invalid_token"),
        ({"platform": "apns", "token": 12}, "invalid_token"),
        ({"platform": "apns", "token": "ab" * 32, "app_id": "../etc"}, "invalid_app_id"),
        ({"platform": "apns", "token": "ab" * 32, "label": 5}, "invalid_label"),
    ],
)
def test_malformed_devices_are_refused(beacon: Stack, body: dict, code: str) -> None:
    user = beacon.user("bad")
    response = beacon.api(user, "POST", "/api/notifications/devices", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == code
    assert devices_of(beacon, user) == []


def test_one_cap_covers_every_kind_of_device(beacon: Stack) -> None:
    user = beacon.user("many")
    subscribe(beacon, user)
    register(beacon, user, "fcm", device_token())
    register(beacon, user, "apns", apns_token())
    register(beacon, user, "apns", apns_token())
    refused = beacon.api(
        user,
        "POST",
        "/api/notifications/devices",
        json={"platform": "fcm", "token": device_token()},
    )
    assert refused.status_code == 409 and refused.json()["error"] == "too_many_subscriptions"
    assert len(devices_of(beacon, user)) == 4


def test_a_token_registered_by_another_account_moves_to_it(beacon: Stack) -> None:
    """The phone's app signed in as someone else: the token is theirs now, as a new device,
    and the previous owner no longer has it."""
    first, second = beacon.user("first"), beacon.user("second")
    token = apns_token()
    old = register(beacon, first, "apns", token)
    new = register(beacon, second, "apns", token)
    assert new["id"] != old["id"]
    assert devices_of(beacon, first) == []
    assert [d["id"] for d in devices_of(beacon, second)] == [new["id"]]


def test_the_previous_owner_of_a_moved_token_is_reported(beacon: Stack, receiver: Receiver) -> None:
    """Not silently: the product's backend hears ``device.removed`` for the first account."""
    key = beacon.cli("create-api-key", f"mobile-{uuid.uuid4().hex[:8]}")
    path = f"/hooks/{uuid.uuid4().hex}"
    hook = beacon.api(
        None,
        "POST",
        "/api/admin/webhooks",
        headers={"Authorization": f"Bearer {key}"},
        json={"url": receiver.url(path), "events": ["device.removed"]},
    )
    assert hook.status_code == 201, hook.text
    first, second = beacon.user("first"), beacon.user("second")
    token = device_token()
    old = register(beacon, first, "fcm", token)
    register(beacon, second, "fcm", token)
    [event] = wait_until(
        lambda: receiver.received(path),
        timeout=WAIT,
        message="no device.removed for the token's previous owner",
    )
    assert event.event["type"] == "device.removed"
    assert event.event["data"]["device_id"] == old["id"]
    assert event.event["data"]["user_id"] == first.id
    assert event.event["data"]["reason"] == "registered by another user"
    assert token not in event.body.decode()


# -- delivery --------------------------------------------------------------------------------
def test_one_user_gets_the_push_on_all_three_channels(
    beacon: Stack, fcm: FakeFcm, apns: FakeApns
) -> None:
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    sub, _ = subscribe(beacon, bob)
    android, iphone = device_token(), apns_token()
    register(beacon, bob, "fcm", android, app_id="com.example.chat")
    register(beacon, bob, "apns", iphone)
    message_id = send(beacon, alice, topic, f"lunch? @{bob.username}")

    web = delivered(beacon, sub)[0]
    assert web["message_id"] == message_id and web["type"] == "mention"

    [fcm_message] = [r["message"] for r in fcm_records(fcm, android)]
    data = fcm_message["data"]
    assert data["message_id"] == str(message_id) and data["type"] == "mention"
    assert data["topic_id"] == topic.topic_id and data["badge"] == "1"
    assert fcm_message["notification"]["title"] == web["title"]
    assert fcm_message["notification"]["body"] == web["body"]
    assert fcm_message["android"]["priority"] == "HIGH"
    assert fcm_message["android"]["collapse_key"] == topic.topic_id

    [apns_push] = apns_records(apns, iphone)
    assert apns_push["headers"]["apns-push-type"] == "alert"
    assert apns_push["headers"]["apns-priority"] == "10"
    assert apns_push["headers"]["apns-topic"] == apns.topic
    assert apns_push["headers"]["apns-collapse-id"] == topic.topic_id
    body = apns_push["body"]
    assert body["aps"]["alert"] == {"title": web["title"], "body": web["body"]}
    assert body["aps"]["badge"] == 1 and body["message_id"] == message_id

    rows = wait_history(beacon, bob, 3)
    assert {(r["channel"], r["outcome"]) for r in rows} == {
        ("webpush", "delivered"),
        ("fcm", "delivered"),
        ("apns", "delivered"),
    }
    assert {r["push_service"] for r in rows if r["channel"] != "webpush"} == {"fcm", "apns"}
    # Tokens are credentials: no log line of the worker holds one (httpx logs URLs at INFO).
    log = beacon.workers["push"].log_text(0)
    assert android not in log and iphone not in log
    assert "Traceback" not in log


def test_the_badge_is_the_unread_total_across_topics(
    beacon: Stack, fcm: FakeFcm, apns: FakeApns
) -> None:
    alice, bob = beacon.user("alice"), beacon.user("bob")
    one, two = beacon.topic(alice, bob), beacon.topic(alice, bob)
    android, iphone = device_token(), apns_token()
    register(beacon, bob, "fcm", android)
    register(beacon, bob, "apns", iphone)
    # One at a time: a badge is the total when its push is sent, and a later message's
    # increment may come first.
    for count, where in enumerate((one, two, two), start=1):
        send(beacon, alice, where, f"message {count}")
        fcm_records(fcm, android, count)
        apns_records(apns, iphone, count)
    assert [int(r["message"]["data"]["badge"]) for r in fcm.records(android)] == [1, 2, 3]
    plain = apns.records(iphone)
    assert [r["body"]["aps"]["badge"] for r in plain] == [1, 2, 3]
    assert {r["headers"]["apns-priority"] for r in plain} == {"5"}
    assert {r["message"]["android"]["priority"] for r in fcm.records(android)} == {"NORMAL"}


def test_a_read_on_one_device_updates_the_badge_on_the_others(
    beacon: Stack, fcm: FakeFcm, apns: FakeApns
) -> None:
    alice, bob = beacon.user("alice"), beacon.user("bob")
    one, two = beacon.topic(alice, bob), beacon.topic(alice, bob)
    android, iphone = device_token(), apns_token()
    register(beacon, bob, "fcm", android)
    register(beacon, bob, "apns", iphone)
    send(beacon, alice, one, "in one")
    send(beacon, alice, two, "in two")
    fcm_records(fcm, android, 2)
    apns_records(apns, iphone, 2)
    wait_until(
        lambda: beacon.unread(bob, one) == beacon.unread(bob, two) == 1,
        timeout=WAIT,
        message="the unread counts were not applied",
    )

    laptop = beacon.client(bob)
    ack = laptop.call("mark_as_read", one.ref())
    assert ack["ok"], ack
    update = fcm_records(fcm, android, 3)[-1]["message"]
    assert "notification" not in update, "a silent update shows nothing"
    assert update["data"] == {"type": "read", "topic_id": one.topic_id, "badge": "1"}
    silent = apns_records(apns, iphone, 3)[-1]
    assert silent["headers"]["apns-push-type"] == "background"
    assert silent["headers"]["apns-priority"] == "5"
    assert silent["body"]["aps"] == {"content-available": 1, "badge": 1}
    assert silent["body"]["type"] == "read" and silent["body"]["topic_id"] == one.topic_id

    # Reading what is already read changes no badge: nothing more is sent.
    assert laptop.call("mark_as_read", one.ref())["ok"]
    assert laptop.call("mark_as_read", two.ref())["ok"]
    last = fcm_records(fcm, android, 4)[-1]["message"]["data"]
    assert last == {"type": "read", "topic_id": two.topic_id, "badge": "0"}
    wait_log_contains(beacon.workers["push"], f"badge update user={bob.id} topic={two.topic_id}")
    assert len(fcm.records(android)) == 4 and len(apns.records(iphone)) == 4


def test_gone_devices_are_deleted_on_each_platform(
    beacon: Stack, fcm: FakeFcm, apns: FakeApns
) -> None:
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    unregistered, bad_argument = device_token(), device_token()
    gone, bad_token = apns_token(), apns_token()
    fcm.script(unregistered, 404, error_code="UNREGISTERED", error_status="NOT_FOUND")
    fcm.script(
        bad_argument,
        400,
        error_code="INVALID_ARGUMENT",
        message="The registration token is not a valid FCM registration token",
        field="message.token",
    )
    apns.script(gone, 410, "Unregistered")
    apns.script(bad_token, 400, "BadDeviceToken")
    for token in (unregistered, bad_argument):
        register(beacon, bob, "fcm", token)
    for token in (gone, bad_token):
        register(beacon, bob, "apns", token)
    send(beacon, alice, topic, "anyone there?")

    rows = wait_history(beacon, bob, 4)
    assert sorted((r["channel"], r["outcome"], r["status_code"]) for r in rows) == [
        ("apns", "expired", 400),
        ("apns", "expired", 410),
        ("fcm", "expired", 400),
        ("fcm", "expired", 404),
    ]
    assert devices_of(beacon, bob) == []
    for row in rows:
        assert all(t not in str(row) for t in (unregistered, bad_argument, gone, bad_token))


def test_busy_push_services_are_retried(beacon: Stack, fcm: FakeFcm, apns: FakeApns) -> None:
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    android, iphone = device_token(), apns_token()
    fcm.script(android, 503, error_status="UNAVAILABLE", times=2)
    apns.script(iphone, 429, "TooManyRequests", retry_after=1, times=1)
    register(beacon, bob, "fcm", android)
    register(beacon, bob, "apns", iphone)
    message_id = send(beacon, alice, topic, "try again")

    assert fcm_records(fcm, android)[0]["message"]["data"]["message_id"] == str(message_id)
    assert apns_records(apns, iphone)[0]["body"]["message_id"] == message_id
    assert [a["status"] for a in fcm.attempts(android)] == [503, 503, 200]
    assert [a["status"] for a in apns.attempts(iphone)] == [429, 200]
    rows = wait_history(beacon, bob, 2)
    assert {(r["channel"], r["outcome"]) for r in rows} == {
        ("fcm", "delivered"),
        ("apns", "delivered"),
    }


def test_an_online_user_or_a_muted_topic_gets_no_mobile_push(
    beacon: Stack, fcm: FakeFcm, apns: FakeApns
) -> None:
    """Preferences and "not while looking" decide for every channel alike."""
    alice, bob, carol = beacon.user("alice"), beacon.user("bob"), beacon.user("carol")
    topic = beacon.topic(alice, bob, carol)
    bob_phone, carol_phone, carol_iphone = device_token(), device_token(), apns_token()
    register(beacon, bob, "fcm", bob_phone)
    register(beacon, carol, "fcm", carol_phone)
    register(beacon, carol, "apns", carol_iphone)
    beacon.client(bob)  # online somewhere
    muted = beacon.api(
        carol,
        "PUT",
        f"/api/notifications/preferences/topics/{topic.topic_id}",
        json={"level": "none"},
    )
    assert muted.status_code == 200, muted.text
    message_id = send(beacon, alice, topic, "quiet please")
    wait_log_contains(beacon.workers["push"], f"fan-out message={message_id} ")
    assert fcm.records(bob_phone) == [] and fcm.records(carol_phone) == []
    assert apns.records(carol_iphone) == []


def test_an_app_id_is_the_apns_topic(beacon: Stack, apns: FakeApns) -> None:
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    iphone = apns_token()
    register(beacon, bob, "apns", iphone, app_id="com.example.other")
    send(beacon, alice, topic, "other app")
    assert apns_records(apns, iphone)[0]["headers"]["apns-topic"] == "com.example.other"


# -- a deployment without the mobile settings -------------------------------------------------
def test_without_settings_mobile_push_is_off_with_one_warning(stack: Stack) -> None:
    """The suite's ordinary stack has no FCM or APNs settings."""
    user = stack.user("nomobile")
    for platform, token in (("fcm", device_token()), ("apns", apns_token())):
        response = stack.api(
            user, "POST", "/api/notifications/devices", json={"platform": platform, "token": token}
        )
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "push_disabled"
    log = stack.web.log_text(0)
    assert log.count("FCM push is off") == 1 and log.count("APNs push is off") == 1


def test_a_device_id_that_is_not_a_uuid_is_not_found(beacon: Stack) -> None:
    user = beacon.user("odd")
    for device_id in ("nope", str(uuid.uuid4())):
        response = beacon.api(user, "DELETE", f"/api/notifications/devices/{device_id}")
        assert response.status_code == 404 and response.json()["error"] == "subscription_not_found"


def test_an_unreadable_key_file_fails_pushes_visibly(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A deployment whose FCM key file cannot be read says so at start, and its pushes end as
    failures the user can read in their history (not a crashing task, not silence)."""
    if backend != "sqlite":
        pytest.skip("a configuration check: one backend is enough")
    missing = str(tmp_path / "no-such-account.json")
    with shared_services_stack(
        request,
        backend,
        "beacon_mobile_misconfigured",
        name="mobile-misconfigured",
        FCM_SERVICE_ACCOUNT_FILE=missing,
        FCM_PROJECT_ID="beacon-test",
        PUSH_COALESCE_WINDOW="0",
        PUSH_MAX_RETRIES="0",
    ) as stack:
        assert f"FCM_SERVICE_ACCOUNT_FILE={missing} cannot be read" in stack.web.log_text(0)
        alice, bob = stack.user("alice"), stack.user("bob")
        topic = stack.topic(alice, bob)
        register(stack, bob, "fcm", device_token())
        send(stack, alice, topic, "hello?")
        [row] = wait_history(stack, bob, 1)
        assert (row["channel"], row["outcome"]) == ("fcm", "failed")
        assert "fcm is not configured correctly on the server" in row["reason"]
        assert "Traceback" not in stack.workers["push"].log_text(0)
