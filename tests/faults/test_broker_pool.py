"""A burst of push tasks finishing together on a gevent worker whose concurrency is well above
the Redis transport's per-channel connection pool.

In a green worker every green thread acknowledges its own task as soon as it ends (Celery's
``call_soon_ack`` runs the ack at once, in that green thread), through the Redis client of the
*consumer's* channel, and sends its task events through the event dispatcher's channel. Each
channel has one redis-py ``ConnectionPool`` of ``max_connections`` (kombu's default: 10), which
raises ``MaxConnectionsError`` instead of waiting. When more green threads than that talk to the
broker at once, the consumer's own next command (recording a received message as unacked) gets
the error, the consumer takes it for a lost connection and closes the connection under the
acks still in flight (``ValueError: I/O operation on closed file``): those tasks stay in
Redis's ``unacked`` hash until the visibility timeout.

The burst is made deterministic: a gate in front of the local push service holds every send
until all of the worker's green threads are waiting on one, then lets them all finish at once,
while more sends are still queued. The visibility timeout is long (60 s), so a push that only
arrives through redelivery is too late.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from tests.faults.conftest import Gate, gated_push_service, process_report
from tests.harness.waiting import wait_until
from tests.pushservice.server import PushServiceClient

CONCURRENCY = 40
WORKER = ("push", "-P", "gevent", "-c", str(CONCURRENCY))
MEMBERS = 8  # one device each; a send task per device (PUSH_BATCH_SIZE=1)
MESSAGES = 6  # 48 sends: 40 held at the gate at once, 8 more arriving as they end
BROKER_ERRORS = (
    "MaxConnectionsError",
    "Too many connections",
    "I/O operation on closed file",
    "Connection to broker lost",
    "Couldn't ack",
)


@pytest.fixture
def gated_push() -> Iterator[tuple[PushServiceClient, Gate]]:
    with gated_push_service(holding=True, drop_held=False) as (client, gate):
        yield client, gate


@pytest.mark.timeout(90)
def test_burst_of_green_tasks_keeps_the_consumer_connected_and_acks_all(
    make_stack, gated_push, reliability
):
    push, gate = gated_push
    stack = make_stack(
        "sqlite",
        workers={"push": WORKER},
        push=push,
        PUSH_BATCH_SIZE="1",
        PUSH_REQUEST_TIMEOUT="20",  # the gate holds requests while the burst builds up
        BROKER_VISIBILITY_TIMEOUT="60",  # redelivery would come far too late
    )
    alice = stack.user("alice")
    members = [stack.user(f"member{i}") for i in range(MEMBERS)]
    topic = stack.topic(alice, *members)
    subs = []
    for user in members:  # offline members, one device each
        sub = push.new_subscription()
        body = {"endpoint": sub["endpoint"], "keys": sub["keys"]}
        assert stack.api(user, "POST", "/api/notifications/subscribe", json=body).status_code == 201
        subs.append(sub)
    worker = stack.workers["push"]
    log_start = worker.log_size()

    sender = stack.client(alice)
    sent: list[int] = []
    for i in range(MESSAGES):
        ack = sender.call("send_message", topic.ref(message=f"burst {i}"))
        assert ack["ok"], ack
        sent.append(ack["message"]["id"])

    # Every green thread of the worker is now waiting on a push request...
    wait_until(lambda: gate.held >= CONCURRENCY, timeout=20, message="the burst never built up")
    # ...and they all end at once, while the remaining sends are still to be received.
    gate.open()
    opened = time.monotonic()

    def pushed(sub: dict) -> list[int]:
        return sorted(json.loads(m["payload"])["message_id"] for m in push.messages(sub))

    def log() -> str:
        return worker.log_text(log_start)

    try:
        wait_until(
            lambda: all(len(pushed(s)) >= len(sent) for s in subs),
            timeout=15,
            message="pushes missing (left for the visibility timeout?)",
        )
        delivered_in = time.monotonic() - opened
        from webapp.redis_client import get_redis

        redis = get_redis(stack.env["REDIS_URL"])

        def broker_state() -> dict[str, int]:
            return {
                "queued": redis.llen("push"),
                "unacked": redis.hlen("unacked"),
                "unacked_index": redis.zcard("unacked_index"),
            }

        wait_until(
            lambda: not any(broker_state().values()),
            timeout=10,
            message="tasks left unacknowledged in Redis",
        )
    except TimeoutError as exc:
        errors = [line for line in log().splitlines() if any(e in line for e in BROKER_ERRORS)]
        raise AssertionError(f"{exc}; worker log errors: {errors[:8]}") from exc

    assert all(pushed(s) == sorted(sent) for s in subs), [pushed(s) for s in subs]  # once each
    text = log()
    found = [e for e in BROKER_ERRORS if e in text]
    assert not found, f"worker log has {found}"
    assert all(process_report(stack).values())

    reliability.record(
        "faults",
        f"burst of green push tasks ending at once (gevent -c {CONCURRENCY})",
        expected="the consumer stays connected, every task acked at once, every push "
        "delivered once within seconds (no wait for the visibility timeout)",
        observed=f"{gate.held} sends held then released together; {len(sent) * len(subs)} "
        f"pushes delivered in {delivered_in:.1f} s; nothing left unacked; no broker error",
        backend=stack.backend,
    )
