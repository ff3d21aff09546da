"""Push fan-out planning: what preferences, do-not-disturb and coalescing add to it.

One process, one SQLite file (or a private PostgreSQL) and a private Redis. A topic of N
members, all offline, each with one push subscription. Each repetition plans the fan-out of a
new message (``webapp.delivery.planning.plan_fanout``: members, presence, subscriptions,
rules, coalescing) in three configurations, alternating their order:

- ``plain``: no preference rows, ``PUSH_COALESCE_WINDOW=0`` (what the fan-out did before
  preferences existed, plus two queries that find nothing);
- ``rules``: every member has settings (quiet hours in a time zone, level ``all``), a room
  override and a topic override, so every rule is resolved for every member;
- ``rules+coalescing``: the same with a 30 s window: one Lua call per member, pipelined (the
  first message opens the windows, the rest are held: a busy topic).

Nothing is enqueued (the bench calls the planner, not the task). Times are medians; the last
two columns are the coalescing script's own time inside Redis (``INFO commandstats``).

    .venv/bin/python bench/push_fanout.py [--sizes 10,1000,5000] [--repeat 7]
        [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import bench_env, create_topics, create_users  # noqa: E402
from bench.unread_fanout import database  # noqa: E402
from tests.conftest import run_flask  # noqa: E402
from tests.harness.redis_server import RedisServer  # noqa: E402

MODES = ("plain", "rules", "rules+coalescing")


@contextlib.contextmanager
def app_for(backend: str) -> Iterator[object]:
    from config import load_settings
    from webapp import create_app
    from webapp.extensions import db

    with RedisServer() as redis_server, database(backend) as url:
        env = bench_env(url, redis_server.url, PUSH_COALESCE_WINDOW="0")
        env.update(
            VAPID_PRIVATE_KEY="unused-by-planning",
            VAPID_PUBLIC_KEY="unused-by-planning",
        )
        run_flask(env, "db", "upgrade")
        app = create_app(load_settings(env), serve_sockets=False)
        try:
            yield app
        finally:
            with app.app_context():
                db.engine.dispose()


def seed(app, size: int):
    """A topic of ``size`` members, each with one subscription; returns (topic, sender id)."""
    from sqlalchemy import insert

    from webapp.extensions import db
    from webapp.models import PushSubscription, utcnow

    users = create_users(app, size, prefix=f"fanout{size}")
    (topic,) = create_topics(app, [list(range(size))], users)
    with app.app_context():
        db.session.execute(
            insert(PushSubscription),
            [
                {
                    "id": uuid.uuid4(),
                    "user_id": uuid.UUID(u.id),
                    "endpoint": f"https://push.example/{u.id}",
                    "p256dh": "p" * 87,
                    "auth": "a" * 22,
                    "created_at": utcnow(),
                    "failure_count": 0,
                }
                for u in users
            ],
        )
        db.session.commit()
    return topic, users


def add_rules(app, topic, users) -> None:
    from sqlalchemy import insert

    from webapp.extensions import db
    from webapp.models import NotificationOverride, NotificationSettings, utcnow

    now = utcnow()
    with app.app_context():
        db.session.execute(
            insert(NotificationSettings),
            [
                {
                    "user_id": uuid.UUID(u.id),
                    "level": "all",
                    "quiet_start": 2 * 60,  # 02:00-02:01 local: resolved, almost never active
                    "quiet_end": 2 * 60 + 1,
                    "time_zone": "America/New_York",
                    "dnd_allow_mentions": False,
                    "updated_at": now,
                }
                for u in users
            ],
        )
        scopes = [
            {"channel_id": uuid.UUID(topic.room_id)},
            {"topic_id": uuid.UUID(topic.topic_id)},
        ]
        for scope in scopes:
            db.session.execute(
                insert(NotificationOverride),
                [
                    {"user_id": uuid.UUID(u.id), "level": "all", "updated_at": now, **scope}
                    for u in users
                ],
            )
        db.session.commit()


def analyze(app) -> None:
    """Fresh planner statistics on PostgreSQL, as autovacuum keeps them in production (tables
    filled in bulk a moment ago get plans for empty tables: 4x slower for the rules query)."""
    from sqlalchemy import text

    from webapp.extensions import db

    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            db.session.execute(text("ANALYZE"))
            db.session.commit()


def new_message(app, topic, sender) -> int:
    from webapp.extensions import db
    from webapp.models import Message

    with app.app_context():
        message = Message(
            topic_id=uuid.UUID(topic.topic_id), sender_id=uuid.UUID(sender.id), body="hi"
        )
        db.session.add(message)
        db.session.commit()
        return message.id


def plan(app, message_id: int, window: float) -> tuple[float, int, int]:
    from webapp.delivery import planning
    from webapp.extensions import db

    settings = app.extensions["beacon_settings"]
    app.extensions["beacon_settings"] = dataclasses.replace(settings, push_coalesce_window=window)
    try:
        with app.app_context():
            start = time.perf_counter()
            result = planning.plan_fanout(message_id)
            elapsed = time.perf_counter() - start
            db.session.remove()
    finally:
        app.extensions["beacon_settings"] = settings
    return elapsed, result.deliveries, sum(len(users) for _, _, users in result.flushes)


def bench_size(app, size: int, repeat: int) -> dict[str, float]:
    """Two topics of ``size`` members: one without rules, one with (same users' shape); the
    medians, and the coalescing script's time inside Redis (``INFO commandstats``)."""
    from webapp.redis_client import get_redis

    plain_topic, plain_users = seed(app, size)
    rules_topic, rules_users = seed(app, size)
    add_rules(app, rules_topic, rules_users)
    analyze(app)
    setups = {
        "plain": (plain_topic, plain_users[0], 0.0),
        "rules": (rules_topic, rules_users[0], 0.0),
        "rules+coalescing": (rules_topic, rules_users[0], 30.0),
    }
    for topic, sender, window in setups.values():  # warm up caches and connections
        plan(app, new_message(app, topic, sender), window)
    redis_client = get_redis(app.extensions["beacon_settings"].redis_url)
    redis_client.config_resetstat()
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for r in range(repeat):
        order = list(MODES) if r % 2 == 0 else list(reversed(MODES))
        for mode in order:
            topic, sender, window = setups[mode]
            elapsed, jobs, _ = plan(app, new_message(app, topic, sender), window)
            if mode != "rules+coalescing":
                assert jobs == size - 1, (mode, jobs)
            times[mode].append(elapsed)
    medians = {mode: statistics.median(t) for mode, t in times.items()}
    # Time spent inside Redis running the coalescing script (only that mode runs it).
    lua = redis_client.info("commandstats").get("cmdstat_evalsha", {})
    medians["lua_us_per_member"] = lua.get("usec", 0) / max(1, repeat * (size - 1))
    medians["lua_ms_per_call"] = lua.get("usec_per_call", 0) / 1000
    return medians


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="push fan-out planning with preferences")
    parser.add_argument("--sizes", default="10,1000,5000", help="members per topic")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    print(f"push fan-out planning, all members offline, median of {args.repeat} (ms per message)")
    print(
        f"{'backend':<10} {'members':>7} {'plain':>9} {'rules':>9} {'+coalesce':>10} "
        f"{'rules/plain':>12} {'+coal/plain':>12} {'Lua µs/member':>14} {'ms/call':>8}"
    )
    for backend in args.backends.split(","):
        backend = backend.strip()
        if backend == "postgresql":
            from tests.harness.postgres_server import PostgresServer

            reason = PostgresServer.unavailable_reason()
            if reason:
                print(f"postgresql skipped: {reason}")
                continue
        with app_for(backend) as app:
            for size in (int(s) for s in args.sizes.split(",")):
                m = bench_size(app, size, args.repeat)
                plain, rules, coal = m["plain"], m["rules"], m["rules+coalescing"]
                print(
                    f"{backend:<10} {size:>7} {plain * 1e3:>9.2f} {rules * 1e3:>9.2f} "
                    f"{coal * 1e3:>10.2f} {rules / plain:>11.2f}x {coal / plain:>11.2f}x "
                    f"{m['lua_us_per_member']:>14.1f} {m['lua_ms_per_call']:>8.2f}",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
