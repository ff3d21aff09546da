"""Outgoing webhooks end to end: the admin API, signed deliveries to a real local receiver,
retries with a stable event id, disabling after failures, and a hanging receiver that holds
up nothing but its own deliveries.

One stack per backend for the module: web, the ``unread`` and ``push`` workers and a gevent
``webhooks`` worker, with the receiver (a threaded HTTP server on 127.0.0.1) allow-listed,
``PUSH_MAX_RETRIES=1`` (two attempts per delivery) and ``WEBHOOK_DISABLE_AFTER=2``. Each test
makes its own hooks (on paths of their own) and users, and deletes its hooks at the end.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import select
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest
import requests
from celery import Celery
from sqlalchemy import update

from tests.conftest import Stack, shared_services_stack
from tests.harness.processes import wait_log_contains
from tests.harness.sio_client import RecordingClient
from tests.harness.waiting import wait_until

if TYPE_CHECKING:  # imported for the annotations only: pytest would try to collect them
    from tests.conftest import TestTopic, TestUser

TIMEOUT = 3.0  # WEBHOOK_TIMEOUT of the stack
FAST = 1.5  # seconds within which a message and its unread update reach clients
WORKERS = {
    "unread": ("unread",),
    "push": ("push", "-P", "gevent", "-c", "20"),
    "webhooks": ("webhooks", "-P", "gevent", "-c", "20"),
}
HANG = 0  # a scripted "status" that never answers


# -- the receiver ----------------------------------------------------------------------------
@dataclass
class Received:
    """One request the receiver got; ``closed_at`` when a held request was given up by the
    sender (``time.monotonic()``, as ``at``)."""

    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    at: float
    closed_at: float | None = None

    @property
    def event(self) -> dict[str, Any]:
        return json.loads(self.body)


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every request. Per path it answers 200,
    or the statuses it was told, in order (``HANG``: no answer; the request is held until the
    sender closes the connection)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._scripts: dict[str, list[int]] = {}
        self._sticky: dict[str, int] = {}
        self._stopping = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the worker's pools expect

            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, path: str, *statuses: int, then: int = 200) -> None:
        """Answer ``statuses`` to the next requests on ``path``, then ``then`` to the rest."""
        with self._lock:
            self._scripts[path] = list(statuses)
            self._sticky[path] = then

    def received(
        self, path: str, predicate: Callable[[dict[str, Any]], bool] = lambda e: True
    ) -> list[Received]:
        with self._lock:
            return [r for r in self._received if r.path == path and predicate(r.event)]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers.get("Content-Length", 0)))
        headers = {k.lower(): v for k, v in handler.headers.items()}
        record = Received(handler.path, headers, body, time.monotonic())
        with self._lock:
            self._received.append(record)
            script = self._scripts.get(handler.path)
            status = script.pop(0) if script else self._sticky.get(handler.path, 200)
        if status == HANG:
            record.closed_at = self._hold(handler.connection)
            handler.close_connection = True
            return
        handler.send_response(status)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    def _hold(self, conn: socket.socket) -> float | None:
        """Never answer: wait until the sender closes the connection (or the receiver stops)."""
        while not self._stopping.is_set():
            readable, _, _ = select.select([conn], [], [], 0.02)
            if readable and not conn.recv(1):
                return time.monotonic()
        return None


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


@pytest.fixture(scope="module")
def hooks_stack(
    backend: str, request: pytest.FixtureRequest, receiver: Receiver
) -> Iterator[Stack]:
    with shared_services_stack(
        request,
        backend,
        f"beacon_webhooks_{backend}",
        name=f"webhooks-{backend}",
        workers=WORKERS,
        WEBHOOK_ALLOWED_HOSTS=f"127.0.0.1:{receiver.port}",
        WEBHOOK_TIMEOUT=str(TIMEOUT),
        WEBHOOK_DISABLE_AFTER="2",
        PUSH_MAX_RETRIES="1",
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def admin_key(hooks_stack: Stack) -> str:
    return hooks_stack.cli("create-api-key", f"hooks-{uuid.uuid4().hex[:8]}", "--scope", "admin")


@pytest.fixture
def beacon(hooks_stack: Stack) -> Iterator[Stack]:
    yield hooks_stack
    hooks_stack.close_clients()


def call(stack: Stack, key: str | None, method: str, path: str, **kwargs: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.request(method, stack.url + path, headers=headers, timeout=10, **kwargs)


@pytest.fixture
def new_hook(
    beacon: Stack, admin_key: str, receiver: Receiver
) -> Iterator[Callable[..., tuple[dict[str, Any], str]]]:
    """Creates hooks on fresh receiver paths (returns the created hook and its path); they
    are deleted after the test."""
    made: list[str] = []

    def make(events: list[str], *statuses: int, then: int = 200) -> tuple[dict[str, Any], str]:
        path = f"/hooks/{uuid.uuid4().hex}"
        receiver.answer(path, *statuses, then=then)
        response = call(
            beacon,
            admin_key,
            "POST",
            "/api/admin/webhooks",
            json={"url": receiver.url(path), "events": events},
        )
        assert response.status_code == 201, response.text
        made.append(response.json()["id"])
        return response.json(), path

    yield make
    for hook_id in made:
        call(beacon, admin_key, "DELETE", f"/api/admin/webhooks/{hook_id}")


def verify(secret: str, header: str, body: bytes, tolerance: float = 300) -> bool:
    """What a receiver does: recompute the HMAC over "<t>.<body>", compare in constant time,
    and refuse old timestamps (replays)."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    timestamp = int(fields["t"])
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return (
        hmac.compare_digest(expected.hexdigest(), fields["v1"])
        and abs(time.time() - timestamp) <= tolerance
    )


