"""Catching up after a reconnect (issue 18): ``sync`` against rebuilding from REST, and what
read receipts add to ``mark_as_read``.

Real processes on loopback (``bench/stack.py``): a private Redis, SQLite (or a private
PostgreSQL with ``--backend postgresql``), the web process (``wsgi.py``, gevent) and an
``unread`` worker. Stack A has read receipts on (the default) and serves both parts; stack B,
with ``READ_RECEIPTS=false``, runs beside it for part 2 only. Part 2 runs first, so that both
stacks are equally fresh (on PostgreSQL, no autovacuum of part 1's rows in A's figures); B is
stopped before part 1. The rate limits of ``sync``, ``mark_as_read`` and ``send_message`` are
set far out of the way. Users come from ``create_users`` (tokens included); rooms, topics,
memberships (with their read markers, counts and versions) and messages (chat lines of 2 to
177 characters, 69 on average, from the topic's members) are inserted in bulk through
SQLAlchemy.

1. Catch-up of one reconnecting user, per ``--topics`` T (20,100): the reader is a member of T
   topics (spread over rooms of 10), each with ``--members`` members (20: the reader and others
   drawn from a pool of ``--pool`` users, 200) and ``--history`` messages (60) before the
   reader's cursor, then ``--new`` K (5) after it; the reader's marker is at the cursor
   (``unread_count`` K), every other member has a marker among the topic's last 15 messages
   (so every topic has receipts). ``--online`` (5) pool users are connected over Socket.IO,
   and so is the reader, joined to its first topic (as the contract says: connect and join,
   then sync). Modes, each answering the same question "what did I miss?":

   (a) ``sync {since: cursor}`` over the reader's open Socket.IO connection, emit to ack;
       python-socketio's client (websocket-client underneath) with ``skip_utf8_validation``,
       and (a') the same on a second connection of the reader (another tab) with
       websocket-client's default, a UTF-8 check in pure Python over every frame received
       (the tests' client as is; a browser checks natively), to show what that costs;
   (b) ``GET /api/sync?since=cursor`` over a keep-alive ``requests.Session``;
   (c) the baseline, what a client did before (docs/FRONTEND_GUIDE.md: "nothing is replayed;
       reload from REST"): ``GET /api/topics``, ``GET /api/topics/<id>/messages?limit=50``
       for every topic, ``GET /api/users/online``, ``GET /api/notifications/preferences``,
       one after another on one keep-alive session;
   (d) the same requests with the pages, users and preferences 6 at a time (a browser's six
       connections per host; ``GET /api/topics`` first, it names the topics).

   ``--repeat`` (40) timed catch-ups per mode, after 3 untimed ones, in ``--rounds`` (4)
   rounds: each round runs a batch of every mode in turn, so drift hits all modes alike. The
   web process's CPU (and PostgreSQL's, its postmaster and backends; and this process's: the
   clients) is read from ``/proc`` around each batch and divided by the batch's catch-ups.
   Bytes: the answer's JSON (the ack's as Socket.IO encodes it; the response bodies, summed
   over the requests for (c)). Every answer is checked once per batch (T topics, K new
   messages each, a receipt per other member, every co-member in ``users``).

2. Receipts on ``mark_as_read``: in each stack, a topic of ``--read-members`` (50) members of
   whom ``--watchers`` (10) are connected and joined, from a process of their own (they
   receive the receipts), plus the reader, connected and joined. Closed loop: a message from
   another member is inserted into the database by the bench (not through the web, so the web's
   CPU is the read's alone; PostgreSQL's includes that INSERT, on both sides), then the
   reader's ``mark_as_read {topic_id, message_ids: [it]}``, timed emit to ack; the marker
   moves every time. ``--reads`` (300) reads per stack in ``--rounds`` batches, A and B
   alternating (B first every other round). Per batch the CPU of the web process and of
   Redis is read once the reader has its own ``messages_read`` for the batch's last read and
   every watcher the receipt of that read (A; in B none may arrive), so the fan-out is
   counted whether it runs before the ack or after it.

Before part 1 the web's CPU is read over a few idle seconds (heartbeats and sweeps with the
clients connected), to show that the background is small next to what the batches cost.
``--profile DIR`` py-spies the web process in extra, untimed batches after the measurement:
each catch-up mode at each T, and ``mark_as_read`` on both stacks.

    .venv/bin/python bench/sync.py                               # SQLite, ~1.5 minutes
    .venv/bin/python bench/sync.py --backend postgresql          # ~2 minutes
    .venv/bin/python bench/sync.py --topics 20 --repeat 10 --rounds 2 --reads 100   # quick
    .venv/bin/python bench/sync.py --topics "" --reads 1000      # part 2 only
    .venv/bin/python bench/sync.py --profile /tmp/prof           # py-spy of the web
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.stack import (  # noqa: E402
    BenchUser,
    cpu_seconds,
    group_cpu_seconds,
    run_until_terminated,
)

BODIES = (
    "ok",
    "thanks!",
    "on it",
    "lgtm, merging after CI",
    "Can someone review the migration before lunch?",
    "The staging deploy is green again; the flaky test was the clock skew one.",
    "I moved the sync call after join_topic, as the contract says, and the gap is gone.",
    "Heads up: the database maintenance window is tonight 22:00-23:00 UTC, expect a short "
    "read-only period.",
    "Numbers from yesterday: p95 of the push pipeline went from 180 ms to 95 ms after the "
    "batching change, CPU per message down by a third.",
    "Who owns the onboarding emails? Marketing asked for a new subject line and a link to the "
    "pricing page.",
    "Reminder: retro at 4, bring one thing that went well and one that did not.",
    "I can't reproduce it on Firefox, only on Safari 17 with the tab in the background for a "
    "few minutes; it looks like the socket is suspended and the reconnect skips the catch-up.",
    "Draft of the release notes is in the doc, please add your items under the right heading "
    "by Thursday so that we can ship on Friday morning without the usual last-minute scramble.",
    "+1",
    "sounds good",
    "Let's keep the old endpoint for one more release and log who still calls it.",
    "The invoice export timed out again for the biggest customer; I'll page it by month.",
    "Done. Rolled back the flag for EU users, the error rate is back to normal.",
    "Could we get a dashboard panel for the unread worker's queue length? Twice this week it "
    "grew for ten minutes before anyone noticed.",
    "brb",
)
ROOM_SIZE = 10  # topics per room
BATCH_WARMUP = 3


# -- numbers ---------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def ratio(value: float, base: float) -> str:
    if not base or math.isnan(value) or math.isnan(base):
        return ""
    return f"{value / base:.2f}x"


def postgres_pid(env: dict[str, str]) -> int | None:
    from bench.email_digests import postmaster_pid

    return postmaster_pid(env["DATABASE_URL"])


def postgres_seconds(postmaster: int | None) -> float:
    if postmaster is None:
        return float("nan")
    from bench.email_digests import postgres_cpu

    return postgres_cpu(postmaster)


@dataclass
class Meter:
    """CPU seconds of the web process (its group), Redis, PostgreSQL when it is ours, this
    process (``bench``: the clients, every thread) and the whole machine (``box``: any
    process, the bench's and anyone else's); and wall seconds."""

    web: int
    redis: int | None
    postgres: int | None

    def read(self) -> dict[str, float]:
        from bench.email_digests import busy_seconds

        return {
            "web": group_cpu_seconds(self.web),
            "redis": cpu_seconds(self.redis) if self.redis else float("nan"),
            "db": postgres_seconds(self.postgres),
            "bench": time.process_time(),
            "box": busy_seconds(),
            "wall": time.monotonic(),
        }

    @staticmethod
    def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {k: after[k] - before[k] for k in before}


def meter_for(stack: Any) -> Meter:
    redis_pid = stack.redis.pid if stack.redis is not None else None
    return Meter(stack.web_pid, redis_pid, postgres_pid(stack.env))


# -- fixtures --------------------------------------------------------------------------------------
@dataclass
class Scenario:
    reader: BenchUser
    topics: list[tuple[str, str]]  # (topic_id, room_id), creation order
    cursor: int
    new: int
    co_members: int  # distinct other members of the reader's topics
    others_per_topic: int


def _chat_rows(
    rng: random.Random,
    topic_ids: list[uuid.UUID],
    senders: dict,
    count: int,
    start: Any,
    step: float,
) -> list[dict[str, Any]]:
    """``count`` messages per topic, topics interleaved in time (as chat goes)."""
    rows = []
    for i in range(count):
        for n, topic_id in enumerate(topic_ids):
            rows.append(
                {
                    "topic_id": topic_id,
                    "sender_id": rng.choice(senders[topic_id]),
                    "body": rng.choice(BODIES),
                    "created_at": start + timedelta(seconds=(i * len(topic_ids) + n) * step),
                }
            )
    return rows


def _insert_messages(rows: list[dict[str, Any]]) -> list[int]:
    from sqlalchemy import insert

    from webapp.extensions import db
    from webapp.models import Message

    ids: list[int] = []
    for start in range(0, len(rows), 2000):
        ids += db.session.execute(
            insert(Message).returning(Message.id, sort_by_parameter_order=True),
            rows[start : start + 2000],
        ).scalars()
    return ids


def seed_catchup(
    app: Any,
    pool: list[BenchUser],
    reader: BenchUser,
    n_topics: int,
    args: argparse.Namespace,
    rng: random.Random,
) -> Scenario:
    """The reader's T topics with history before the cursor, K new messages after it, and
    every member's marker (the reader's at the cursor)."""
    from sqlalchemy import insert

    from webapp.extensions import db
    from webapp.models import Channel, Topic, TopicMember, utcnow

    run = uuid.uuid4().hex[:6]
    now = utcnow()
    rooms = [uuid.uuid4() for _ in range(math.ceil(n_topics / ROOM_SIZE))]
    topic_ids = [uuid.uuid4() for _ in range(n_topics)]
    others = {t: rng.sample(range(len(pool)), args.members - 1) for t in topic_ids}
    senders = {t: [uuid.UUID(pool[i].id) for i in others[t]] for t in topic_ids}
    step = 0.5
    start = now - timedelta(seconds=(args.history + args.new) * n_topics * step + 60)
    with app.app_context():
        db.session.execute(
            insert(Channel),
            [{"id": r, "name": f"room-{run}-{n}", "created_at": now} for n, r in enumerate(rooms)],
        )
        db.session.execute(
            insert(Topic),
            [
                {
                    "id": t,
                    "channel_id": rooms[n // ROOM_SIZE],
                    "name": f"topic-{n}",
                    "created_at": now,
                }
                for n, t in enumerate(topic_ids)
            ],
        )
        old = _chat_rows(rng, topic_ids, senders, args.history, start, step)
        new_start = start + timedelta(seconds=len(old) * step)
        new = _chat_rows(rng, topic_ids, senders, args.new, new_start, step)
        old_ids = _insert_messages(old)
        new_ids = _insert_messages(new)
        by_topic: dict[uuid.UUID, list[tuple[int, Any]]] = {t: [] for t in topic_ids}
        for row, mid in zip(old + new, old_ids + new_ids, strict=True):
            by_topic[row["topic_id"]].append((mid, row["created_at"]))
        cursor = max(old_ids)
        members = []
        for t in topic_ids:
            messages = by_topic[t]
            mine = messages[args.history - 1]
            members.append(
                {
                    "topic_id": t,
                    "user_id": uuid.UUID(reader.id),
                    "unread_count": args.new,
                    "last_read_message_id": mine[0],
                    "last_read_at": mine[1] + timedelta(seconds=1),
                    "version": 2 * args.history,
                    "joined_at": start,
                }
            )
            for i in others[t]:
                at = rng.randrange(max(0, len(messages) - 15), len(messages))
                members.append(
                    {
                        "topic_id": t,
                        "user_id": uuid.UUID(pool[i].id),
                        "unread_count": len(messages) - at - 1,
                        "last_read_message_id": messages[at][0],
                        "last_read_at": messages[at][1] + timedelta(seconds=2),
                        "version": rng.randrange(1, 3 * args.history),
                        "joined_at": start,
                    }
                )
        for s in range(0, len(members), 5000):
            db.session.execute(insert(TopicMember), members[s : s + 5000])
        db.session.commit()
    rooms_of = {t: str(rooms[n // ROOM_SIZE]) for n, t in enumerate(topic_ids)}
    return Scenario(
        reader=reader,
        topics=[(str(t), rooms_of[t]) for t in topic_ids],
        cursor=cursor,
        new=args.new,
        co_members=len({i for t in topic_ids for i in others[t]}),
        others_per_topic=args.members - 1,
    )


@dataclass
class ReadTopic:
    reader: BenchUser
    watchers: list[BenchUser]
    topic_id: str
    room_id: str
    sender: uuid.UUID


def seed_read_topic(app: Any, users: list[BenchUser], args: argparse.Namespace) -> ReadTopic:
    """One topic of all ``users`` with some history; user 0 reads, the next ``--watchers``
    watch, the last one posts."""
    from sqlalchemy import insert

    from webapp.extensions import db
    from webapp.models import Channel, Topic, TopicMember, utcnow

    rng = random.Random(18)
    now = utcnow()
    room, topic = uuid.uuid4(), uuid.uuid4()
    ids = [uuid.UUID(u.id) for u in users]
    with app.app_context():
        db.session.execute(
            insert(Channel), [{"id": room, "name": f"reads-{room.hex[:6]}", "created_at": now}]
        )
        db.session.execute(
            insert(Topic), [{"id": topic, "channel_id": room, "name": "general", "created_at": now}]
        )
        db.session.execute(
            insert(TopicMember), [{"topic_id": topic, "user_id": u, "joined_at": now} for u in ids]
        )
        _insert_messages(
            _chat_rows(rng, [topic], {topic: ids[1:]}, 50, now - timedelta(hours=1), 30.0)
        )
        db.session.commit()
    watchers = users[1 : 1 + args.watchers]
    return ReadTopic(users[0], watchers, str(topic), str(room), uuid.UUID(users[-1].id))


def insert_message(app: Any, topic_id: str, sender: uuid.UUID, body: str) -> int:
    from webapp.extensions import db
    from webapp.models import utcnow

    with app.app_context():
        ids = _insert_messages(
            [
                {
                    "topic_id": uuid.UUID(topic_id),
                    "sender_id": sender,
                    "body": body,
                    "created_at": utcnow(),
                }
            ]
        )
        db.session.commit()
    return ids[0]


# -- clients ---------------------------------------------------------------------------------------
def connect(url: str, user: BenchUser, name: str, *, check_utf8: bool = True) -> Any:
    """The tests' recording client over a websocket. ``check_utf8=False``: websocket-client
    does not run its pure-Python UTF-8 check over every text frame received (a browser does
    it natively; the bench times both clients)."""
    from tests.harness.sio_client import RecordingClient

    options = {} if check_utf8 else {"websocket_extra_options": {"skip_utf8_validation": True}}
    client = RecordingClient(name=name, **options)
    client.connect(url, user.token, transports=["websocket"])
    return client


def join(client: Any, topic_id: str, room_id: str) -> None:
    ack = client.call("join_topic", {"topic_id": topic_id, "room_id": room_id})
    if not ack.get("ok"):
        raise SystemExit(f"join_topic refused: {ack}")


def http_session(token: str) -> Any:
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return session


def _get(session: Any, url: str) -> Any:
    response = session.get(url, timeout=60)
    if response.status_code != 200:
        raise SystemExit(f"GET {url}: {response.status_code} {response.text[:300]}")
    return response


@dataclass
class Answer:
    seconds: float
    bytes: int
    requests: int
    body: Any  # what to check: the sync answer, or (topics, pages, online, preferences)


class Catchup:
    """The four ways to catch up, for one scenario's reader."""

    def __init__(self, url: str, scenario: Scenario, client: Any, checking: Any) -> None:
        self.url = url
        self.scenario = scenario
        self.client = client
        self.checking = checking
        self.session = http_session(scenario.reader.token)
        self._local = threading.local()
        self.pool = ThreadPoolExecutor(6, thread_name_prefix="browser")

    def close(self) -> None:
        self.pool.shutdown()
        self.session.close()

    def _thread_session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = http_session(self.scenario.reader.token)
        return session

    def sync_socket(self, client: Any = None) -> Answer:
        started = time.perf_counter()
        ack = (client or self.client).call("sync", {"since": self.scenario.cursor}, timeout=30)
        seconds = time.perf_counter() - started
        if not ack.get("ok"):
            raise SystemExit(f"sync refused: {ack}")
        wire = json.dumps(ack, separators=(",", ":")).encode()
        return Answer(seconds, len(wire), 1, ack)

    def sync_socket_checking(self) -> Answer:
        return self.sync_socket(self.checking)

    def sync_rest(self) -> Answer:
        started = time.perf_counter()
        response = _get(self.session, f"{self.url}/api/sync?since={self.scenario.cursor}")
        body = response.json()
        return Answer(time.perf_counter() - started, len(response.content), 1, body)

    def _rest_urls(self, topics: list[dict[str, Any]]) -> list[str]:
        pages = [f"{self.url}/api/topics/{t['topic_id']}/messages?limit=50" for t in topics]
        return pages + [
            f"{self.url}/api/users/online",
            f"{self.url}/api/notifications/preferences",
        ]

    def rebuild(self) -> Answer:
        started = time.perf_counter()
        first = _get(self.session, f"{self.url}/api/topics")
        topics = first.json()["topics"]
        answers = [_get(self.session, u) for u in self._rest_urls(topics)]
        bodies = [a.json() for a in answers]
        seconds = time.perf_counter() - started
        size = len(first.content) + sum(len(a.content) for a in answers)
        return Answer(seconds, size, 1 + len(answers), (topics, bodies))

    def _fetch(self, url: str) -> tuple[int, Any]:
        response = _get(self._thread_session(), url)
        return len(response.content), response.json()

    def rebuild_parallel(self) -> Answer:
        started = time.perf_counter()
        first = _get(self.session, f"{self.url}/api/topics")
        topics = first.json()["topics"]
        answers = list(self.pool.map(self._fetch, self._rest_urls(topics)))
        seconds = time.perf_counter() - started
        size = len(first.content) + sum(n for n, _ in answers)
        return Answer(seconds, size, 1 + len(answers), (topics, [b for _, b in answers]))

    # -- what a correct answer holds ---------------------------------------------------------
    def check(self, mode: str, answer: Answer) -> None:
        s = self.scenario
        expected = {t for t, _ in s.topics}
        if mode.startswith("sync_"):
            body = answer.body
            got = {t["topic_id"] for t in body["topics"]}
            new = [len(t["messages"]) for t in body["topics"]]
            receipts = [len(t["receipts"]) for t in body["topics"]]
            wrong = (
                got != expected
                or set(new) != {s.new}
                or any(t["has_more"] for t in body["topics"])
                or set(receipts) != {min(s.others_per_topic, 100)}
                or len(body["users"]) != s.co_members + 1
                or not body["receipts_enabled"]
                or body["cursor"] <= s.cursor
            )
        else:
            topics, bodies = answer.body
            pages = bodies[: len(topics)]
            wrong = (
                {t["topic_id"] for t in topics} != expected
                or {len(p["messages"]) for p in pages} != {50}
                or "users" not in bodies[-2]
            )
        if wrong:
            raise SystemExit(f"{mode}: unexpected answer for {len(s.topics)} topics")


