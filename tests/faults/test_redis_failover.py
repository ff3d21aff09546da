"""Redis high availability: the primary is killed while clients send, Sentinel promotes the
replica, and every process moves to it by itself.

The deployment: a primary, a replica and three ``redis-sentinel`` processes (quorum 2,
``down-after-milliseconds`` 1000), and Beacon configured with ``REDIS_SENTINELS`` and
``REDIS_SENTINEL_MASTER`` only: two web processes, the unread and push workers, beat.

What must hold (docs/OPERATIONS.md, "Redis high availability"): within the bound every web
process accepts sends again (on the new primary), the workers process tasks from it and beat
schedules on it; the Socket.IO message queue carries events across processes again; sends
refused during the switch got ``unavailable`` and stored nothing; nothing acked is lost (the
tasks the dead primary had not replicated are enqueued again by the reconciliation): every
count is exact and the offline member gets exactly one push per message; no process exits and
open connections survive.
"""

from __future__ import annotations

import json
import threading
import time

from tests.faults.conftest import message_ids, process_report
from tests.harness.redis_sentinel import SentinelCluster
from tests.harness.waiting import wait_until

DOWN_AFTER_MS = 1000
# The bound docs/OPERATIONS.md states for this configuration: Sentinel's down-after plus its
# election and promotion (about 1-2 s), plus a client's next attempt.
BOUND = DOWN_AFTER_MS / 1000 + 8


class Sender(threading.Thread):
    """Sends to ``topic`` about 20 times a second until stopped, recording every ack with the
    monotonic time its send started."""

    def __init__(self, client, topic, name: str) -> None:
        super().__init__(daemon=True, name=f"sender-{name}")
        self.client, self.topic, self.label = client, topic, name
        self.acks: list[tuple[float, dict]] = []
        self.stopping = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        n = 0
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                ack = self.client.call(
                    "send_message", self.topic.ref(message=f"{self.label} {n}"), timeout=20
                )
                self.acks.append((started, ack))
                n += 1
                self.stopping.wait(0.05)
        except BaseException as exc:  # surfaced by the test
            self.failure = exc

    def ok_ids(self) -> list[int]:
        return [ack["message"]["id"] for _, ack in self.acks if ack.get("ok")]

    def ok_since(self, moment: float) -> int:
        return sum(1 for started, ack in self.acks if ack.get("ok") and started >= moment)

    def refused(self) -> list[dict]:
        return [ack for _, ack in self.acks if not ack.get("ok")]

    def first_ok_after(self, moment: float) -> float | None:
        return next(
            (started for started, ack in self.acks if ack.get("ok") and started >= moment), None
        )


