"""CPU of the real ``unread`` worker per task: what a deployment pays per message counted.

A private stack (Redis, SQLite, the web process, ``celery -A workers worker -Q unread -c 2``),
one topic of ``--members`` members and ``--tasks`` messages inserted directly; their
``beacon.unread.increment`` tasks are sent as the web tier sends them, and the script waits until
every one is applied (its processed-event marker exists). It reports tasks per second and the
CPU time of the worker's whole process group (main process and pool) per task, after 50
warm-up tasks. ``--profile FILE`` records py-spy (raw stacks, pool processes included).
No baseline inside: compare commits by running it on each (bench/README.md has both).

    .venv/bin/python bench/unread_worker.py [--members 10] [--tasks 600] [--profile out.txt]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.stack import beacon_stack, create_topics, create_users, group_cpu_seconds  # noqa: E402
from tests.harness.waiting import wait_until  # noqa: E402

WARMUP = 50


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="unread worker CPU per task")
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--profile", default=None, help="py-spy raw output file")
    args = parser.parse_args(argv)

    from celery import Celery
    from sqlalchemy import func, insert, select

    from webapp.extensions import db
    from webapp.models import Message, ProcessedEvent, utcnow

    with beacon_stack("sqlite") as stack:
        users = create_users(stack.app, args.members, prefix="worker")
        (topic,) = create_topics(stack.app, [list(range(args.members))], users)
        with stack.app.app_context():
            ids = sorted(
                db.session.execute(
                    insert(Message).returning(Message.id),
                    [
                        {
                            "topic_id": uuid.UUID(topic.topic_id),
                            "sender_id": uuid.UUID(users[0].id),
                            "body": f"m{i}",
                            "created_at": utcnow(),
                        }
                        for i in range(args.tasks + WARMUP)
                    ],
                ).scalars()
            )
            db.session.commit()
        producer = Celery("bench-producer", broker=stack.env["REDIS_URL"])

        def applied() -> int:
            with stack.app.app_context():
                count = db.session.execute(
                    select(func.count())
                    .select_from(ProcessedEvent)
                    .where(ProcessedEvent.key.like("unread:%"))
                ).scalar_one()
                db.session.remove()
                return count

        def send(message_ids: list[int]) -> None:
            for mid in message_ids:
                producer.send_task(
                    "beacon.unread.increment", args=[mid, [users[0].id]], queue="unread"
                )

        send(ids[:WARMUP])
        wait_until(lambda: applied() >= WARMUP, timeout=120, interval=0.2)
        pgid = stack.workers[0].pid
        spy = None
        if args.profile:
            spy = subprocess.Popen(
                [
                    shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")),
                    *("record", "-p", str(pgid), "--subprocesses", "-r", "200", "-f", "raw"),
                    *("-o", args.profile, "--nonblocking"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        cpu0, t0 = group_cpu_seconds(pgid), time.time()
        send(ids[WARMUP:])
        total = args.tasks + WARMUP
        wait_until(lambda: applied() >= total, timeout=600, interval=0.1)
        elapsed, cpu = time.time() - t0, group_cpu_seconds(pgid) - cpu0
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
    print(
        f"members={args.members} tasks={args.tasks}: {args.tasks / elapsed:.0f} tasks/s, "
        f"worker CPU {cpu / args.tasks * 1e3:.2f} ms/task"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
