"""Beacon as a distributed system: two web processes on one Redis, metrics, readiness, Flower."""

from __future__ import annotations

import os
import re
import subprocess

import pytest
import requests

from tests.conftest import ROOT, selected_backends, start_web
from tests.harness.ports import free_port
from tests.harness.processes import ManagedProcess
from tests.harness.waiting import wait_until


@pytest.fixture(scope="module")
def second_web(stack, run_dir):
    """Another web process of the same deployment (same Redis, same database)."""
    port = free_port()
    web = start_web(f"web2-{stack.backend}", stack.env, port, run_dir)
    yield f"http://127.0.0.1:{port}"
    web.stop()


def _client(beacon, url, user, name):
    client = beacon.new_client(name)
    client.connect(url, user.token)
    return client


def _online_ids(beacon, user):
    return {u["user_id"] for u in beacon.api(user, "GET", "/api/users/online").json()["users"]}


def test_events_cross_web_processes(beacon, second_web):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    bob_on_2 = _client(beacon, second_web, bob, "bob@web2")
    assert bob_on_2.call("join_topic", {"topic_id": topic.topic_id})["ok"]

    alice_on_1 = _client(beacon, beacon.url, alice, "alice@web1")
    status = bob_on_2.wait_for_event(
        "user_status_change", lambda p: p["user_id"] == alice.id and p["is_online"]
    )
    assert status["username"] == alice.username

    ack = alice_on_1.call("send_message", topic.ref(message="across processes"))
    assert ack["ok"], ack
    message = bob_on_2.wait_for_event("new_message", lambda p: p["topic_id"] == topic.topic_id)
    assert message["body"] == "across processes"
    alert = bob_on_2.wait_for_event(
        "global_message_alert", lambda p: p["message_id"] == ack["message"]["id"]
    )
    assert alert["sender"]["id"] == alice.id

    # Bob marks as read on web2; Alice's device on web1 hears it.
    assert alice_on_1.call("join_topic", {"topic_id": topic.topic_id})["ok"]
    assert bob_on_2.call("mark_as_read", topic.ref(message_ids=[ack["message"]["id"]]))["ok"]
    alice_on_1.wait_for_event("messages_read", lambda p: p["user_id"] == bob.id)


def test_user_on_two_processes_is_one_online_user(beacon, second_web):
    carol, observer_user = beacon.user("carol"), beacon.user("observer")
    observer = _client(beacon, beacon.url, observer_user, "observer")
    on_1 = _client(beacon, beacon.url, carol, "carol@web1")
    on_2 = _client(beacon, second_web, carol, "carol@web2")
    observer.wait_for_event("user_status_change", lambda p: p["user_id"] == carol.id)
    assert carol.id in _online_ids(beacon, observer_user)

    on_1.disconnect()
    assert carol.id in _online_ids(beacon, observer_user)
    on_2.disconnect()
    observer.wait_for_event(
        "user_status_change", lambda p: p["user_id"] == carol.id and not p["is_online"]
    )
    changes = [
        p["is_online"] for p in observer.events("user_status_change") if p["user_id"] == carol.id
    ]
    assert changes == [True, False]
    assert carol.id not in _online_ids(beacon, observer_user)


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(3))
    return 0.0


def test_metrics_show_connections_tasks_and_pushes(beacon):
    alice, bob = beacon.user("alice"), beacon.user("bob")
    topic = beacon.topic(alice, bob)
    sub = beacon.push.new_subscription()
    body = {"endpoint": sub["endpoint"], "keys": sub["keys"]}
    assert beacon.api(bob, "POST", "/api/notifications/subscribe", json=body).status_code == 201

    def scrape() -> str:
        response = requests.get(beacon.url + "/metrics", timeout=10)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.text

    before = scrape()
    client = beacon.client(alice)
    assert client.call("send_message", topic.ref(message="count me"))["ok"]
    wait_until(lambda: beacon.push.messages(sub), timeout=20, message="push did not arrive")

    def grew(name: str, **labels: str) -> bool:
        return _metric(scrape(), name, **labels) > _metric(before, name, **labels)

    wait_until(
        lambda: grew(
            "beacon_tasks_total", queue="unread", task="beacon.unread.increment", outcome="success"
        ),
        message="unread task success was not counted",
    )
    wait_until(
        lambda: grew("beacon_push_responses_total", status="2xx"),
        message="push response not counted",
    )
    wait_until(
        lambda: grew("beacon_push_decisions_total", decision="sent"),
        message="the fan-out's decision was not counted",
    )
    text = scrape()
    assert _metric(text, "beacon_messages_total") >= 1
    assert _metric(text, "beacon_connections") >= 1
    assert _metric(text, "beacon_online_users") >= 1
    assert 'beacon_queue_depth{queue="push"}' in text
    # The web process's own figures (docs/OPERATIONS.md alerts on its memory).
    assert _metric(text, "process_resident_memory_bytes") > 10 * 2**20
    assert _metric(text, "process_open_fds") > 0


