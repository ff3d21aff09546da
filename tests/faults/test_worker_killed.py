"""SIGKILL a Celery worker while it holds unread and push tasks.

With ``acks_late`` a task is acknowledged only after it ran, so the broker still has every
task the dead worker held; after the visibility timeout Redis hands them to another worker.
Their effects are idempotent (markers), so every count ends exact and every push arrives once.

To make the worker *hold* work at the moment it dies, without guessing timings:
- sends of the first messages hang at the push service (a gate in front of the local push
  service holds the requests and later drops them unprocessed, like a push service that never
  got to them);
- then the test locks ``processed_events`` in PostgreSQL: the next messages' unread increments
  (claiming their marker) and push fan-outs (checking theirs) block inside the worker.
The test sees both in PostgreSQL and at the push service, then kills the worker's process
group, releases both, and starts another worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.faults.conftest import Gate, gated_push_service, process_report
from tests.harness.processes import wait_log_contains
from tests.harness.waiting import wait_until
from tests.pushservice.server import PushServiceClient

WORKER = ("unread,push", "-P", "gevent", "-c", "20")


@pytest.fixture
def gated_push() -> Iterator[tuple[PushServiceClient, Gate]]:
    with gated_push_service(holding=False, drop_held=True) as (client, gate):
        yield client, gate


def _received(log: str, task: str) -> set[str]:
    return set(re.findall(rf"Task {re.escape(task)}\[([0-9a-f-]+)\] received", log))


def _succeeded(log: str, task: str) -> set[str]:
    return set(re.findall(rf"Task {re.escape(task)}\[([0-9a-f-]+)\] succeeded", log))


def _waiting_on_locks(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database()"
        ).fetchone()[0]


def test_killed_worker_tasks_are_redelivered_counts_exact_pushes_once(
    make_stack, gated_push, reliability
):
    push, gate = gated_push
    stack = make_stack("postgresql", workers={"worker": WORKER}, push=push)
    dsn = stack.env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    alice, bob, carol = stack.user("alice"), stack.user("bob"), stack.user("carol")
    topic = stack.topic(alice, bob, carol)
    subs = []
    for user in (bob, bob, carol):  # bob has two devices
        sub = push.new_subscription()
        body = {"endpoint": sub["endpoint"], "keys": sub["keys"]}
        assert stack.api(user, "POST", "/api/notifications/subscribe", json=body).status_code == 201
        subs.append(sub)
    sender = stack.client(alice)
    acked: list[int] = []

    def send(n: int, label: str) -> None:
        for i in range(n):
            ack = sender.call("send_message", topic.ref(message=f"{label} {i}"))
            assert ack["ok"], ack
            acked.append(ack["message"]["id"])

    # 1. First messages: counted, their pushes planned, their sends stuck at the push service.
    gate.close()
    send(3, "first")
    wait_until(lambda: gate.held >= 9, timeout=15, message="the sends never reached the gate")
    wait_until(lambda: stack.unread(bob, topic) == 3, message="first increments not applied")

    # 2. Next messages: their increments and fan-outs block on the locked marker table.
    worker = stack.workers["worker"]
    with contextlib.closing(psycopg.connect(dsn)) as locker:
        locker.execute("LOCK TABLE processed_events IN ACCESS EXCLUSIVE MODE")
        send(3, "second")
        # 3 increments + 3 fan-outs (+ the first sends that came back for a retry) wait.
        wait_until(lambda: _waiting_on_locks(dsn) >= 6, timeout=15, message="nothing blocked")
        log = worker.log_text(worker.run_offset)
        held_increments = _received(log, "beacon.unread.increment") - _succeeded(
            log, "beacon.unread.increment"
        )
        held_fanouts = _received(log, "beacon.push.fan_out") - _succeeded(
            log, "beacon.push.fan_out"
        )
        held_sends = _received(log, "beacon.push.send_batch") - _succeeded(
            log, "beacon.push.send_batch"
        )
        assert len(held_increments) == 3 and len(held_fanouts) == 3 and held_sends

        # 3. The fault.
        worker.kill()
        locker.rollback()
    gate.open()  # requests it held are dropped, never processed
    replacement = stack.start_worker("worker-b", *WORKER)

    # 4. Redelivered after the visibility timeout: counts exact, one push per message/device.
    vt = float(stack.env["BROKER_VISIBILITY_TIMEOUT"])
    wait_until(
        lambda: stack.unread(bob, topic) == 6 and stack.unread(carol, topic) == 6,
        timeout=vt + 20,
        message="the dead worker's increments were not redelivered",
    )

    def pushed(sub: dict) -> list[int]:
        return sorted(json.loads(m["payload"])["message_id"] for m in push.messages(sub))

    wait_until(
        lambda: all(len(pushed(s)) >= len(acked) for s in subs),
        timeout=vt + 20,
        message="the dead worker's pushes were not redelivered",
    )
    assert all(pushed(s) == sorted(acked) for s in subs), [pushed(s) for s in subs]
    new_log = replacement.log_text(replacement.run_offset)
    assert held_increments <= _received(new_log, "beacon.unread.increment")
    assert held_fanouts <= _received(new_log, "beacon.push.fan_out")
    assert stack.unread(alice, topic) == 0
    assert stack.unread(bob, topic) == 6 and stack.unread(carol, topic) == 6  # still exact
    assert process_report(stack)["worker-b"]

    reliability.record(
        "faults",
        "SIGKILL a Celery worker holding unread and push tasks (PostgreSQL)",
        expected=f"tasks redelivered to another worker after the {vt:g} s visibility timeout; "
        "counts exact; each push delivered once",
        observed=f"held {len(held_increments)} increments, {len(held_fanouts)} fan-outs, "
        f"{len(held_sends)} sends; all redelivered; counts 6/6 exact; "
        f"{sum(len(pushed(s)) for s in subs)} pushes for {len(acked)} messages x {len(subs)} "
        "devices, none doubled",
        backend=stack.backend,
    )


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_killed_pool_process_task_is_requeued_at_once(make_stack, reliability):
    """The other way a worker loses a task: its prefork pool process dies (OOM killer) while
    the parent lives. ``task_reject_on_worker_lost`` puts the task back at once."""
    stack = make_stack("postgresql", workers={"unread": ("unread", "-c", "2")})
    dsn = stack.env["DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    alice, bob = stack.user("alice"), stack.user("bob")
    topic = stack.topic(alice, bob)
    sender = stack.client(alice)
    worker = stack.workers["unread"]
    with contextlib.closing(psycopg.connect(dsn)) as locker:
        locker.execute("LOCK TABLE processed_events IN ACCESS EXCLUSIVE MODE")
        for i in range(2):
            assert sender.call("send_message", topic.ref(message=f"m{i}"))["ok"]
        wait_until(lambda: _waiting_on_locks(dsn) >= 2, timeout=15, message="nothing blocked")
        pool = _children(worker.pid)
        assert pool
        log = worker.log_size()
        for pid in pool:
            os.kill(pid, signal.SIGKILL)
        wait_log_contains(worker, "WorkerLostError", since=log, timeout=15)
        locker.rollback()
    wait_until(lambda: stack.unread(bob, topic) == 2, timeout=20, message="increments lost")
    assert worker.alive and stack.unread(alice, topic) == 0
    reliability.record(
        "faults",
        "SIGKILL the prefork pool processes of a worker holding unread tasks",
        expected="tasks requeued at once (task_reject_on_worker_lost); counts exact",
        observed=f"{len(pool)} pool processes killed; WorkerLostError, tasks re-run by new "
        "pool processes; count 2 exact",
        backend=stack.backend,
    )