def composition(answer: dict[str, Any]) -> dict[str, int]:
    """Bytes of a sync answer's parts, as compact JSON."""

    def size(value: Any) -> int:
        return len(json.dumps(value, separators=(",", ":")).encode())

    topics = answer["topics"]
    parts = {
        "messages": sum(size(t["messages"]) for t in topics),
        "receipts": sum(size(t["receipts"]) for t in topics),
        "users": size(answer["users"]),
        "preferences": size(answer["preferences"]),
    }
    parts["topic rows and the rest"] = size(answer) - sum(parts.values())
    return parts


@dataclass
class ModeResult:
    seconds: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)  # seconds, summed over the batches
    count: int = 0
    bytes: int = 0
    requests: int = 0
    failed: str | None = None  # why the mode could not be measured

    def per(self, name: str) -> float:
        return self.cpu.get(name, float("nan")) / self.count * 1000 if self.count else float("nan")

    @property
    def box(self) -> float:
        """Cores of the machine busy during the batches."""
        return self.cpu["box"] / self.cpu["wall"] if self.cpu.get("wall") else float("nan")

    @property
    def p50(self) -> float:
        return statistics.median(self.seconds) if self.seconds else float("nan")


# The ratios are against the sequential REST rebuild, MODES[BASELINE].
MODES = (
    ("sync (Socket.IO ack)", "sync_socket"),
    ("the same, client checking UTF-8 in Python", "sync_socket_checking"),
    ("GET /api/sync", "sync_rest"),
    ("REST rebuild, sequential", "rebuild"),
    ("REST rebuild, 6 in parallel", "rebuild_parallel"),
)
BASELINE = 3


