"""Unread fan-out: Beacon's one bulk UPDATE against a per-member UPDATE loop, same run, same data.

For each topic size (default 10, 1,000 and 10,000 members) and each database (SQLite file and
a private PostgreSQL cluster), a topic is filled with members and messages, then each repetition
counts one message with Beacon's ``webapp.messaging.unread.apply_increment`` (processed-event
marker + one ``UPDATE ... RETURNING`` + commit) and the next message with the baseline: the
same marker and transaction but one ``UPDATE ... RETURNING`` per member, the loop a naive
implementation writes. Both apply the same rule (not the sender, not past the read marker) and
return the same (user, count) pairs; the run checks that every member ends with exactly one
increment per message. Times are medians over the repetitions, alternating the two methods.

    .venv/bin/python bench/unread_fanout.py [--sizes 10,1000,10000] [--repeat 5]
        [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import create_topics, create_users  # noqa: E402
from tests.conftest import run_flask  # noqa: E402


def per_member_loop(message_id: int, exclude_user_ids: list[str]) -> list[tuple[str, int]]:
    """The baseline: the same effect as ``apply_increment``, one statement per member."""
    from sqlalchemy import or_, select, update

    from webapp.extensions import db
    from webapp.models import Message, TopicMember
    from webapp.platform.idempotency import claim

    message = db.session.get(Message, message_id)
    excluded = {uuid.UUID(u) for u in exclude_user_ids}
    out: list[tuple[str, int]] = []
    if claim(f"unread:{message_id}"):
        members = db.session.execute(
            select(TopicMember.user_id).where(TopicMember.topic_id == message.topic_id)
        ).scalars()
        for user_id in list(members):
            if user_id in excluded:
                continue
            row = db.session.execute(
                update(TopicMember)
                .where(
                    TopicMember.topic_id == message.topic_id,
                    TopicMember.user_id == user_id,
                    or_(
                        TopicMember.last_read_message_id.is_(None),
                        TopicMember.last_read_message_id < message_id,
                    ),
                )
                .values(unread_count=TopicMember.unread_count + 1)
                .returning(TopicMember.user_id, TopicMember.unread_count)
                .execution_options(synchronize_session=False)
            ).first()
            if row is not None:
                out.append((str(row[0]), row[1]))
    db.session.commit()
    return out


@contextlib.contextmanager
def database(backend: str) -> Iterator[str]:
    if backend == "postgresql":
        from tests.harness.postgres_server import PostgresServer

        with PostgresServer() as pg:
            yield pg.create_database("beacon_unread_bench")
    else:
        with tempfile.TemporaryDirectory(prefix="beacon-unread-") as tmp:
            yield f"sqlite:///{tmp}/beacon.db"


def bench_backend(backend: str, sizes: list[int], repeat: int) -> list[tuple]:
    from sqlalchemy import func, insert, select

    from config import load_settings
    from webapp import create_app
    from webapp.extensions import db
    from webapp.messaging.unread import apply_increment
    from webapp.models import Message, TopicMember, utcnow

    rows = []
    with database(backend) as url:
        env = {
            "BEACON_ENV_FILE": "",
            "DATABASE_URL": url,
            "JWT_SECRET": "bench-" + "x" * 40,
            "LOG_LEVEL": "WARNING",
        }
        run_flask(env, "db", "upgrade")
        app = create_app(load_settings(env), serve_sockets=False)
        users = create_users(app, max(sizes), prefix=f"unread-{backend}")
        for size in sizes:
            (topic,) = create_topics(app, [list(range(size))], users)
            sender = users[0].id
            with app.app_context():
                topic_id = uuid.UUID(topic.topic_id)
                result = db.session.execute(
                    insert(Message).returning(Message.id),
                    [
                        {
                            "topic_id": topic_id,
                            "sender_id": uuid.UUID(sender),
                            "body": f"m{i}",
                            "created_at": utcnow(),
                        }
                        for i in range(2 * repeat + 2)
                    ],
                )
                message_ids = sorted(result.scalars())
                db.session.commit()
                # Warm up both paths (statement caches, connection) on one message each.
                apply_increment(message_ids[0], [sender])
                per_member_loop(message_ids[1], [sender])
                bulk_times, loop_times = [], []
                for r in range(repeat):
                    bulk_id, loop_id = message_ids[2 + 2 * r], message_ids[3 + 2 * r]
                    order = [("bulk", bulk_id), ("loop", loop_id)]
                    if r % 2:
                        order.reverse()
                    for method, mid in order:
                        start = time.perf_counter()
                        if method == "bulk":
                            applied, counts = apply_increment(mid, [sender])
                            assert applied
                            bulk_times.append(time.perf_counter() - start)
                        else:
                            counts = per_member_loop(mid, [sender])
                            loop_times.append(time.perf_counter() - start)
                        assert len(counts) == size - 1, (method, len(counts))
                expected = 2 * repeat + 2
                wrong = db.session.execute(
                    select(func.count()).where(
                        TopicMember.topic_id == topic_id,
                        TopicMember.user_id != uuid.UUID(sender),
                        TopicMember.unread_count != expected,
                    )
                ).scalar_one()
                assert wrong == 0, f"{wrong} members do not have {expected} unread"
            bulk, loop = statistics.median(bulk_times), statistics.median(loop_times)
            rows.append((backend, size, bulk, loop, loop / bulk))
            print(
                f"{backend:<10} {size:>7} {bulk * 1e3:>10.2f} {loop * 1e3:>12.2f} "
                f"{loop / bulk:>8.1f}x",
                flush=True,
            )
        with app.app_context():
            db.engine.dispose()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="unread fan-out: bulk UPDATE vs per-member loop")
    parser.add_argument("--sizes", default="10,1000,10000", help="members per topic")
    parser.add_argument("--repeat", type=int, default=5, help="messages per method and size")
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"unread fan-out, median of {args.repeat} messages per method (ms per message)")
    print(f"{'backend':<10} {'members':>7} {'bulk (ms)':>10} {'loop (ms)':>12} {'ratio':>9}")
    for backend in args.backends.split(","):
        if backend == "postgresql":
            from tests.harness.postgres_server import PostgresServer

            reason = PostgresServer.unavailable_reason()
            if reason:
                print(f"postgresql skipped: {reason}")
                continue
        bench_backend(backend.strip(), sizes, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
