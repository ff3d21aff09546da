"""The unread task's whole job, in one process: count a message, then announce the counts.

Beacon's ``increment_for_message`` (one query for the message's topic and room, the bulk
``UPDATE ... RETURNING``, then every member's ``unread_update`` published in one Redis
pipeline) against the baseline in the same run: the same increment, then one
``realtime.emit`` per member, python-socketio's own path (a Redis round trip each), which is
what the task did before. Both publish through the write-only emitter a worker uses, to a
private Redis; a subscriber counts the published messages, so both announce everyone.
Medians over the repetitions, alternating.

    .venv/bin/python bench/unread_task.py [--sizes 10,100,1000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import bench_env, create_topics, create_users  # noqa: E402
from tests.conftest import run_flask  # noqa: E402
from tests.harness.redis_server import RedisServer  # noqa: E402


def baseline(message_id: int, exclude: list[str]) -> int:
    """The increment, then one emit per member (python-socketio: one PUBLISH each)."""
    from webapp import realtime
    from webapp.extensions import db
    from webapp.messaging.unread import apply_increment
    from webapp.models import Message
    from webapp.platform import context

    applied, counts = apply_increment(message_id, exclude)
    message = db.session.get(Message, message_id)
    for user_id, count in counts:
        realtime.emit(
            context.settings().redis_url,
            "unread_update",
            {
                "topic_id": str(message.topic_id),
                "room_id": str(message.topic.channel_id),
                "unread_count": count,
            },
            to=realtime.user_room(user_id),
        )
    return len(counts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="unread task: pipelined announce vs per-emit")
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)

    from sqlalchemy import insert

    from config import load_settings
    from webapp import create_app
    from webapp.extensions import db
    from webapp.messaging.unread import increment_for_message
    from webapp.models import Message, utcnow
    from webapp.redis_client import get_redis

    print(f"unread task in one process, median of {args.repeat} messages (ms per message)")
    print(f"{'members':>7} {'beacon':>9} {'baseline':>9} {'ratio':>7}")
    with RedisServer() as redis_server, tempfile.TemporaryDirectory() as tmp:
        env = bench_env(f"sqlite:///{tmp}/beacon.db", redis_server.url)
        run_flask(env, "db", "upgrade")
        app = create_app(load_settings(env), serve_sockets=False)
        listener = get_redis(redis_server.url).pubsub(ignore_subscribe_messages=True)
        listener.subscribe("flask-socketio")
        for size in (int(s) for s in args.sizes.split(",")):
            users = create_users(app, size, prefix=f"task{size}")
            (topic,) = create_topics(app, [list(range(size))], users)
            sender = [users[0].id]
            with app.app_context():
                ids = sorted(
                    db.session.execute(
                        insert(Message).returning(Message.id),
                        [
                            {
                                "topic_id": uuid.UUID(topic.topic_id),
                                "sender_id": uuid.UUID(users[0].id),
                                "body": "m",
                                "created_at": utcnow(),
                            }
                            for _ in range(2 * args.repeat + 2)
                        ],
                    ).scalars()
                )
                db.session.commit()
                increment_for_message(ids[0], sender)  # warm both paths
                baseline(ids[1], sender)
                times: dict[str, list[float]] = {"beacon": [], "baseline": []}
                for r in range(args.repeat):
                    order = [("beacon", ids[2 + 2 * r]), ("baseline", ids[3 + 2 * r])]
                    for method, mid in order if r % 2 == 0 else reversed(order):
                        _drain(listener)
                        start = time.perf_counter()
                        if method == "beacon":
                            counted = increment_for_message(mid, sender)
                        else:
                            counted = baseline(mid, sender)
                        times[method].append(time.perf_counter() - start)
                        assert counted == size - 1, (method, counted)
                        announced = _drain(listener)
                        assert announced == size - 1, (method, announced)  # everyone
                db.session.remove()
            ours, base = statistics.median(times["beacon"]), statistics.median(times["baseline"])
            print(f"{size:>7} {ours * 1e3:>9.2f} {base * 1e3:>9.2f} {base / ours:>6.1f}x")
    return 0


def _drain(listener) -> int:
    """Published messages waiting for the subscriber: read until none came for 0.2 s."""
    seen, idle_since = 0, time.monotonic()
    while time.monotonic() - idle_since < 0.2:
        if listener.get_message(timeout=0.05) is not None:
            seen, idle_since = seen + 1, time.monotonic()
    return seen


if __name__ == "__main__":
    sys.exit(main())