def catch_up_part(
    stack: Any, scenario: Scenario, args: argparse.Namespace
) -> tuple[dict[str, ModeResult], dict[str, int]]:
    meter = meter_for(stack)
    client = connect(stack.url, scenario.reader, "reader", check_utf8=False)
    checking = connect(stack.url, scenario.reader, "reader-tab")  # another tab, as tests connect
    first_topic, first_room = scenario.topics[0]
    join(client, first_topic, first_room)
    join(checking, first_topic, first_room)
    catchup = Catchup(stack.url, scenario, client, checking)
    results = {label: ModeResult() for label, _ in MODES}
    parts: dict[str, int] = {}
    modes = list(MODES)
    try:
        size = catchup.sync_rest().bytes
        for label, name in MODES:  # warm: keep-alive connections, the pool's threads, caches
            try:
                for _ in range(BATCH_WARMUP):
                    catchup.check(name, getattr(catchup, name)())
            except Exception as exc:  # noqa: BLE001 - reported, the other modes go on
                if not name.startswith("sync_socket"):
                    raise
                limit = stack.app.extensions["beacon_settings"].max_pending_bytes
                results[label].failed = (
                    f"no ack ({type(exc).__name__}); the answer is {size:,} bytes, "
                    f"MAX_PENDING_BYTES {limit:,}: see the web log"
                )
                print(f"{label}: {results[label].failed}", flush=True)
                modes.remove((label, name))
        per_round = [args.repeat // args.rounds] * args.rounds
        for i in range(args.repeat % args.rounds):
            per_round[i] += 1
        for batch in per_round:
            for label, name in modes:
                call: Callable[[], Answer] = getattr(catchup, name)
                result = results[label]
                before = meter.read()
                answers = [call() for _ in range(batch)]
                spent = Meter.spent(before, meter.read())
                for key, value in spent.items():
                    result.cpu[key] = result.cpu.get(key, 0.0) + value
                catchup.check(name, answers[-1])
                result.seconds += [a.seconds for a in answers]
                result.count += batch
                result.bytes = answers[-1].bytes
                result.requests = answers[-1].requests
                if name == "sync_rest":
                    parts = composition(answers[-1].body)
        if args.profile:
            from bench.load import profiled

            for _label, name in modes:
                tag = name.replace("_", "-")
                with profiled(stack.web_pid, args.profile, f"web-{tag}-{len(scenario.topics)}"):
                    for _ in range(max(10, args.repeat // 2)):
                        getattr(catchup, name)()
    finally:
        catchup.close()
        client.disconnect()
        checking.disconnect()
    return results, parts


# -- part 2: mark_as_read with and without receipts --------------------------------------------
def _watch(conn: Any, url: str, users: list[BenchUser], topic_id: str, room_id: str) -> None:
    """A watcher process: connects and joins ``users``, then answers the bench's commands:
    ``mark`` (positions in the record), ``settle`` (wait for each watcher's receipt of a read,
    then count the receipts since the marks), ``stop``."""
    clients = []
    try:
        for n, user in enumerate(users):
            client = connect(url, user, f"watcher-{n}")
            join(client, topic_id, room_id)
            clients.append(client)
        conn.send("ready")
        while True:
            command, arg = conn.recv()
            if command == "mark":
                conn.send([c.mark() for c in clients])
            elif command == "settle":
                marks, last = arg
                if last is not None:
                    for c, m in zip(clients, marks, strict=True):
                        c.wait_for_event(
                            "messages_read",
                            lambda p, last=last: p.get("last_read_message_id") == last,
                            timeout=30,
                            after=m,
                        )
                conn.send(
                    sum(
                        len(c.events("messages_read", after=m))
                        for c, m in zip(clients, marks, strict=True)
                    )
                )
            else:
                break
    finally:
        for c in clients:
            with contextlib.suppress(Exception):
                c.disconnect()
        with contextlib.suppress(Exception):
            conn.send("stopped")


class Watchers:
    """The watchers' Socket.IO clients in a process of their own: in this one, their threads
    would take the GIL from the reader's client as the receipts arrive, and the reader's ack
    would wait for them (watchers are other people's browsers)."""

    def __init__(self, url: str, users: list[BenchUser], topic_id: str, room_id: str) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_watch, args=(child, url, users, topic_id, room_id), daemon=True
        )
        self.proc.start()
        if not self.conn.poll(120) or self.conn.recv() != "ready":
            raise SystemExit("the watchers did not connect")

    def _ask(self, command: str, arg: Any = None) -> Any:
        self.conn.send((command, arg))
        if not self.conn.poll(60):
            raise SystemExit(f"the watchers did not answer {command!r}")
        return self.conn.recv()

    def mark(self) -> list[int]:
        return self._ask("mark")

    def settle(self, marks: list[int], last: int | None) -> int:
        """Wait until every watcher has the receipt of read ``last`` (None: no wait); the
        receipts they got since ``marks``."""
        return self._ask("settle", (marks, last))

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._ask("stop")
        self.proc.join(15)
        if self.proc.is_alive():
            self.proc.terminate()


@dataclass
class ReadSide:
    label: str
    stack: Any
    topic: ReadTopic
    reader: Any
    watchers: Watchers
    meter: Meter
    seconds: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    count: int = 0
    receipts: int = 0  # messages_read the watchers got, summed

    def per(self, name: str) -> float:
        return self.cpu.get(name, float("nan")) / self.count * 1000 if self.count else float("nan")

    @property
    def box(self) -> float:
        """Cores of the machine busy during the batches."""
        return self.cpu["box"] / self.cpu["wall"] if self.cpu.get("wall") else float("nan")


def open_read_side(label: str, stack: Any, args: argparse.Namespace) -> ReadSide:
    from bench.stack import create_users

    users = create_users(stack.app, args.read_members, prefix="reads")
    topic = seed_read_topic(stack.app, users, args)
    reader = connect(stack.url, topic.reader, f"reader-{label}")
    join(reader, topic.topic_id, topic.room_id)
    watchers = Watchers(stack.url, topic.watchers, topic.topic_id, topic.room_id)
    return ReadSide(label, stack, topic, reader, watchers, meter_for(stack))


def close_read_side(side: ReadSide) -> None:
    side.watchers.stop()
    with contextlib.suppress(Exception):
        side.reader.disconnect()


def read_once(side: ReadSide, rng: random.Random) -> tuple[float, int]:
    t = side.topic
    message_id = insert_message(side.stack.app, t.topic_id, t.sender, rng.choice(BODIES))
    started = time.perf_counter()
    ack = side.reader.call(
        "mark_as_read",
        {"topic_id": t.topic_id, "room_id": t.room_id, "message_ids": [message_id]},
        timeout=60,
    )
    seconds = time.perf_counter() - started
    if not ack.get("ok") or ack.get("last_read_message_id") != message_id:
        raise SystemExit(f"mark_as_read: {ack}")
    return seconds, message_id


def read_batch(side: ReadSide, count: int, expect_receipts: bool, rng: random.Random) -> None:
    marks = side.watchers.mark()
    own = side.reader.mark()
    before = side.meter.read()
    last = 0
    for _ in range(count):
        seconds, last = read_once(side, rng)
        side.seconds.append(seconds)
    side.reader.wait_for_event(
        "messages_read", lambda p: p.get("last_read_message_id") == last, timeout=30, after=own
    )
    received = side.watchers.settle(marks, last if expect_receipts else None)
    spent = Meter.spent(before, side.meter.read())
    for key, value in spent.items():
        side.cpu[key] = side.cpu.get(key, 0.0) + value
    side.count += count
    side.receipts += received


def receipts_part(
    on_stack: Any, off_stack: Any, args: argparse.Namespace
) -> tuple[ReadSide, ReadSide]:
    rng = random.Random(7)
    on = open_read_side("on", on_stack, args)
    off = open_read_side("off", off_stack, args)
    try:
        for side in (on, off):  # warm
            for _ in range(10):
                read_once(side, rng)
        time.sleep(0.5)
        per_round = [args.reads // args.rounds] * args.rounds
        for i in range(args.reads % args.rounds):
            per_round[i] += 1
        for n, batch in enumerate(per_round):
            order = ((on, True), (off, False)) if n % 2 == 0 else ((off, False), (on, True))
            for side, expect in order:
                read_batch(side, batch, expect, rng)
        if args.profile:
            from bench.load import profiled

            with profiled(on_stack.web_pid, args.profile, "web-mark-as-read-receipts-on"):
                for _ in range(max(50, args.reads // 2)):
                    read_once(on, rng)
            with profiled(off_stack.web_pid, args.profile, "web-mark-as-read-receipts-off"):
                for _ in range(max(50, args.reads // 2)):
                    read_once(off, rng)
    finally:
        close_read_side(on)
        close_read_side(off)
    return on, off


# -- report ----------------------------------------------------------------------------------------
def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f}"


def report_catchup(
    n_topics: int,
    scenario: Scenario,
    results: dict[str, ModeResult],
    parts: dict[str, int],
    pg: bool,
) -> None:
    base = results[MODES[BASELINE][0]]
    base_p50 = base.p50
    print(
        f"\n### {n_topics} topics: {scenario.new} new messages each since the cursor, "
        f"{scenario.others_per_topic + 1} members a topic, {scenario.co_members} co-members; "
        f"{base.count} catch-ups per mode; CPU in ms per catch-up; x: against the sequential "
        "REST rebuild; box: cores of the machine busy during the batches, any process\n"
    )
    head = "| mode | requests | p50 ms | p95 ms | x p50 | web CPU | x |"
    rule = "|---|---:|---:|---:|---:|---:|---:|"
    if pg:
        head += " PostgreSQL CPU | x |"
        rule += "---:|---:|"
    print(head + " client CPU | bytes | x | box |")
    print(rule + "---:|---:|---:|---:|")
    for label, _ in MODES:
        r = results[label]
        if r.failed:
            print(f"| {label} | {r.failed} |")
            continue
        p50 = r.p50
        row = (
            f"| {label} | {r.requests} | {_ms(p50)} | {_ms(pct(r.seconds, 0.95))} | "
            f"{ratio(p50, base_p50)} | {r.per('web'):.2f} | "
            f"{ratio(r.per('web'), base.per('web'))} |"
        )
        if pg:
            row += f" {r.per('db'):.2f} | {ratio(r.per('db'), base.per('db'))} |"
        print(
            row + f" {r.per('bench'):.2f} | {r.bytes:,} | {ratio(r.bytes, base.bytes)} | "
            f"{r.box:.2f} |"
        )
    total = sum(parts.values())
    print(
        "\n(client CPU: this process, the Socket.IO and HTTP clients decoding the answers)\n"
        "The sync answer, bytes: "
        + ", ".join(f"{k} {v:,} ({100 * v / total:.0f}%)" for k, v in parts.items())
    )


def report_reads(on: ReadSide, off: ReadSide, pg: bool, watchers: int) -> None:
    print(
        f"\n### mark_as_read, {on.count} reads per side, {watchers} watchers joined; CPU in ms "
        "per read; x: on against off\n"
    )
    head = "| receipts | p50 ms | p95 ms | web CPU | Redis CPU |"
    rule = "|---|---:|---:|---:|---:|"
    if pg:
        head += " PostgreSQL CPU |"
        rule += "---:|"
    print(head + " receipts at the watchers | box |")
    print(rule + "---:|---:|")
    for side in (on, off):
        row = (
            f"| {side.label} | {_ms(statistics.median(side.seconds))} | "
            f"{_ms(pct(side.seconds, 0.95))} | {side.per('web'):.2f} | {side.per('redis'):.2f} |"
        )
        if pg:
            row += f" {side.per('db'):.2f} |"
        print(row + f" {side.receipts:,} | {side.box:.2f} |")
    row = (
        f"| on / off | {ratio(statistics.median(on.seconds), statistics.median(off.seconds))} | "
        f"{ratio(pct(on.seconds, 0.95), pct(off.seconds, 0.95))} | "
        f"{ratio(on.per('web'), off.per('web'))} | {ratio(on.per('redis'), off.per('redis'))} |"
    )
    if pg:
        row += f" {ratio(on.per('db'), off.per('db'))} |"
    print(row + " | |")
    print("(box: cores of the machine busy during the batches, any process)")


# -- main ------------------------------------------------------------------------------------------
def catch_up_runs(
    a: Any, sizes: list[int], args: argparse.Namespace
) -> tuple[dict[int, tuple[Scenario, dict[str, ModeResult], dict[str, int]]], str]:
    """Part 1 on stack A, per T: the pool, the online users, the idle reading, the runs."""
    from bench.stack import create_users

    rng = random.Random(18)
    pool = create_users(a.app, args.pool, prefix="pool")
    online = [connect(a.url, u, f"online-{n}") for n, u in enumerate(pool[: args.online])]
    meter = meter_for(a)
    time.sleep(1.0)
    before = meter.read()
    time.sleep(args.idle)
    idle = Meter.spent(before, meter.read())
    idle_note = f"{idle['web'] * 1000:.0f} ms of CPU in {idle['wall']:.1f} s"
    print(f"the web process idle: {idle_note}", flush=True)
    catchups = {}
    try:
        for n_topics in sizes:
            reader = create_users(a.app, 1, prefix=f"reader{n_topics}")[0]
            t0 = time.monotonic()
            scenario = seed_catchup(a.app, pool, reader, n_topics, args, rng)
            seeded = time.monotonic() - t0
            t0 = time.monotonic()
            results, parts = catch_up_part(a, scenario, args)
            catchups[n_topics] = (scenario, results, parts)
            summary = ", ".join(
                f"{label} {_ms(r.p50)} ms" for label, r in results.items() if not r.failed
            )
            print(
                f"{n_topics} topics (seeded in {seeded:.1f} s, measured in "
                f"{time.monotonic() - t0:.1f} s): {summary}",
                flush=True,
            )
    finally:
        for c in online:
            with contextlib.suppress(Exception):
                c.disconnect()
    return catchups, idle_note


def run(args: argparse.Namespace) -> int:
    from bench.stack import beacon_stack

    sizes = [int(x) for x in args.topics.split(",") if x.strip()]
    high = {
        "RATE_LIMIT_SYNC": "1000000/10s",
        "RATE_LIMIT_MARK_AS_READ": "1000000/10s",
        "RATE_LIMIT_SEND_MESSAGE": "1000000/10s",
    }
    extra = dict(kv.split("=", 1) for kv in args.env)
    started = time.monotonic()
    pg = args.backend.startswith("postgres")
    reads = None
    with beacon_stack(args.backend, extra_env={**high, **extra}, keep_logs=args.keep_logs) as a:
        print(f"stack A up in {time.monotonic() - started:.1f} s ({args.backend})", flush=True)
        if args.reads:
            # Part 2 first, while A is as fresh as B (none of part 1's rows in A yet).
            off = {**high, **extra, "READ_RECEIPTS": "false"}
            with beacon_stack(args.backend, extra_env=off, keep_logs=args.keep_logs) as b:
                t0 = time.monotonic()
                reads = receipts_part(a, b, args)
                print(f"mark_as_read measured in {time.monotonic() - t0:.1f} s", flush=True)
                if args.keep_logs:
                    print(f"logs of B: {b.log_dir}")
        catchups, idle_note = catch_up_runs(a, sizes, args) if sizes else ({}, "")
        if args.keep_logs:
            print(f"logs of A: {a.log_dir}")
    print(f"\n## Catching up (sync): {args.backend}, {os.cpu_count()} cores")
    if catchups:
        print(f"{args.online} other users online; the web process idle: {idle_note}")
    for n_topics, (scenario, results, parts) in catchups.items():
        report_catchup(n_topics, scenario, results, parts, pg)
    if reads is not None:
        report_reads(*reads, pg, args.watchers)
    load = os.getloadavg()
    print(
        f"\nwall {time.monotonic() - started:.0f} s; load average at the end: "
        f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="sync against a REST rebuild; receipts' cost")
    parser.add_argument("--backend", choices=("sqlite", "postgres", "postgresql"), default="sqlite")
    parser.add_argument(
        "--topics", default="20,100", help="the reader's topics, per scenario ('': no part 1)"
    )
    parser.add_argument("--members", type=int, default=20, help="members per topic")
    parser.add_argument("--pool", type=int, default=200, help="users the members are drawn from")
    parser.add_argument("--history", type=int, default=60, help="messages per topic before")
    parser.add_argument("--new", type=int, default=5, help="messages per topic after the cursor")
    parser.add_argument("--online", type=int, default=5, help="other users connected")
    parser.add_argument("--repeat", type=int, default=40, help="timed catch-ups per mode")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved batches per mode")
    parser.add_argument("--reads", type=int, default=300, help="mark_as_read per side (0: skip)")
    parser.add_argument("--read-members", type=int, default=50, help="members of the read topic")
    parser.add_argument("--watchers", type=int, default=10, help="of them connected and joined")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="more settings"
    )
    parser.add_argument("--idle", type=float, default=3.0, help="seconds of idle web CPU")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the web in extra batches")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    args = parser.parse_args(argv)
    if args.members - 1 > args.pool or args.watchers >= args.read_members:
        parser.error("--members must be at most --pool + 1, --watchers below --read-members")
    args.rounds = max(1, min(args.rounds, args.repeat, args.reads or args.repeat))

    return run_until_terminated(run, args)


if __name__ == "__main__":
    sys.exit(main())
