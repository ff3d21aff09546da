"""Capacity figures for docs/OPERATIONS.md: memory per connection, and what 1,000 messages cost
Redis and PostgreSQL, through the real processes.

Why: the other benches measure throughput and latency of one path each; sizing a deployment
also needs what they do not print: the web process's resident memory per held connection, and
the load a message puts on the shared services (Redis commands, round trips, bytes and CPU;
PostgreSQL statements, rows and CPU), which decide when Redis or the database needs a bigger
machine before the web or worker tier does.

The stack is the production shape on loopback: a private ``redis-server``, a private
PostgreSQL 15 (``pg_stat_statements`` preloaded: the cluster is restarted once before the
database is made) or SQLite, ``flask db upgrade``, ``python wsgi.py``, an ``unread`` worker
(``-c 4``) and a ``push`` worker (``-P gevent -c 100``), as the Procfile runs them, with Web Push
configured (VAPID keys) towards the counting push service of ``push_pipeline.py`` (TLS, its own
process, answers 201 at once). The environment is ``bench/stack.py``'s (production presence
timing); ``RATE_LIMIT_SEND_MESSAGE`` is raised so that a few senders can post 50/s (the check
still runs, as it does in production), and ``PUSH_COALESCE_WINDOW=0`` (every message pushes:
the worst case; the default 30 s window sends one push per member and topic per window).

1. Memory: ``--connections`` users in topics of 10 connect (websocket, ``bench/load.py``'s
   client processes) and join their topic; once the presence broadcasts have stopped, the web
   process's RSS (``/proc``) and Redis's ``used_memory`` are read again. Per connection:
   (after - before) / N, where "before" follows a warm-up of 50 connections (connected,
   joined, closed), so the figure is what one more connection costs. Then all disconnect and
   the RSS is read once more (what the process keeps).
2. Messages: for each ``--topics`` entry (``S`` members, ``S:push`` with one Web Push device
   for each offline member), ``--watchers`` members connect and join the topic (active: they
   get ``new_message``, no unread increment, no push) and post ``--messages`` messages in turn
   over Socket.IO at ``--rate`` per second (open loop, acks counted); the other S - watchers
   members are offline. Before and after (after: every ack in, every watcher has every
   message of the others, every push arrived, the queues empty and the processes' CPU quiet),
   the bench reads ``INFO`` (``commandstats``: calls per command, a script's own commands
   included; ``total_reads_processed``: requests read; ``total_net_input_bytes`` and
   ``total_net_output_bytes``, Redis's CPU), ``pg_stat_statements`` (calls and rows per
   statement, ``BEGIN``/``COMMIT`` included), and the CPU of the web process, each worker's
   process group and PostgreSQL's backends. The same figures over ``--idle`` seconds with
   nothing sent (heartbeats, the workers' polling) are taken first, and that rate times the
   phase's length is subtracted. Reported per 1,000 messages.
3. Pushes: ``--fanout-messages`` messages, each to its own topic of ``--fanout`` offline
   members with one Web Push device each (one message per topic: no two batches for the same
   devices at once), measured as in 2 and reported per 1,000 pushes. ``S:push`` in
   ``--topics`` is the other shape, a burst into one topic where every message pushes to the
   same devices (bench/README.md: on PostgreSQL it sends pushes twice today).

    .venv/bin/python bench/capacity.py                            # PostgreSQL, ~2.5 minutes
    .venv/bin/python bench/capacity.py --json /tmp/cap-1.json     # and keep the figures
    .venv/bin/python bench/capacity.py --summarize /tmp/cap-*.json   # medians of several runs
    .venv/bin/python bench/capacity.py --backend sqlite           # Redis figures only
    .venv/bin/python bench/capacity.py --connections 2000 --topics 10 --messages 500
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.stack import (  # noqa: E402
    PYTHON,
    BenchStack,
    bench_env,
    children_cpu_seconds,
    cpu_seconds,
    create_topics,
    create_users,
    group_cpu_seconds,
    raise_fd_limit,
    rss_bytes,
    run_until_terminated,
)

QUEUES = ("unread", "push")
# The bench's own Redis calls between two snapshots (queue polls), taken off the figures.
POLLS = {"llen": 0, "hlen": 0}
STATEMENT_KINDS = ("SELECT", "INSERT", "UPDATE", "DELETE", "BEGIN", "COMMIT", "ROLLBACK")


# -- the stack ---------------------------------------------------------------------------------
@contextlib.contextmanager
def capacity_stack(args: argparse.Namespace) -> Iterator[tuple[BenchStack, Any, Any]]:
    """Redis, PostgreSQL (pg_stat_statements) or SQLite, web, unread and push workers, the
    counting push service; yields (stack, PostgresServer or None, push service)."""
    from bench.push_pipeline import CA_VARIABLES, HOST, SUBJECT, CountingPushService
    from config import load_settings
    from tests.conftest import run_flask, start_worker
    from tests.harness.certs import make_certs
    from tests.harness.ports import free_port
    from tests.harness.processes import ManagedProcess, wait_http_ok
    from tests.harness.redis_server import RedisServer
    from webapp import create_app
    from webapp.delivery.channels.webpush.vapid import generate_vapid_keypair

    raise_fd_limit()
    log_dir = Path(tempfile.mkdtemp(prefix="beacon-capacity-"))
    with contextlib.ExitStack() as stack:
        certs = make_certs(log_dir)
        service = CountingPushService(certs)
        stack.callback(service.close)
        redis = stack.enter_context(RedisServer())
        pg = None
        if args.backend == "postgresql":
            import psycopg

            from tests.harness.postgres_server import PostgresServer

            pg = stack.enter_context(PostgresServer())
            with psycopg.connect(pg.dsn(), autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
            pg.stop()
            pg.start()
            database_url = pg.create_database("beacon_capacity")
            with psycopg.connect(pg.dsn("beacon_capacity"), autocommit=True) as conn:
                conn.execute("CREATE EXTENSION pg_stat_statements")
        else:
            database_url = f"sqlite:///{log_dir / 'beacon.db'}"
        vapid = generate_vapid_keypair()
        port = free_port()
        env = bench_env(
            database_url,
            redis.url,
            PORT=str(port),
            RATE_LIMIT_SEND_MESSAGE="1000000/10s",
            VAPID_PRIVATE_KEY=vapid[0],
            VAPID_PUBLIC_KEY=vapid[1],
            VAPID_SUBJECT=SUBJECT,
            PUSH_ALLOWED_HOSTS=f"{HOST}:{service.port}",
            PUSH_COALESCE_WINDOW="0",
            **{name: str(certs["ca"]) for name in CA_VARIABLES},
        )
        run_flask(env, "db", "upgrade")
        web = ManagedProcess("web", [PYTHON, "wsgi.py"], env, REPO_ROOT, log_dir)
        stack.callback(web.stop)
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=web)
        workers = []
        for name, pool in (("unread", ("-c", "4")), ("push", ("-P", "gevent", "-c", "100"))):
            worker = start_worker(name, env, log_dir, name, *pool)
            stack.callback(worker.stop)
            workers.append(worker)
        app = create_app(load_settings(env), serve_sockets=False)
        bench = BenchStack(f"http://127.0.0.1:{port}", env, app, web, workers, redis, log_dir)
        try:
            yield bench, pg, service
        finally:
            with app.app_context():
                from webapp.extensions import db

                db.engine.dispose()
    if args.keep_logs:
        print(f"logs: {log_dir}")
    else:
        import shutil

        shutil.rmtree(log_dir, ignore_errors=True)


# -- what the services say ---------------------------------------------------------------------
def postmaster_pid(pg: Any) -> int:
    return int((pg.data_dir / "postmaster.pid").read_text().split()[0])


def redis_snapshot(client: Any) -> dict[str, Any]:
    info = client.info("all")
    return {
        "commands": {
            name.removeprefix("cmdstat_"): int(v["calls"])
            for name, v in info.items()
            if name.startswith("cmdstat_")
        },
        "reads": int(info["total_reads_processed"]),
        "in": int(info["total_net_input_bytes"]),
        "out": int(info["total_net_output_bytes"]),
        "cpu": float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
        "memory": int(info["used_memory"]),
    }


def pg_snapshot(pg: Any) -> dict[str, tuple[str, int, int]]:
    """pg_stat_statements of the Beacon database: {queryid: (query, calls, rows)}, the bench's
    own queries left out."""
    import psycopg

    with psycopg.connect(pg.dsn("beacon_capacity"), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT queryid::text, query, calls, rows FROM pg_stat_statements "
            "WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ).fetchall()
    return {
        qid: (query, int(calls), int(nrows))
        for qid, query, calls, nrows in rows
        if "pg_stat_statements" not in query and "pg_database" not in query
    }


def statement_kind(query: str) -> str:
    first = query.lstrip("( \n").split(None, 1)[0].upper() if query.strip() else "?"
    if first == "WITH":
        for kind in ("INSERT", "UPDATE", "DELETE"):
            if f" {kind} " in f" {query.upper()} ":
                return kind
        return "SELECT"
    return first if first in STATEMENT_KINDS else "other"


def snapshot(bench: BenchStack, pg: Any) -> dict[str, Any]:
    """Everything the delta is taken of, and when."""
    redis_pid = int(bench.redis_client().info("server")["process_id"])
    snap: dict[str, Any] = {
        "time": time.monotonic(),
        "polls": dict(POLLS),
        "redis": redis_snapshot(bench.redis_client()),
        "cpu": {
            "web": cpu_seconds(bench.web.pid),
            **{w.name: group_cpu_seconds(w.pid) for w in bench.workers},
            "redis": cpu_seconds(redis_pid),
        },
    }
    if pg is not None:
        snap["cpu"]["postgresql"] = children_cpu_seconds(postmaster_pid(pg))
        snap["pg"] = pg_snapshot(pg)
    return snap


def delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """after - before, in plain numbers: seconds, Redis per command and totals, CPU per
    process, PostgreSQL calls and rows per statement kind and per statement."""
    rb, ra = before["redis"], after["redis"]
    polls = {k: after["polls"][k] - before["polls"][k] for k in POLLS}
    commands = {
        name: calls - rb["commands"].get(name, 0) - polls.get(name, 0)
        for name, calls in ra["commands"].items()
        if name != "info" and calls - rb["commands"].get(name, 0) - polls.get(name, 0) > 0
    }
    out: dict[str, Any] = {
        "seconds": after["time"] - before["time"],
        "redis_commands": commands,
        "redis_total": sum(commands.values()),
        # less the snapshot's two INFO calls and the bench's polls (one pipeline each)
        "redis_reads": ra["reads"] - rb["reads"] - 2 - polls["hlen"],
        "redis_in": ra["in"] - rb["in"],
        "redis_out": ra["out"] - rb["out"],
        "redis_cpu": ra["cpu"] - rb["cpu"],
        "cpu": {k: after["cpu"][k] - before["cpu"].get(k, 0.0) for k in after["cpu"]},
    }
    if "pg" in after:
        statements: dict[str, list[Any]] = {}
        kinds = {k: [0, 0] for k in (*STATEMENT_KINDS, "other")}
        for qid, (query, calls, rows) in after["pg"].items():
            _, calls0, rows0 = before["pg"].get(qid, (query, 0, 0))
            if calls > calls0:
                statements[qid] = [query, calls - calls0, rows - rows0]
                kind = kinds[statement_kind(query)]
                kind[0] += calls - calls0
                kind[1] += rows - rows0
        out["pg_kinds"] = kinds
        out["pg_statements"] = statements
        out["pg_total"] = sum(v[0] for v in kinds.values())
    return out


def net_of_idle(d: dict[str, Any], idle: dict[str, Any]) -> dict[str, Any]:
    """``d`` less what the idle stack does in as many seconds (never below zero)."""
    k = d["seconds"] / idle["seconds"]

    def less(value: float, base: float) -> float:
        return max(0.0, value - k * base)

    out = dict(d)
    out["redis_commands"] = {
        name: less(calls, idle["redis_commands"].get(name, 0))
        for name, calls in d["redis_commands"].items()
    }
    for key in ("redis_total", "redis_reads", "redis_in", "redis_out", "redis_cpu"):
        out[key] = less(d[key], idle[key])
    out["cpu"] = {name: less(v, idle["cpu"].get(name, 0.0)) for name, v in d["cpu"].items()}
    if "pg_kinds" in d:
        out["pg_kinds"] = {
            kind: [less(c, idle["pg_kinds"][kind][0]), less(r, idle["pg_kinds"][kind][1])]
            for kind, (c, r) in d["pg_kinds"].items()
        }
        out["pg_total"] = sum(v[0] for v in out["pg_kinds"].values())
    return out


# -- waiting for the work to end ---------------------------------------------------------------
def queues_empty(bench: BenchStack) -> bool:
    client = bench.redis_client()
    pipe = client.pipeline()
    for queue in QUEUES:
        pipe.llen(queue)
    pipe.hlen("unacked")
    POLLS["llen"] += len(QUEUES)
    POLLS["hlen"] += 1
    return not any(pipe.execute())


def wait_settled(bench: BenchStack, *, limit: float = 120.0) -> None:
    """Until the queues are empty and the web process and workers stop using CPU."""
    deadline = time.monotonic() + limit
    procs = [bench.web, *bench.workers]

    def cpu() -> float:
        return cpu_seconds(bench.web.pid) + sum(group_cpu_seconds(w.pid) for w in bench.workers)

    before = cpu()
    empty, used = False, 0.0
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = cpu()
        empty, used = queues_empty(bench), now - before
        if empty and used < 0.02:
            return
        before = now
    raise SystemExit(
        f"the stack did not settle in {limit:.0f}s ({[p.name for p in procs]}: queues empty "
        f"{empty}, {used:.3f} s of CPU in the last 0.5 s; Redis: {queue_lengths(bench)})"
    )


def queue_lengths(bench: BenchStack) -> dict[str, int]:
    client = bench.redis_client()
    return {
        **{q: client.llen(q) for q in QUEUES},
        "unacked": client.hlen("unacked"),
        "unacked_index": client.zcard("unacked_index"),
    }


# -- 1. memory per connection ------------------------------------------------------------------
def measure_memory(bench: BenchStack, n: int, conc: int) -> dict[str, Any]:
    from bench.load import ClientPool, ClientSpec
    from webapp.presence.store import ONLINE

    redis = bench.redis_client()

    def pool_for(users: list[Any]) -> tuple[Any, list[Any]]:
        groups = [list(range(s, min(len(users), s + 10))) for s in range(0, len(users), 10)]
        topics = create_topics(bench.app, groups, users)
        specs = [
            ClientSpec(users[i].id, users[i].token, t.topic_id, t.room_id)
            for t in topics
            for i in t.members
        ]
        return ClientPool(bench.url, specs, min(2, len(specs)), True), specs

    def settle(pool: Any) -> None:
        last, stable = -1, time.monotonic()
        while time.monotonic() - stable < 2.0:
            seen = sum(r["status_events"] for r in pool.call("stats", timeout=60))
            if seen != last:
                last, stable = seen, time.monotonic()
            time.sleep(0.25)

    def settled_offline() -> None:
        deadline = time.monotonic() + 120
        while redis.scard(ONLINE) and time.monotonic() < deadline:
            time.sleep(0.25)
        wait_settled(bench)

    warm, _ = pool_for(create_users(bench.app, 50, prefix="capwarm"))
    try:
        warm.call("connect_all", timeout=120, concurrency=conc)
        warm.call("join_all", timeout=120, concurrency=conc)
        settle(warm)
        warm.call("disconnect_all", timeout=120)
    finally:
        warm.close()
    settled_offline()
    pool, _ = pool_for(create_users(bench.app, n, prefix="capmem"))
    try:
        pool.call("disconnect_all", timeout=60)  # the client processes' imports
        rss0, redis0 = rss_bytes(bench.web.pid), int(redis.info("memory")["used_memory"])
        started = time.monotonic()
        res = pool.call("connect_all", timeout=600, concurrency=conc)
        ramp = time.monotonic() - started
        connected = sum(r["connected"] for r in res)
        pool.call("join_all", timeout=600, concurrency=conc)
        settle(pool)
        online = redis.scard(ONLINE)
        rss1, redis1 = rss_bytes(bench.web.pid), int(redis.info("memory")["used_memory"])
        pool.call("disconnect_all", timeout=600)
    finally:
        pool.close()
    settled_offline()
    rss2 = rss_bytes(bench.web.pid)
    return {
        "connections": connected,
        "online": online,
        "ramp_s": ramp,
        "rss_before": rss0,
        "rss_held": rss1,
        "rss_after_close": rss2,
        "rss_per_conn": (rss1 - rss0) / max(1, connected),
        "redis_per_conn": (redis1 - redis0) / max(1, connected),
    }


# -- 2. what messages cost ---------------------------------------------------------------------
def seed_topics(
    bench: BenchStack, size: int, count: int, watchers: int, push: bool, service: Any
) -> list[tuple[list[Any], Any]]:
    """``count`` topics of ``size`` new users each; with ``push``, every member after the first
    ``watchers`` of each topic gets one Web Push subscription (real keys)."""
    from sqlalchemy import insert

    from bench.push_pipeline import browser_keys
    from webapp.extensions import db
    from webapp.models import PushSubscription, utcnow

    users = create_users(bench.app, size * count, prefix=f"cap{size}")
    groups = [list(range(t * size, (t + 1) * size)) for t in range(count)]
    topics = create_topics(bench.app, groups, users)
    seeded = [
        ([users[i] for i in group], topic) for group, topic in zip(groups, topics, strict=True)
    ]
    if push:
        offline = [u for members, _ in seeded for u in members[watchers:]]
        keys = browser_keys(len(offline))
        rows = [
            {
                "id": uuid.uuid4(),
                "user_id": uuid.UUID(u.id),
                "endpoint": service.endpoint(),
                "p256dh": keys[i][0],
                "auth": keys[i][1],
                "created_at": utcnow(),
                "failure_count": 0,
            }
            for i, u in enumerate(offline)
        ]
        with bench.app.app_context():
            for start in range(0, len(rows), 5000):
                db.session.execute(insert(PushSubscription), rows[start : start + 5000])
            db.session.commit()
    return seeded


def measure_messages(
    bench: BenchStack,
    pg: Any,
    service: Any,
    idle: dict[str, Any],
    *,
    size: int,
    topics: int,
    watchers: int,
    push: bool,
    messages: int,
    rate: float,
    fanout: bool = False,
) -> dict[str, Any]:
    """``messages`` messages over ``topics`` topics of ``size`` members (message k to topic
    k mod topics), posted in turn by each topic's ``watchers`` joined members; the others are
    offline (with one Web Push device each when ``push``)."""
    from tests.harness.sio_client import RecordingClient

    watchers = max(1, min(watchers, size))
    seeded = seed_topics(bench, size, topics, watchers, push, service)
    senders: list[list[Any]] = []  # per topic: (client, user) of its watchers
    clients: list[Any] = []
    try:
        for members, topic in seeded:
            joined = []
            for user in members[:watchers]:
                client = RecordingClient(name=user.username)
                clients.append(client)
                client.connect(bench.url, user.token, transports=["websocket"], timeout=30)
                ack = client.call("join_topic", {"topic_id": topic.topic_id}, timeout=30)
                if not ack.get("ok"):
                    raise SystemExit(f"join_topic refused: {ack}")
                joined.append((client, user))
            senders.append(joined)
        wait_settled(bench)
        service.reset(0)
        before = snapshot(bench, pg)
        lock = threading.Lock()
        acks: dict[str, Any] = {"ok": 0, "failed": {}}
        done = threading.Event()
        sent: dict[tuple[int, int], int] = {}  # (topic, watcher) -> messages it posted

        def on_ack(answer: Any = None) -> None:
            with lock:
                if isinstance(answer, dict) and answer.get("ok"):
                    acks["ok"] += 1
                else:
                    error = answer.get("error") if isinstance(answer, dict) else repr(answer)
                    acks["failed"][error] = acks["failed"].get(error, 0) + 1
                if acks["ok"] + sum(acks["failed"].values()) >= messages:
                    done.set()

        start = time.monotonic()
        for k in range(messages):
            pause = start + k / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            t = k % topics
            w = (k // topics) % watchers
            sent[t, w] = sent.get((t, w), 0) + 1
            client, _ = senders[t][w]
            topic = seeded[t][1]
            body = {
                "room_id": topic.room_id,
                "topic_id": topic.topic_id,
                "message": f"capacity {k}: the build is green, ship it",
            }
            client.sio.emit("send_message", body, callback=on_ack)
        send_s = time.monotonic() - start
        if not done.wait(120):
            raise SystemExit(f"acks missing: {acks}")
        for t, joined in enumerate(senders):
            topic_id = seeded[t][1].topic_id
            in_topic = sum(n for (tt, _), n in sent.items() if tt == t)
            for w, (client, user) in enumerate(joined):
                expected = in_topic - sent.get((t, w), 0)
                deadline = time.monotonic() + 120

                def others(client: Any = client, user: Any = user, topic_id: str = topic_id) -> int:
                    return sum(
                        1
                        for p in client.events("new_message")
                        if p.get("topic_id") == topic_id and p["sender"]["id"] != user.id
                    )

                while others() < expected and time.monotonic() < deadline:
                    time.sleep(0.1)
                if others() < expected:
                    raise SystemExit(f"{user.username} missed new_message events")
        pushes_expected = messages * (size - watchers) if push else 0
        deadline = time.monotonic() + 300
        while service.stats()["count"] < pushes_expected and time.monotonic() < deadline:
            time.sleep(0.2)
        wait_settled(bench, limit=300)
        after = snapshot(bench, pg)
        pushes = service.stats()["count"]
    finally:
        for client in clients:
            client.disconnect()
    d = net_of_idle(delta(before, after), idle)
    d.update(
        topic=size,
        topics=topics,
        watchers=watchers,
        offline=size - watchers,
        push=push,
        messages=messages,
        acked=acks["ok"],
        refused=acks["failed"],
        send_rate=messages / send_s if send_s > 0 else float(messages),
        pushes=pushes,
        pushes_expected=pushes_expected,
        fanout=fanout,
    )
    return d


# -- reporting ---------------------------------------------------------------------------------
def per_k(value: float, messages: int) -> float:
    return value * 1000 / messages


def report_memory(m: dict[str, Any]) -> None:
    mib = 2**20
    print(
        f"\n1. memory: {m['connections']:,} connections held ({m['online']:,} online in Redis), "
        f"ramp {m['ramp_s']:.1f} s\n"
        f"   web RSS {m['rss_before'] / mib:.0f} -> {m['rss_held'] / mib:.0f} MiB held -> "
        f"{m['rss_after_close'] / mib:.0f} MiB after all closed\n"
        f"   per connection: web RSS {m['rss_per_conn'] / 1024:.1f} KiB "
        f"({m['rss_per_conn'] * 1000 / mib:.1f} MiB per 1,000), Redis used_memory "
        f"{m['redis_per_conn']:.0f} bytes",
        flush=True,
    )


def unit(d: dict[str, Any]) -> tuple[str, int]:
    """What a scenario's figures are per: its pushes for the fan-out, otherwise its messages."""
    if d.get("fanout"):
        return "pushes", d["pushes_expected"]
    return "messages", d["messages"]