def test_presence_sweep_lag_follows_beat(beacon, request):
    """``beacon_presence_sweep_lag_seconds``: +Inf while no sweep is recorded, then the time
    since beat's last sweep (every PRESENCE_SWEEP_INTERVAL, 1 s here), growing once beat is
    gone."""
    if beacon.backend != selected_backends(request.config)[0]:
        pytest.skip("Redis and beat only: one backend is enough")
    from webapp.metrics import PRESENCE_SWEEP_KEY
    from webapp.redis_client import get_redis

    redis_client = get_redis(beacon.env["REDIS_URL"])
    interval = float(beacon.env["PRESENCE_SWEEP_INTERVAL"])
    redis_client.delete(PRESENCE_SWEEP_KEY)  # as after Redis restarted empty

    def lag() -> float:
        text = requests.get(beacon.url + "/metrics", timeout=10).text
        assert "# TYPE beacon_presence_sweep_lag_seconds gauge" in text
        return _metric(text, "beacon_presence_sweep_lag_seconds")

    assert lag() == float("inf")
    beat = beacon.start_beat("beat-sweep-lag")
    try:
        wait_until(lambda: lag() < 2 * interval, timeout=30, message="no sweep recorded")
        # Kept fresh: every sweep records its completion, and the lag starts again from it.
        first = redis_client.get(PRESENCE_SWEEP_KEY)
        wait_until(
            lambda: redis_client.get(PRESENCE_SWEEP_KEY) != first,
            timeout=5 * interval,
            message="beat's next sweep was not recorded",
        )
        wait_until(lambda: lag() < interval, timeout=5 * interval, message="the lag stayed high")
    finally:
        beat.stop()
        del beacon.extra["beat-sweep-lag"]
    # No beat: the lag grows past the interval (the alert's condition), and keeps growing.
    late = wait_until(
        lambda: (value := lag()) > 2 * interval and value,
        timeout=10 * interval,
        message="the lag did not grow without beat",
    )
    assert late != float("inf")
    wait_until(lambda: lag() > late, timeout=5, message="the lag stopped growing")


def test_readyz_is_503_when_redis_is_down(stack, run_dir):
    env = {**stack.env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    port = free_port()
    web = start_web(f"web-noredis-{stack.backend}", env, port, run_dir)
    try:
        response = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=15)
        assert response.status_code == 503
        checks = response.json()["checks"]
        assert checks["database"] == "ok" and checks["redis"].startswith("error")
    finally:
        web.stop()


def test_flower_starts_with_basic_auth(stack, run_dir):
    port = free_port()
    env = {**stack.env, "FLOWER_BASIC_AUTH": "admin:s3cret", "FLOWER_PORT": str(port)}
    flower = ManagedProcess("flower", ["./scripts/flower.sh"], env, ROOT, run_dir)
    try:
        url = f"http://127.0.0.1:{port}"
        flower.wait_ready(
            lambda: requests.get(url, timeout=2).status_code == 401,
            timeout=60,
            what="refusing anonymous requests",
        )
        assert (
            requests.get(url + "/api/workers", auth=("admin", "wrong"), timeout=5).status_code
            == 401
        )
        wait_until(
            lambda: requests.get(url + "/api/workers", auth=("admin", "s3cret"), timeout=10).json(),
            timeout=30,
            message="flower never listed the workers",
        )
        workers = requests.get(url + "/api/workers", auth=("admin", "s3cret"), timeout=10).json()
        assert any(name.startswith("push-") for name in workers)
    finally:
        flower.stop()


def test_flower_refuses_to_start_without_auth(stack):
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    result = subprocess.run(
        ["./scripts/flower.sh"],
        cwd=ROOT,
        env={**env, **stack.env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "FLOWER_BASIC_AUTH" in result.stderr