def test_primary_killed_while_clients_send(make_stack, reliability):
    with SentinelCluster(down_after_ms=DOWN_AFTER_MS) as cluster:
        stack = make_stack("postgresql", RATE_LIMIT_SEND_MESSAGE="10000/10s", **cluster.env())
        beat = stack.start_beat()
        web2 = stack.start_web("web2")
        alice, bob, carol, dave = (stack.user(n) for n in ("alice", "bob", "carol", "dave"))
        topic = stack.topic(alice, bob, carol, dave)
        dave_sub = stack.push.new_subscription()
        body = {"endpoint": dave_sub["endpoint"], "keys": dave_sub["keys"]}
        assert stack.api(dave, "POST", "/api/notifications/subscribe", json=body).status_code == 201

        alice_c = stack.client(alice)  # on web 1
        bob_c = stack.new_client("bob")
        bob_c.connect(web2, bob.token)  # on web 2
        carol_c = stack.new_client("carol")
        carol_c.connect(web2, carol.token)
        senders = [Sender(alice_c, topic, "alice@web1"), Sender(bob_c, topic, "bob@web2")]
        for sender in senders:
            sender.start()

        def each_sent(count: int, since: float = 0.0) -> bool:
            for sender in senders:
                assert sender.failure is None, sender.failure
            return all(s.ok_since(since) >= count for s in senders)

        wait_until(lambda: each_sent(5), timeout=20, message="no traffic before the failover")
        beat_log = beat.log_size()

        killed = time.monotonic()
        cluster.kill_primary()
        promoted = cluster.wait_promoted(timeout=30) - killed
        # Every web process accepts sends again, on the new primary.
        wait_until(
            lambda: each_sent(5, since=killed + promoted),
            timeout=BOUND + 10,
            message=f"sends did not resume on both web processes: {cluster.log_tail()}",
        )
        for sender in senders:
            sender.stopping.set()
        for sender in senders:
            sender.join(30)
            assert sender.failure is None, sender.failure
        resumed = {s.label: s.first_ok_after(killed) - killed for s in senders}
        assert max(resumed.values()) <= BOUND, resumed

        # Refused sends said `unavailable` and stored nothing; every acked one is stored.
        refused = [ack for s in senders for ack in s.refused()]
        assert all(ack["error"] == "unavailable" for ack in refused), refused
        acked = {s.label: s.ok_ids() for s in senders}
        every = sorted(acked["alice@web1"] + acked["bob@web2"])
        assert message_ids(stack, topic) == every

        # Nothing acked is lost: counts exact and one push per message, the tasks the dead
        # primary took with it enqueued again by the reconciliation (beat, on the new primary).
        expected = {
            alice.id: len(acked["bob@web2"]),
            bob.id: len(acked["alice@web1"]),
            carol.id: len(every),
            dave.id: len(every),
        }

        def counts() -> dict[str, int]:
            return {u.id: stack.unread(u, topic) for u in (alice, bob, carol, dave)}

        wait_until(lambda: counts() == expected, timeout=60, message=f"counts {counts()}")

        def pushed() -> list[int]:
            return sorted(
                json.loads(m["payload"])["message_id"] for m in stack.push.messages(dave_sub)
            )

        try:
            wait_until(lambda: len(pushed()) >= len(every), timeout=60, message="")
        except TimeoutError:
            raise AssertionError(f"pushes lost: {sorted(set(every) - set(pushed()))}") from None
        assert pushed() == every, "a push was lost or doubled"
        wait_until(
            lambda: "beacon.unread.reconcile" in beat.log_text(since=beat_log),
            timeout=10,
            message="beat scheduled nothing after the failover",
        )

        # The message queue carries events across processes again: a message sent on web 1
        # reaches carol on web 2 through it, and a worker's count update reaches her too.
        mark = carol_c.mark()
        last = alice_c.call("send_message", topic.ref(message="after"), timeout=20)
        assert last["ok"], last
        carol_c.wait_for_event(
            "global_message_alert",
            lambda p: p.get("message_id") == last["message"]["id"],
            20,
            after=mark,
        )
        carol_c.wait_for_event(
            "unread_update",
            lambda p: p["topic_id"] == topic.topic_id and p["unread_count"] == len(every) + 1,
            20,
            after=mark,
        )
        # Presence was rebuilt on the new primary: the connected users are online.
        online = {
            u["user_id"] for u in stack.api(carol, "GET", "/api/users/online").json()["users"]
        }
        assert {alice.id, bob.id, carol.id} <= online and dave.id not in online

        assert all(process_report(stack).values()), process_report(stack)
        for client in (alice_c, bob_c, carol_c):  # connections lived through the failover
            assert client.connected and not client.received("disconnect"), client

    reliability.record(
        "faults",
        "Redis primary killed during traffic; Sentinel promotes the replica",
        expected="every process on the new primary within the bound; refused sends "
        "`unavailable`, nothing stored; counts exact; one push per message",
        observed=f"promoted after {promoted:.1f} s; sends accepted again after "
        + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(resumed.items()))
        + f" (bound {BOUND:.0f} s); {len(every)} messages acked and stored, {len(refused)} "
        f"refused `unavailable`; counts exact; {len(every)} pushes, none lost or doubled",
        backend=stack.backend,
    )