def report_messages(d: dict[str, Any], top: int) -> None:
    n = d["messages"]
    per, k = unit(d)
    print(
        f"\n2. {n:,} messages, {scenario_label(d)}: {d['send_rate']:.0f} msg/s sent, "
        f"{d['acked']:,} acked"
        + (f", refused {d['refused']}" if d["refused"] else "")
        + (
            f"; pushes {d['pushes']:,} for {d['pushes_expected']:,} expected"
            + (" (DUPLICATES)" if d["pushes"] > d["pushes_expected"] else "")
            if d["push"]
            else ""
        ),
        flush=True,
    )
    cpu = d["cpu"]
    print(
        "   CPU ms per message: "
        + ", ".join(f"{name} {v * 1000 / n:.2f}" for name, v in cpu.items())
        + f"; phase {d['seconds']:.1f} s"
    )
    print(
        f"   Redis per 1,000 {per}: {per_k(d['redis_total'], k):,.0f} commands, "
        f"{per_k(d['redis_reads'], k):,.0f} requests read, "
        f"in {per_k(d['redis_in'], k) / 2**20:.2f} MiB, out {per_k(d['redis_out'], k) / 2**20:.2f} "
        f"MiB, CPU {per_k(d['redis_cpu'], k):.2f} s"
    )
    commands = sorted(d["redis_commands"].items(), key=lambda kv: -kv[1])[:top]
    print("   " + ", ".join(f"{name} {per_k(c, k):,.0f}" for name, c in commands if c >= 0.5))
    if "pg_kinds" in d:
        kinds = {kind: v for kind, v in d["pg_kinds"].items() if v[0] >= 0.5}
        print(
            f"   PostgreSQL per 1,000 {per}: {per_k(d['pg_total'], k):,.0f} statements; "
            + ", ".join(
                f"{kind} {per_k(c, k):,.0f} ({per_k(r, k):,.0f} rows)"
                for kind, (c, r) in kinds.items()
            )
        )
        statements = sorted(d["pg_statements"].values(), key=lambda v: -v[1])[:top]
        for query, calls, rows in statements:
            text = " ".join(query.split())[:110]
            print(f"     {per_k(calls, k):>7,.0f} calls {per_k(rows, k):>8,.0f} rows  {text}")


