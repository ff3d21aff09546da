"""The push service answers 500 or 429 for some subscriptions, for longer than the retry bound.

What must hold: those sends back off (exponentially with jitter; a 429's Retry-After is a
floor), stop at PUSH_MAX_RETRIES and record the failure; meanwhile the pushes of every other
user keep flowing without waiting behind them (retries wait in the broker with a countdown,
not in a pool slot).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import defaultdict
from datetime import datetime

from sqlalchemy import select

from tests.faults.conftest import process_report
from tests.harness.waiting import wait_until

ATTEMPT = re.compile(
    r"^\[(?P<ts>[\d-]+ [\d:]+,\d+): INFO/[^\]]+\] push outcome=(?P<outcome>\w+) "
    r"status=(?P<status>\w+) subscription=(?P<sub>[0-9a-f-]+) message=(?P<msg>\d+)"
)


def _subscribe(stack, user):
    sub = stack.push.new_subscription()
    body = {"endpoint": sub["endpoint"], "keys": sub["keys"]}
    response = stack.api(user, "POST", "/api/notifications/subscribe", json=body)
    assert response.status_code == 201, response.text
    return sub, response.json()["id"]


def _failure_count(stack, sub_id):
    from webapp.extensions import db
    from webapp.models import PushSubscription

    with stack.app.app_context():
        return db.session.execute(
            select(PushSubscription.failure_count).where(PushSubscription.id == uuid.UUID(sub_id))
        ).scalar_one()


def _attempt_times(log: str) -> dict[tuple[str, int], list[float]]:
    times: dict[tuple[str, int], list[float]] = defaultdict(list)
    for line in log.splitlines():
        match = ATTEMPT.match(line)
        if match:
            ts = datetime.strptime(match["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            times[(match["sub"], int(match["msg"]))].append(ts)
    return times


def test_failing_push_endpoints_back_off_stop_at_the_bound_and_starve_nobody(
    make_stack, reliability
):
    stack = make_stack("sqlite", PUSH_RETRY_BASE="0.5")
    max_retries = int(stack.env["PUSH_MAX_RETRIES"])
    cap = float(stack.env["PUSH_RETRY_MAX"])
    alice = stack.user("alice")
    bad_users = [stack.user(f"bad{i}") for i in range(6)]
    good_users = [stack.user(f"good{i}") for i in range(6)]
    topic = stack.topic(alice, *bad_users, *good_users)
    failing: dict[str, tuple[dict, str]] = {}  # kind -> subs
    bad = []
    for i, user in enumerate(bad_users):
        sub, sub_id = _subscribe(stack, user)
        if i % 2:
            stack.push.set_behaviour(sub, sticky={"status": 429, "retry_after": 1})
            failing[sub_id] = (sub, "429")
        else:
            stack.push.set_behaviour(sub, sticky=500)
            failing[sub_id] = (sub, "500")
        bad.append((sub, sub_id))
    good = [_subscribe(stack, user) for user in good_users]

    sender = stack.client(alice)
    sent_at: dict[int, float] = {}
    for i in range(5):
        ack = sender.call("send_message", topic.ref(message=f"news {i}"))
        assert ack["ok"], ack
        sent_at[ack["message"]["id"]] = time.time()
    messages = len(sent_at)

    # Everyone else's pushes arrive promptly, while the failing ones are still retrying.
    wait_until(
        lambda: all(len(stack.push.messages(sub)) == messages for sub, _ in good),
        timeout=15,
        message="good pushes were held up",
    )
    still_retrying = sum(stack.push.attempts(sub) for sub, _ in bad)
    assert still_retrying < len(bad) * messages * (max_retries + 1)
    latencies = [
        m["received_at"] - sent_at[json.loads(m["payload"])["message_id"]]
        for sub, _ in good
        for m in stack.push.messages(sub)
    ]
    assert max(latencies) < 3.0, latencies
    for sub, _ in good:
        assert sorted(json.loads(m["payload"])["message_id"] for m in stack.push.messages(sub)) == (
            sorted(sent_at)
        )

    # The failing ones stop at the bound and record the failure once per message...
    worker = stack.workers["push"]
    wait_until(
        lambda: all(_failure_count(stack, sub_id) == messages for _, sub_id in bad),
        timeout=40,
        message="the failures were not recorded",
    )
    # ...and nothing of theirs is left to retry: no queued, delayed or unacknowledged send.
    from webapp.redis_client import get_redis

    redis = get_redis(stack.env["REDIS_URL"])
    wait_until(
        lambda: redis.llen("push") == 0 and redis.hlen("unacked") == 0,
        message="retries still pending after the bound",
    )
    for sub, _ in bad:
        assert stack.push.attempts(sub) == messages * (max_retries + 1)
        assert stack.push.messages(sub) == []

    # Backoff: between attempts, at least Retry-After (429) and at most the cap (+ slack).
    gaps: dict[str, list[float]] = {"429": [], "500": []}
    for (sub_id, _msg), times in _attempt_times(worker.log_text(worker.run_offset)).items():
        if sub_id in failing:
            assert len(times) == max_retries + 1, times
            kind = failing[sub_id][1]
            gaps[kind] += [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps["429"]) >= 0.95, gaps["429"]
    assert max(gaps["429"] + gaps["500"]) <= cap + 1.0, gaps
    assert all(process_report(stack).values())

    attempts = sum(stack.push.attempts(sub) for sub, _ in bad)
    reliability.record(
        "faults",
        "push service answers 500 / 429 (Retry-After 1 s) past the retry bound",
        expected=f"retries back off (jitter, Retry-After floor, cap {cap:g} s), stop after "
        f"{max_retries} retries with failure recorded; other users' pushes unaffected",
        observed=f"{len(bad)} endpoints x {messages} messages: {attempts} attempts "
        f"(= {max_retries + 1} each), gaps 429 >= {min(gaps['429']):.2f} s, all <= "
        f"{max(gaps['429'] + gaps['500']):.2f} s; {len(good) * messages} other pushes, "
        f"max latency {max(latencies):.2f} s",
        backend=stack.backend,
    )