def wait_received(
    receiver: Receiver,
    path: str,
    predicate: Callable[[dict[str, Any]], bool],
    count: int = 1,
    timeout: float = 20,
) -> list[Received]:
    return wait_until(
        lambda: (found := receiver.received(path, predicate)) and len(found) >= count and found,
        timeout=timeout,
        message=f"fewer than {count} matching requests reached {path}",
    )


def about(user: TestUser) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event["data"].get("user_id") == user.id


def arrival(client: RecordingClient, name: str, predicate: Callable[[Any], bool]) -> float:
    """When the first matching ``name`` event reached the client (``time.monotonic()``)."""
    client.wait_for_event(name, predicate)
    return next(r.time for r in client.received(name) if predicate(r.payload))


def _figure(metrics: str, name: str) -> float:
    """A sample's value in the Prometheus text (0 when it is absent)."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", metrics, re.M)
    return float(found[1]) if found else 0.0


def set_external_ids(beacon: Stack, user: TestUser, topic: TestTopic) -> tuple[str, str]:
    """Give the user and the topic external ids, as the integration API would."""
    from webapp.extensions import db
    from webapp.models import Topic, User

    user_ext, topic_ext = f"u-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    with beacon.app.app_context():
        db.session.execute(
            update(User).where(User.id == uuid.UUID(user.id)).values(external_id=user_ext)
        )
        db.session.execute(
            update(Topic).where(Topic.id == uuid.UUID(topic.topic_id)).values(external_id=topic_ext)
        )
        db.session.commit()
    return user_ext, topic_ext


# -- the admin API ---------------------------------------------------------------------------
def test_create_list_get_delete(
    beacon: Stack, admin_key: str, new_hook: Callable[..., tuple[dict[str, Any], str]]
) -> None:
    hook, _ = new_hook(["message.read", "user.online"])
    assert hook["events"] == ["message.read", "user.online"]
    assert hook["secret"].startswith("whsec_") and len(hook["secret"]) > 40
    assert hook["enabled"] is True and hook["consecutive_failures"] == 0
    assert hook["last_success_at"] is None and hook["last_error"] is None
    assert hook["disabled_at"] is None and hook["created_at"]

    listed = call(beacon, admin_key, "GET", "/api/admin/webhooks").json()["webhooks"]
    (mine,) = [h for h in listed if h["id"] == hook["id"]]
    assert mine == {k: v for k, v in hook.items() if k != "secret"}
    assert all("secret" not in h for h in listed)
    got = call(beacon, admin_key, "GET", f"/api/admin/webhooks/{hook['id']}")
    assert got.status_code == 200 and got.json() == mine

    path = f"/api/admin/webhooks/{hook['id']}"
    assert call(beacon, admin_key, "DELETE", path).status_code == 204
    for method in ("GET", "DELETE"):
        gone = call(beacon, admin_key, method, path)
        assert (gone.status_code, gone.json()["error"]) == (404, "webhook_not_found")
    bad = call(beacon, admin_key, "GET", "/api/admin/webhooks/not-an-id")
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_webhook_id")


GOOD_URL = "https://hooks.example.com/beacon"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"url": "ftp://hooks.example.com/x", "events": ["user.online"]}, "invalid_url"),
        (
            {"url": "https://hooks.example.com/" + "a" * 2048, "events": ["user.online"]},
            "invalid_url",
        ),
        ({"url": "https://user:pw@hooks.example.com/", "events": ["user.online"]}, "invalid_url"),
        ({"url": "http://hooks.example.com/x", "events": ["user.online"]}, "insecure_url"),
        ({"url": "https://10.1.2.3/x", "events": ["user.online"]}, "forbidden_host"),
        ({"url": "https://127.0.0.1:1/x", "events": ["user.online"]}, "forbidden_host"),
        ({"url": "https://metadata.internal/x", "events": ["user.online"]}, "forbidden_host"),
        ({"url": 5, "events": ["user.online"]}, "invalid_url"),
        ({"events": ["user.online"]}, "missing_field"),
        ({"url": GOOD_URL}, "missing_field"),
        ({"url": GOOD_URL, "events": []}, "invalid_events"),
        ({"url": GOOD_URL, "events": "user.online"}, "invalid_events"),
        ({"url": GOOD_URL, "events": ["user.deleted"]}, "invalid_events"),
        ({"url": GOOD_URL, "events": ["user.online", "user.online"]}, "invalid_events"),
        ({"url": GOOD_URL, "events": ["user.online"], "secret": "mine"}, "unknown_field"),
        (["not", "an", "object"], "invalid_payload"),
    ],
)
def test_refused_hooks(beacon: Stack, admin_key: str, body: Any, code: str) -> None:
    response = call(beacon, admin_key, "POST", "/api/admin/webhooks", json=body)
    assert (response.status_code, response.json()["error"]) == (400, code), response.text


def test_only_admin_service_keys_may_manage_hooks(beacon: Stack) -> None:
    user = beacon.user("jwt")
    publisher = beacon.cli("create-api-key", f"pub-{uuid.uuid4().hex[:8]}", "--scope", "publish")
    body = {"url": GOOD_URL, "events": ["user.online"]}
    for method, path in [
        ("POST", "/api/admin/webhooks"),
        ("GET", "/api/admin/webhooks"),
        ("GET", f"/api/admin/webhooks/{uuid.uuid4()}"),
        ("PATCH", f"/api/admin/webhooks/{uuid.uuid4()}"),
        ("DELETE", f"/api/admin/webhooks/{uuid.uuid4()}"),
    ]:
        as_user = call(beacon, user.token, method, path, json=body)
        assert (as_user.status_code, as_user.json()["error"]) == (403, "service_key_required")
        as_publisher = call(beacon, publisher, method, path, json=body)
        assert (as_publisher.status_code, as_publisher.json()["error"]) == (
            403,
            "insufficient_scope",
        )
        assert call(beacon, None, method, path, json=body).status_code == 401


# -- deliveries ------------------------------------------------------------------------------
def test_signed_and_the_id_is_the_same_on_a_retry(
    beacon: Stack,
    admin_key: str,
    receiver: Receiver,
    new_hook: Callable[..., tuple[dict[str, Any], str]],
) -> None:
    hook, path = new_hook(["user.online"], 500)  # the first attempt fails, the retry succeeds
    user = beacon.user("signed")
    beacon.client(user)
    first, retry = wait_received(receiver, path, about(user), count=2)

    assert first.body == retry.body
    event = first.event
    assert set(event) == {"id", "type", "created_at", "data"}
    assert event["type"] == "user.online"
    assert event["data"] == {"user_id": user.id, "external_id": None, "last_seen_at": None}
    uuid.UUID(event["id"])
    for request in (first, retry):
        assert request.headers["content-type"] == "application/json"
        assert request.headers["beacon-event"] == "user.online"
        assert request.headers["beacon-event-id"] == event["id"]
        assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", request.headers["beacon-signature"])
        assert verify(hook["secret"], request.headers["beacon-signature"], request.body)
    assert not verify("whsec_wrong", first.headers["beacon-signature"], first.body)
    assert not verify(hook["secret"], first.headers["beacon-signature"], first.body + b" ")

    shown = wait_until(
        lambda: (
            (h := call(beacon, admin_key, "GET", f"/api/admin/webhooks/{hook['id']}").json())[
                "last_success_at"
            ]
            and h
        ),
        message="the success was not recorded",
    )
    assert shown["consecutive_failures"] == 0 and shown["last_error"] is None


def test_read_and_presence_events_arrive(
    beacon: Stack, receiver: Receiver, new_hook: Callable[..., tuple[dict[str, Any], str]]
) -> None:
    _, path = new_hook(["message.read", "user.online", "user.offline"])
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    bob_ext, topic_ext = set_external_ids(beacon, bob, topic)

    bob_client = beacon.client(bob)
    (online,) = wait_received(
        receiver, path, lambda e: e["type"] == "user.online" and about(bob)(e)
    )
    assert online.event["data"] == {"user_id": bob.id, "external_id": bob_ext, "last_seen_at": None}

    ack = beacon.client(alice).call("send_message", topic.ref(message="read me"))
    assert ack["ok"], ack
    read = bob_client.call("mark_as_read", topic.ref())
    assert read["ok"] and read["last_read_message_id"] == ack["message"]["id"], read
    (marked,) = wait_received(receiver, path, lambda e: e["type"] == "message.read")
    assert marked.event["data"] == {
        "user_id": bob.id,
        "user_external_id": bob_ext,
        "topic_id": topic.topic_id,
        "topic_external_id": topic_ext,
        "room_id": topic.room_id,
        "last_read_message_id": ack["message"]["id"],
    }

    bob_client.disconnect()
    (offline,) = wait_received(
        receiver, path, lambda e: e["type"] == "user.offline" and about(bob)(e)
    )
    assert offline.event["data"]["external_id"] == bob_ext
    assert offline.event["data"]["last_seen_at"]
    ids = [r.event["id"] for r in (online, marked, offline)]
    assert len(set(ids)) == 3


def test_message_created_arrives(
    beacon: Stack, receiver: Receiver, new_hook: Callable[..., tuple[dict[str, Any], str]]
) -> None:
    _, path = new_hook(["message.created"])
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    ack = beacon.client(alice).call("send_message", topic.ref(message="hello hooks"))
    assert ack["ok"], ack
    (created,) = wait_received(
        receiver, path, lambda e: e["data"]["message"]["id"] == ack["message"]["id"]
    )
    assert created.event["type"] == "message.created"
    assert created.event["id"] == created.headers["beacon-event-id"]
    assert created.event["data"] == {
        "message": ack["message"],
        "topic_external_id": None,
        "sender_external_id": None,
    }


def test_a_failing_hook_is_disabled_reported_and_can_be_enabled_again(
    beacon: Stack,
    admin_key: str,
    receiver: Receiver,
    new_hook: Callable[..., tuple[dict[str, Any], str]],
) -> None:
    _, healthy = new_hook(["user.online"])
    failing, path = new_hook(["user.online"], then=500)
    hook_path = f"/api/admin/webhooks/{failing['id']}"
    first, second = beacon.user("fail1"), beacon.user("fail2")
    for user in (first, second):  # WEBHOOK_DISABLE_AFTER deliveries, each after its retry
        beacon.client(user)
        wait_received(receiver, path, about(user), count=2)
    shown = wait_until(
        lambda: (h := call(beacon, admin_key, "GET", hook_path).json())["disabled_at"] and h,
        message="the hook was not disabled",
    )
    assert shown["enabled"] is False and shown["consecutive_failures"] == 2
    assert shown["last_error"] == "500 Internal Server Error" and shown["last_failure_at"]

    def reported() -> bool:
        text = requests.get(beacon.url + "/metrics", timeout=10).text
        return (
            'beacon_queue_depth{queue="webhooks"}' in text
            # the other tests' hooks are deleted, and none of them was disabled
            and _figure(text, "beacon_webhooks_disabled") == 1
            and all(
                _figure(text, f'beacon_webhook_deliveries_total{{outcome="{outcome}"}}') >= 2
                for outcome in ("failed", "retry", "delivered")
            )
        )

    wait_until(reported, message="/metrics does not report the disabled hook and its failures")

    # Nothing more is sent to it: the next event goes to the healthy hook only.
    since = beacon.workers["webhooks"].log_size()
    third = beacon.user("fail3")
    beacon.client(third)
    (event,) = wait_received(receiver, healthy, about(third))
    wait_log_contains(
        beacon.workers["webhooks"],
        f"webhook event {event.event['id']} type=user.online hooks=1",
        timeout=20,
        since=since,
    )
    assert receiver.received(path, about(third)) == []

    refused = call(beacon, admin_key, "PATCH", hook_path, json={"enabled": "yes"})
    assert (refused.status_code, refused.json()["error"]) == (400, "invalid_enabled")
    receiver.answer(path)  # the receiver is fixed
    enabled = call(beacon, admin_key, "PATCH", hook_path, json={"enabled": True})
    assert enabled.status_code == 200, enabled.text
    assert enabled.json()["enabled"] is True and enabled.json()["consecutive_failures"] == 0
    fourth = beacon.user("fail4")
    beacon.client(fourth)
    wait_received(receiver, path, about(fourth))
    wait_until(
        lambda: call(beacon, admin_key, "GET", hook_path).json()["last_success_at"],
        message="the success after enabling was not recorded",
    )


def test_a_hanging_receiver_delays_no_message_and_is_given_up_at_the_deadline(
    beacon: Stack, receiver: Receiver, new_hook: Callable[..., tuple[dict[str, Any], str]]
) -> None:
    _, path = new_hook(["user.online", "message.read"], then=HANG)
    alice, bob, carol = beacon.user("alice"), beacon.user("bob"), beacon.user("carol")
    topic = beacon.topic(alice, bob, carol)
    bob_client = beacon.client(bob)
    (held,) = wait_received(receiver, path, about(bob))  # a delivery hangs from now on
    assert bob_client.call("join_topic", {"topic_id": topic.topic_id})["ok"]
    carol_client = beacon.client(carol)  # a member looking elsewhere: gets unread_update
    alice_client = beacon.client(alice)

    start = time.monotonic()
    ack = alice_client.call("send_message", topic.ref(message="are hooks holding us up?"))
    assert ack["ok"], ack
    message_id = ack["message"]["id"]
    got_message = arrival(bob_client, "new_message", lambda p: p["id"] == message_id)
    got_count = arrival(
        carol_client,
        "unread_update",
        lambda p: p["topic_id"] == topic.topic_id and p["unread_count"] == 1,
    )
    assert got_message - start < FAST and got_count - start < FAST

    start = time.monotonic()
    assert bob_client.call("mark_as_read", topic.ref())["ok"]  # publishes message.read
    assert time.monotonic() - start < FAST

    # The hanging request ended at the deadline, from connect to (no) answer.
    closed = wait_until(lambda: held.closed_at, timeout=TIMEOUT + 10, message="never given up")
    assert TIMEOUT - 0.2 <= closed - held.at <= TIMEOUT + FAST


def test_push_failures_and_removed_devices_are_reported(
    beacon: Stack, receiver: Receiver, new_hook: Callable[..., tuple[dict[str, Any], str]]
) -> None:
    """A device the push service says is gone, a push it refuses, and a device beat prunes
    after too many failures: each reaches the hook once, with who and why."""
    from tests.push_helpers import send, subscribe
    from webapp.extensions import db
    from webapp.models import PushSubscription

    _, path = new_hook(["push.failed", "device.removed"])
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    user_ext, topic_ext = set_external_ids(beacon, bob, topic)
    gone, gone_row = subscribe(beacon, bob)
    refused, refused_row = subscribe(beacon, bob)
    failing, failing_row = subscribe(beacon, bob)
    beacon.push.set_behaviour(gone, sticky=410)
    beacon.push.set_behaviour(refused, sticky={"status": 400, "body": "malformed"})
    message_id = send(beacon, alice, topic, "are you there?")

    (removed,) = wait_received(
        receiver, path, lambda e: e["type"] == "device.removed" and e["data"]["message_id"]
    )
    assert removed.event["data"] == {
        "user_id": bob.id,
        "user_external_id": user_ext,
        "device_id": gone_row["id"],
        "message_id": message_id,
        "topic_id": topic.topic_id,
        "status": 410,
        "reason": removed.event["data"]["reason"],
    }
    (failed,) = wait_received(receiver, path, lambda e: e["type"] == "push.failed")
    assert failed.event["data"]["device_id"] == refused_row["id"]
    assert failed.event["data"]["status"] == 400 and failed.event["data"]["reason"]

    # Beat's pruning of a device that kept failing.
    with beacon.app.app_context():
        db.session.execute(
            update(PushSubscription)
            .where(PushSubscription.id == uuid.UUID(failing_row["id"]))
            .values(failure_count=1000)
        )
        db.session.commit()
    Celery(broker=beacon.env["REDIS_URL"]).send_task("beacon.push.prune_failing", queue="push")
    (pruned,) = wait_received(receiver, path, lambda e: e["data"]["device_id"] == failing_row["id"])
    assert pruned.event["type"] == "device.removed"
    assert pruned.event["data"]["reason"] == "failing"
    assert pruned.event["data"]["user_external_id"] == user_ext
    assert failing  # its push went through before it was pruned
    assert topic_ext
