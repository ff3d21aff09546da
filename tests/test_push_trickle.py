"""A push service that trickles its answers holds up no one else, and its own requests only
until PUSH_REQUEST_TIMEOUT, through the real web process and gevent push worker.

One user's 20 devices are at a push service that sends one byte every 0.3 s once it has read
a request; another user's device is at the normal local push service. Batches go per push
service origin, so the slow origin's batch waits on its own. A stack of its own (SQLite): its
allowlist admits every loopback port (the session's admits the local push service only).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.conftest import Stack, shared_services_stack
from tests.harness.trickle import TRICKLE_BODY, TrickleServer
from tests.harness.waiting import wait_until
from tests.push_helpers import delivered, send, subscribe

REQUEST_TIMEOUT = 3.0  # PUSH_REQUEST_TIMEOUT of this stack
SLACK = 1.5  # the server notices a closed connection within its 0.3 s trickle interval
SLOW_DEVICES = 20  # PUSH_MAX_SUBSCRIPTIONS; more than PUSH_SEND_CONCURRENCY (16) in flight


@pytest.fixture(scope="module")
def trickling() -> Iterator[TrickleServer]:
    with TrickleServer([TRICKLE_BODY]) as server:
        yield server


@pytest.fixture(scope="module")
def trickle_stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    with shared_services_stack(
        request,
        "sqlite",
        "beacon_trickle",
        name="trickle",
        PUSH_REQUEST_TIMEOUT=str(REQUEST_TIMEOUT),
        RATE_LIMIT_SUBSCRIBE="100/60s",  # 21 devices subscribe in a burst
        PUSH_ALLOWED_HOSTS="127.0.0.1",  # any port: the trickling service as well
    ) as stack:
        yield stack


@pytest.fixture
def beacon(trickle_stack: Stack) -> Iterator[Stack]:
    yield trickle_stack
    trickle_stack.close_clients()


def _subscribe_at(beacon: Stack, user, server: TrickleServer, i: int) -> None:
    keys = beacon.push.new_subscription()["keys"]  # valid P-256 and auth values
    body = {"endpoint": server.endpoint(f"/push/{user.id}/{i}"), "expirationTime": None}
    response = beacon.api(user, "POST", "/api/notifications/subscribe", json={**body, "keys": keys})
    assert response.status_code == 201, response.text


def _read_timeouts(beacon: Stack, message_id: str, since: int) -> int:
    return sum(
        1
        for line in beacon.workers["push"].log_text(since).splitlines()
        if f"message={message_id} " in line
        and "push outcome=retry " in line
        and line.rstrip().endswith("reason=network error: ReadTimeout")
    )


def test_a_trickling_push_service_holds_up_no_one_else(
    beacon: Stack, trickling: TrickleServer
) -> None:
    alice, slow, fast = beacon.user("alice"), beacon.user("slow"), beacon.user("fast")
    for i in range(SLOW_DEVICES):
        _subscribe_at(beacon, slow, trickling, i)
    fast_sub, _ = subscribe(beacon, fast)
    since = beacon.workers["push"].log_size()

    # The slow service is busy holding requests (a message only the slow user gets)...
    send(beacon, alice, beacon.topic(alice, slow), "first")
    wait_until(lambda: trickling.holding() >= 16, timeout=20, message="no requests held")

    # ...when a message for both goes out: the other push service gets its push at once.
    started = time.monotonic()
    message_id = send(beacon, alice, beacon.topic(alice, slow, fast), "anyone there?")
    (payload,) = delivered(beacon, fast_sub)
    elapsed = time.monotonic() - started
    assert payload["message_id"] == message_id
    assert elapsed < 5, elapsed
    assert trickling.holding() > 0  # still trickling meanwhile

    # Every slow request of that message gave up at the deadline, as a retry: two rounds of
    # 16 concurrent requests.
    wait_until(
        lambda: _read_timeouts(beacon, message_id, since) >= SLOW_DEVICES,
        timeout=2 * REQUEST_TIMEOUT + 10,
        message="the trickled requests did not all end as ReadTimeout retries",
    )

    # Each request the slow service held was closed by the sender within the deadline (both
    # messages' first attempts at least; retries may still be on).
    def ended() -> list:
        return [h for h in list(trickling.held) if h.closed_at is not None]

    wait_until(lambda: len(ended()) >= 2 * SLOW_DEVICES, timeout=5, message="requests left open")
    for held in ended():
        assert held.requested_at is not None
        assert held.closed_at - held.requested_at <= REQUEST_TIMEOUT + SLACK, held