def scenario_label(d: dict[str, Any]) -> str:
    where = (
        f"topic of {d['topic']}" if d["topics"] == 1 else f"{d['topics']} topics of {d['topic']}"
    )
    devices = "one Web Push device each" if d["push"] else "no device"
    return f"{where} ({d['watchers']} joined, {d['offline']} offline, {devices})"


def scenario_key(d: dict[str, Any]) -> str:
    return f"{d['topics']}x{d['topic']}{':push' if d['push'] else ''}"


def summarize(paths: list[str]) -> int:
    runs = [json.loads(Path(p).read_text()) for p in paths]

    def line(name: str, values: list[float], fmt: str) -> None:
        values = sorted(values)
        print(
            f"  {name}: median {format(statistics.median(values), fmt)} "
            f"(runs: {', '.join(format(v, fmt) for v in values)})"
        )

    print(f"{len(runs)} runs: " + "; ".join(f"{r['backend']}, load {r['load']}" for r in runs))
    mems = [r["memory"] for r in runs if r.get("memory")]
    if mems:
        print("memory")
        line("web RSS KiB per connection", [m["rss_per_conn"] / 1024 for m in mems], ".1f")
        line("web RSS MiB held", [m["rss_held"] / 2**20 for m in mems], ".0f")
        line("web RSS MiB after all closed", [m["rss_after_close"] / 2**20 for m in mems], ".0f")
        line("Redis bytes per connection", [m["redis_per_conn"] for m in mems], ".0f")
    keys = {scenario_key(d) for r in runs for d in r["messages"]}
    for key in sorted(keys):
        ds = [d for r in runs for d in r["messages"] if scenario_key(d) == key]
        n = ds[0]["messages"]
        per, _ = unit(ds[0])
        print(f"{ds[0]['messages']:,} messages, {scenario_label(ds[0])}, per 1,000 {per}")
        pushes = [d["pushes"] for d in ds if d["push"]]
        if pushes:
            print(f"  pushes: {pushes} for {ds[0]['pushes_expected']:,} expected")
        line("Redis commands", [per_k(d["redis_total"], unit(d)[1]) for d in ds], ",.0f")
        line("Redis requests read", [per_k(d["redis_reads"], unit(d)[1]) for d in ds], ",.0f")
        line("Redis CPU s", [per_k(d["redis_cpu"], unit(d)[1]) for d in ds], ".3f")
        line(
            "Redis in+out MiB",
            [per_k(d["redis_in"] + d["redis_out"], unit(d)[1]) / 2**20 for d in ds],
            ".2f",
        )
        names = sorted({c for d in ds for c in d["redis_commands"]})
        per_command = {
            c: statistics.median(per_k(d["redis_commands"].get(c, 0), unit(d)[1]) for d in ds)
            for c in names
        }
        print(
            "  commands (median): "
            + ", ".join(
                f"{c} {v:,.0f}"
                for c, v in sorted(per_command.items(), key=lambda kv: -kv[1])
                if v >= 0.5
            )
        )
        if "pg_total" in ds[0]:
            line("PostgreSQL statements", [per_k(d["pg_total"], unit(d)[1]) for d in ds], ",.0f")
            for kind in (*STATEMENT_KINDS, "other"):
                calls = [per_k(d["pg_kinds"][kind][0], unit(d)[1]) for d in ds]
                rows = [per_k(d["pg_kinds"][kind][1], unit(d)[1]) for d in ds]
                if max(calls) >= 0.5:
                    print(
                        f"  {kind}: {statistics.median(calls):,.0f} statements, "
                        f"{statistics.median(rows):,.0f} rows (median)"
                    )
        for name in ds[0]["cpu"]:
            line(f"{name} CPU ms per message", [d["cpu"][name] * 1000 / n for d in ds], ".2f")
    return 0


