"""Stop and restart Redis during traffic. It comes back EMPTY (no persistence, the worst case):
queued tasks, presence and rate-limit state are gone.

What must hold: no process exits; web, workers and beat reconnect by themselves; sends during
the outage are refused with ``unavailable`` and store nothing; connections survive, and a
client refused during the outage connects once Redis is back; every web process re-registers
its live connections (and their joined topics) so presence is right again, and a user who left
during the outage ends offline; the tasks Redis forgot are enqueued again by the
reconciliation, so every count ends exact (nothing lost, nothing doubled) and every offline
member gets exactly one push per message.
"""

from __future__ import annotations

import signal
import threading
import uuid

from sqlalchemy import func, select

from tests.faults.conftest import message_ids, process_report
from tests.harness.processes import wait_log_contains
from tests.harness.waiting import wait_until


def _user_row(stack, user):
    from webapp.extensions import db
    from webapp.models import User

    with stack.app.app_context():
        row = db.session.get(User, uuid.UUID(user.id))
        db.session.expunge(row)
        return row


def _online_ids(stack, viewer) -> set[str]:
    users = stack.api(viewer, "GET", "/api/users/online").json()["users"]
    return {u["user_id"] for u in users}


def _send(client, topic, text):
    return client.call("send_message", topic.ref(message=text), timeout=20)


def test_redis_restart_loses_nothing_and_doubles_nothing(make_stack, fault_redis, reliability):
    stack = make_stack("sqlite")
    stack.start_beat()
    alice, bob, carol, dave, erin, frank = (
        stack.user(name) for name in ("alice", "bob", "carol", "dave", "erin", "frank")
    )
    topic = stack.topic(alice, bob, carol, dave, erin)
    dave_sub = stack.push.new_subscription()
    body = {"endpoint": dave_sub["endpoint"], "keys": dave_sub["keys"]}
    assert stack.api(dave, "POST", "/api/notifications/subscribe", json=body).status_code == 201

    alice_c, bob_c, carol_c, erin_c = (stack.client(u) for u in (alice, bob, carol, erin))
    assert bob_c.call("join_topic", {"topic_id": topic.topic_id})["ok"]  # active: not counted
    acked: list[int] = []

    # Before: normal traffic.
    for i in range(3):
        ack = _send(alice_c, topic, f"before {i}")
        assert ack["ok"], ack
        acked.append(ack["message"]["id"])

    # Workers frozen: the next messages' tasks wait in Redis, and Redis is about to forget them.
    for worker in stack.workers.values():
        worker.send_signal(signal.SIGSTOP)
    for i in range(3):
        ack = _send(alice_c, topic, f"queued {i}")
        assert ack["ok"], ack
        acked.append(ack["message"]["id"])

    # The outage.
    web_log = stack.web.log_size()
    fault_redis.stop()
    refused = [_send(alice_c, topic, f"during {i}") for i in range(3)]
    assert all(r["ok"] is False and r["error"] == "unavailable" for r in refused), refused
    erin_c.disconnect()  # her disconnect cannot be recorded now
    ok, error = stack.new_client("frank-early").try_connect(stack.url, frank.token)
    assert not ok and error["data"]["error"] == "unavailable", error
    wait_log_contains(stack.web, "presence heartbeat failed", since=web_log, timeout=10)

    frank_c = stack.new_client("frank")
    frank_connected = threading.Event()

    def keep_trying() -> None:  # what a client does on an ``unavailable`` refusal
        while not frank_c.try_connect(stack.url, frank.token)[0]:
            threading.Event().wait(0.3)
        frank_connected.set()

    retrier = threading.Thread(target=keep_trying, daemon=True)
    retrier.start()

    fault_redis.start()  # empty
    for worker in stack.workers.values():
        worker.send_signal(signal.SIGCONT)

    # Web processes re-register their connections; the retrying client gets in.
    wait_log_contains(stack.web, "presence rebuilt", since=web_log, timeout=15)
    assert frank_connected.wait(20), "the refused client never connected after the outage"
    expected_online = {alice.id, bob.id, carol.id, frank.id}
    wait_until(
        lambda: _online_ids(stack, carol) == expected_online,
        timeout=15,
        message="presence was not rebuilt",
    )
    carol_c.wait_for_event(
        "user_status_change", lambda p: p["user_id"] == erin.id and not p["is_online"], 15
    )
    erin_row = _user_row(stack, erin)
    assert erin_row.is_online is False and erin_row.last_seen_at is not None
    from webapp.presence.store import presence_for

    presence = presence_for(stack.env["REDIS_URL"], 3)
    assert presence.active_users(topic.topic_id) == {bob.id}

    # After: traffic flows again, events cross processes again (worker -> Redis -> web).
    mark = carol_c.mark()
    for i in range(3):
        ack = _send(alice_c, topic, f"after {i}")
        assert ack["ok"], ack
        acked.append(ack["message"]["id"])
    carol_c.wait_for_event(
        "unread_update", lambda p: p["topic_id"] == topic.topic_id, 20, after=mark
    )

    # Nothing lost, nothing doubled: the forgotten tasks were enqueued again by reconciliation.
    assert message_ids(stack, topic) == acked  # and none of the refused ones was stored
    expected = {alice.id: 0, bob.id: 0, carol.id: 9, dave.id: 9, erin.id: 9}

    def counts():
        return {u.id: stack.unread(u, topic) for u in (alice, bob, carol, dave, erin)}

    wait_until(lambda: counts() == expected, timeout=30, message=f"counts {counts()}")
    wait_until(
        lambda: len(stack.push.messages(dave_sub)) >= len(acked),
        timeout=30,
        message="some pushes to the offline member were lost",
    )
    pushed = sorted(
        __import__("json").loads(m["payload"])["message_id"] for m in stack.push.messages(dave_sub)
    )
    assert pushed == acked, "a push was lost or doubled"
    assert wait_log_contains(stack.extra["beat"], "beacon.unread.reconcile", timeout=5)
    assert counts() == expected  # still exact once everything settled
    assert all(process_report(stack).values()), process_report(stack)
    for client in (alice_c, bob_c, carol_c):  # connections lived through the outage
        assert client.connected and not client.received("disconnect"), client
    with stack.app.app_context():
        from webapp.extensions import db
        from webapp.models import Message

        total = db.session.execute(select(func.count()).select_from(Message)).scalar_one()
    assert total == len(acked)

    reliability.record(
        "faults",
        "redis-server stopped and restarted empty during traffic",
        expected="no process exits; sends during the outage refused `unavailable`, nothing "
        "stored; presence rebuilt; lost tasks reconciled; counts exact; one push per message",
        observed=f"{len(acked)} messages stored, {len(refused)} refused, nothing else stored; "
        f"counts {sorted(expected.values())} exact; {len(pushed)} pushes, none doubled; "
        f"{len(process_report(stack))} processes kept running, open connections survived, "
        "a refused client got in after",
        backend=stack.backend,
    )
