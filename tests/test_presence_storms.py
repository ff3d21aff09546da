"""Presence under storms: many users connecting, reconnecting and leaving at the same moment.

Found with bench/presence_churn.py: a burst of handshakes used to be refused (``unavailable``)
once more than 100 were in flight (the Redis pool's ceiling), and when a user's reconnect raced
its own disconnect, observers could be told ``online`` then ``offline`` while the user stayed
connected, with ``users.is_online`` left false.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
import socketio

from tests.conftest import start_web
from tests.harness.ports import free_port
from tests.harness.waiting import wait_until

USERS = 250


def _online_in_db(beacon, ids: list[str]) -> int:
    import uuid

    from sqlalchemy import func, select

    from webapp.extensions import db
    from webapp.models import User

    with beacon.app.app_context():
        return db.session.execute(
            select(func.count()).where(
                User.id.in_([uuid.UUID(i) for i in ids]), User.is_online.is_(True)
            )
        ).scalar_one()


def _sequences(observer, ids: set[str], after: int) -> dict[str, list[bool]]:
    seqs: dict[str, list[bool]] = {i: [] for i in ids}
    for p in observer.events("user_status_change", after=after):
        if p["user_id"] in ids:
            seqs[p["user_id"]].append(p["is_online"])
    return seqs


def _online_ids(beacon, user) -> set[str]:
    return {u["user_id"] for u in beacon.api(user, "GET", "/api/users/online").json()["users"]}


class AsyncClients:
    """Many python-socketio asyncio clients on one loop (threads cannot open hundreds at once).

    The loop runs in its own thread: other tests' libraries may leave a loop running in this one.
    """

    def __init__(self, url: str, tokens: list[str]) -> None:
        self.url, self.tokens = url, tokens
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.clients: list = [None] * len(tokens)

    def each(self, step) -> list:  # noqa: ANN001
        """``step(i)`` for every client at the same time; the exceptions, if any."""

        async def all_at_once() -> list:
            steps = (step(i) for i in range(len(self.tokens)))
            return await asyncio.gather(*steps, return_exceptions=True)

        results = asyncio.run_coroutine_threadsafe(all_at_once(), self.loop).result(timeout=120)
        return [r for r in results if isinstance(r, BaseException)]

    async def _open(self, i: int) -> None:
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(
            self.url, auth={"token": self.tokens[i]}, transports=["websocket"], wait_timeout=60
        )
        self.clients[i] = client

    async def _close(self, i: int) -> None:
        client, self.clients[i] = self.clients[i], None
        if client is not None:
            await client.disconnect()

    async def _reopen(self, i: int) -> None:
        await self._close(i)
        await self._open(i)

    def connect_all(self) -> list:
        return self.each(self._open)

    def reconnect_all(self) -> list:
        return self.each(self._reopen)

    def disconnect_all(self) -> list:
        return self.each(self._close)

    def close(self) -> None:
        try:
            self.disconnect_all()
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)


def test_storms_keep_presence_exact(beacon):
    users = [beacon.user("storm") for _ in range(USERS)]
    ids = {u.id for u in users}
    observer = beacon.client(beacon.user("watcher"), "watcher")
    clients = AsyncClients(beacon.url, [u.token for u in users])
    try:
        # Every handshake at once: none refused, one "online" per user.
        mark = observer.mark()
        assert clients.connect_all() == []
        wait_until(
            lambda: all(s == [True] for s in _sequences(observer, ids, mark).values()),
            timeout=60,
            message="not exactly one online event per user",
        )
        assert ids <= _online_ids(beacon, users[0])
        assert _online_in_db(beacon, list(ids)) == USERS

        # Everyone drops and reconnects at once: per user nothing (the reconnect overtook the
        # disconnect) or exactly offline-then-online; never a lone or reordered event.
        mark = observer.mark()
        assert clients.reconnect_all() == []
        wait_until(
            lambda: (
                _online_in_db(beacon, list(ids)) == USERS and ids <= _online_ids(beacon, users[0])
            ),
            timeout=60,
            message="presence did not settle online after the reconnect storm",
        )
        # Events reach the observer in order: a later one proves the stragglers have arrived.
        probe = beacon.user("probe")
        probe_client = beacon.client(probe, "probe")
        observer.wait_for_event("user_status_change", lambda p: p["user_id"] == probe.id)
        wrong = {
            u: s for u, s in _sequences(observer, ids, mark).items() if s not in ([], [False, True])
        }
        assert not wrong, wrong

        # Everyone leaves at once: exactly one "offline" each, stored.
        probe_client.disconnect()
        mark = observer.mark()
        assert clients.disconnect_all() == []
        wait_until(
            lambda: all(s == [False] for s in _sequences(observer, ids, mark).values()),
            timeout=60,
            message="not exactly one offline event per user",
        )
        assert not ids & _online_ids(beacon, users[0])
        assert _online_in_db(beacon, list(ids)) == 0
    finally:
        clients.close()


@pytest.fixture(scope="module")
def topics_web(stack, run_dir):
    """A web process of the same deployment with PRESENCE_EVENTS=topics."""
    port = free_port()
    env = {**stack.env, "PRESENCE_EVENTS": "topics"}
    web = start_web(f"web-topics-{stack.backend}", env, port, run_dir)
    yield f"http://127.0.0.1:{port}"
    web.stop()


def test_presence_events_topics_reach_co_members_only(beacon, topics_web):
    alice, bob, carol = beacon.user("alice"), beacon.user("bob"), beacon.user("carol")
    topic = beacon.topic(alice, bob)
    bob_client = beacon.new_client("bob")
    bob_client.connect(topics_web, bob.token)
    assert bob_client.call("join_topic", {"topic_id": topic.topic_id})["ok"]
    carol_client = beacon.new_client("carol")
    carol_client.connect(topics_web, carol.token)
    mark = carol_client.mark()

    alice_client = beacon.new_client("alice")
    alice_client.connect(topics_web, alice.token)
    bob_client.wait_for_event(
        "user_status_change", lambda p: p["user_id"] == alice.id and p["is_online"]
    )
    # Carol shares no topic with Alice: a later event to Carol proves none came before it (the
    # alert of her own message in a topic of her own; alerts go to the topic's members).
    own = carol_client.call("send_message", beacon.topic(carol).ref(message="mine"))
    assert own["ok"], own
    carol_client.wait_for_event(
        "global_message_alert", lambda p: p["message_id"] == own["message"]["id"]
    )
    about_alice = [
        p for p in carol_client.events("user_status_change", after=mark) if p["user_id"] == alice.id
    ]
    assert about_alice == []