# -- main --------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    load_start = os.getloadavg()
    result: dict[str, Any] = {"backend": args.backend, "args": vars(args)}
    with capacity_stack(args) as (bench, pg, service):
        print(
            f"capacity: web + unread (-c 4) + push (-P gevent -c 100), {args.backend}, "
            f"{os.cpu_count()} CPUs, load average {load_start[0]:.2f} {load_start[1]:.2f} "
            f"{load_start[2]:.2f}",
            flush=True,
        )
        if args.connections:
            result["memory"] = measure_memory(bench, args.connections, args.conc)
            report_memory(result["memory"])
        wait_settled(bench)
        idle0 = snapshot(bench, pg)
        time.sleep(args.idle)  # measuring an idle window, not waiting for something
        idle = delta(idle0, snapshot(bench, pg))
        result["idle"] = {k: v for k, v in idle.items() if k != "pg_statements"}
        rate = idle["redis_total"] / idle["seconds"]
        print(
            f"\nidle ({idle['seconds']:.0f} s, nothing sent): {rate:.1f} Redis commands/s ("
            + ", ".join(f"{c} {v}" for c, v in sorted(idle["redis_commands"].items()))
            + ")"
            + (
                f", {idle['pg_total'] / idle['seconds']:.1f} PostgreSQL statements/s"
                if "pg_total" in idle
                else ""
            ),
            flush=True,
        )
        result["messages"] = []
        scenarios = []
        for spec in [s.strip() for s in args.topics.split(",") if s.strip()]:
            size, _, kind = spec.partition(":")
            scenarios.append(
                {
                    "size": int(size),
                    "topics": 1,
                    "watchers": args.watchers,
                    "push": kind == "push",
                    "messages": args.messages,
                    "rate": args.rate,
                }
            )
        if args.fanout:
            # One message per topic (no two batches for the same devices at once).
            scenarios.append(
                {
                    "size": args.fanout + 1,
                    "topics": args.fanout_messages,
                    "watchers": 1,
                    "push": True,
                    "messages": args.fanout_messages,
                    "rate": 2.0,
                    "fanout": True,
                }
            )
        for scenario in scenarios:
            d = measure_messages(bench, pg, service, idle, **scenario)
            report_messages(d, args.top)
            result["messages"].append(d)
    load_end = os.getloadavg()
    result["load"] = f"{load_start[0]:.2f}-{load_end[0]:.2f}"
    print(f"\nload average at the end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"figures: {args.json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="capacity figures: memory, Redis and SQL load")
    parser.add_argument("--backend", default="postgresql", choices=("postgresql", "sqlite"))
    parser.add_argument(
        "--connections", type=int, default=1000, help="connections held (0: skip part 1)"
    )
    parser.add_argument("--conc", type=int, default=50, help="handshakes in flight per process")
    parser.add_argument(
        "--topics",
        default="10,100",
        help="topic sizes for part 2; SIZE:push gives every offline member a Web Push device"
        " (a burst into one topic: every message pushes to the same devices)",
    )
    parser.add_argument("--watchers", type=int, default=3, help="joined members, the senders")
    parser.add_argument(
        "--fanout",
        type=int,
        default=1000,
        help="offline members, one Web Push device each, of each fan-out message (0: none)",
    )
    parser.add_argument(
        "--fanout-messages", type=int, default=2, help="fan-out messages, each to its own topic"
    )
    parser.add_argument("--messages", type=int, default=1000, help="messages per topic")
    parser.add_argument("--rate", type=float, default=50.0, help="messages/s (open loop)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of the idle baseline")
    parser.add_argument("--top", type=int, default=12, help="commands and statements listed")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    parser.add_argument(
        "--summarize", nargs="+", default=None, metavar="JSON", help="medians of earlier runs"
    )
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    if args.summarize:
        return summarize(args.summarize)

    return run_until_terminated(run, args)


if __name__ == "__main__":
    sys.exit(main())
