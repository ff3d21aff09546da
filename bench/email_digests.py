"""Missed-message email digests (issue 17): the beat sweep and the digests it enqueues, N users.

Why: the sweep finds every due user in one pass (``digests.SWEEP_LIMIT``, 10,000) and a digest
is built, sent and booked user by user on the ``email`` worker; how long 10,000 waiting users
take to get their email, and what limits it, shows only through the real processes: Redis,
PostgreSQL (or SQLite), the web process (idle here), ``celery -A workers worker -Q email -P
gevent`` and the tests' SMTP sink (``tests/fakes/smtp.py``: aiosmtpd in its own process,
writing each message to a Maildir). Users, two topics, three messages and each user's three
held rows (``pending_emails``, due a minute ago) are inserted in bulk; everything measured
runs Beacon's own code.

Per N: (a) the sweep alone: the ``beacon.email.sweep`` task's body called in this process
(``due_users()`` against the real database, then its ``send_digests`` tasks published to the
real broker) with no email worker running, ``--repeat`` times (the held rows unscheduled, the
queue purged and, on PostgreSQL, the table vacuumed in between), and ``due_users()`` alone
once; (b) end to end: a worker is started, the sweep is sent as beat sends it, and the run ends
at the last digest the sink stored (its ``X-Sink-Received`` stamp); the sweep's own time in the
worker is read from the worker's log. Baselines in the same run: the smallest N (ratios show
how it scales), and for (b) a plain smtplib loop in this process sending the digests the sink
just stored, pre-rendered, to the same sink over one connection (the floor an SMTP client
reaches) and with a connection per message. ``--count-statements`` counts the SQL statements,
commits and SMTP connections of ``deliver_all`` per digest; ``--profile`` py-spies the worker.

    .venv/bin/python bench/email_digests.py --users 1000,10000
    .venv/bin/python bench/email_digests.py --users 1000,10000 --backend sqlite
    .venv/bin/python bench/email_digests.py --users 200 --repeat 1      # quick look
    .venv/bin/python bench/email_digests.py --users 1000,10000 --sweep-only --repeat 5
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import smtplib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.stack import (  # noqa: E402
    CLK_TCK,
    children_cpu_seconds,
    cpu_seconds,
    group_cpu_seconds,
    run_until_terminated,
)

MESSAGES = (  # (topic index, body): three held messages per user, across two topics
    (0, "Deploy window moved to Thursday 14:00 UTC; the release notes are in the usual place."),
    (0, "Staging is green again after the cache fix, please re-run your checks before noon."),
    (1, "Launch checklist updated: marketing copy is final, the pricing page goes live at 9."),
)
SWEEP_LOG = re.compile(r"beacon\.email\.sweep\[[^\]]+\] succeeded in ([0-9.]+)s: (\d+)")


# -- fixtures ----------------------------------------------------------------------------------
def seed(app: Any, n: int) -> list[uuid.UUID]:
    """``n`` users with an address, members of two topics, each holding the three messages
    (due a minute ago, not scheduled); returns their ids."""
    from sqlalchemy import insert

    from webapp.extensions import db
    from webapp.models import Channel, Message, PendingEmail, Topic, TopicMember, User, utcnow

    run = uuid.uuid4().hex[:6]
    now = utcnow()
    ids = [uuid.uuid4() for _ in range(n)]
    sender = uuid.uuid4()
    channel = uuid.uuid4()
    topics = [uuid.uuid4(), uuid.uuid4()]
    users = [
        {
            "id": uid,
            "username": f"dig-{run}-{i}",
            "display_name": f"Reader {i}",
            "email": f"dig-{run}-{i}@example.test",
            "created_at": now,
        }
        for i, uid in enumerate(ids)
    ]
    users.append({"id": sender, "username": f"dig-{run}-sender", "created_at": now})
    with app.app_context():
        for start in range(0, len(users), 5000):
            db.session.execute(insert(User), users[start : start + 5000])
        db.session.execute(
            insert(Channel), [{"id": channel, "name": f"ops-{run}", "created_at": now}]
        )
        db.session.execute(
            insert(Topic),
            [
                {"id": t, "channel_id": channel, "name": name, "created_at": now}
                for t, name in zip(topics, ("releases", "launch"), strict=True)
            ],
        )
        members = [
            {"topic_id": t, "user_id": uid, "joined_at": now}
            for t in topics
            for uid in [*ids, sender]
        ]
        for start in range(0, len(members), 5000):
            db.session.execute(insert(TopicMember), members[start : start + 5000])
        message_ids = list(
            db.session.execute(
                insert(Message).returning(Message.id),
                [
                    {"topic_id": topics[t], "sender_id": sender, "body": body, "created_at": now}
                    for t, body in MESSAGES
                ],
            ).scalars()
        )
        held = [
            {
                "user_id": uid,
                "message_id": mid,
                "topic_id": topics[t],
                "mentioned": False,
                "due_at": now - timedelta(minutes=1),
            }
            for uid in ids
            for mid, (t, _) in zip(message_ids, MESSAGES, strict=True)
        ]
        for start in range(0, len(held), 5000):
            db.session.execute(insert(PendingEmail), held[start : start + 5000])
        db.session.commit()
    return ids


def unschedule(app: Any) -> None:
    """Every held row back to "not enqueued" (undoes a sweep); on PostgreSQL the table is then
    vacuumed and analyzed, as autovacuum would have done between two real sweeps (else each
    repeat scans the dead rows of the ones before, and the planner sees no statistics)."""
    from sqlalchemy import text, update

    from webapp.extensions import db
    from webapp.models import PendingEmail

    with app.app_context():
        db.session.execute(update(PendingEmail).values(scheduled_at=None))
        db.session.commit()
        if db.engine.dialect.name == "postgresql":
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE pending_emails"))


def drop_held(app: Any) -> None:
    from sqlalchemy import delete

    from webapp.extensions import db
    from webapp.models import PendingEmail

    with app.app_context():
        db.session.execute(delete(PendingEmail))
        db.session.commit()


def purge_email_queue() -> int:
    """Drop the ``send_digests`` tasks waiting in the broker; how many."""
    from workers.celery_app import celery

    with celery.connection_for_write() as conn:
        return int(conn.default_channel.queue_purge("email") or 0)


def sent_count(app: Any, ids: list[uuid.UUID]) -> int:
    from sqlalchemy import func, select

    from webapp.extensions import db
    from webapp.models import EmailDigest

    with app.app_context():
        total = 0
        for start in range(0, len(ids), 1000):
            total += db.session.execute(
                select(func.count())
                .select_from(EmailDigest)
                .where(EmailDigest.user_id.in_(ids[start : start + 1000]))
                .where(EmailDigest.state == "sent")
            ).scalar_one()
        db.session.remove()
        return total


# -- process figures ---------------------------------------------------------------------------
def busy_seconds() -> float:
    """CPU time the whole machine spent busy (any process, ours or not), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def postmaster_pid(database_url: str) -> int | None:
    """The private cluster's postmaster (its command line carries ``-p PORT``)."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if not url.drivername.startswith("postgresql"):
        return None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"postgres") and f"-p {url.port}".encode() in b" ".join(argv):
            return int(entry.name)
    return None


def postgres_cpu(postmaster: int) -> float:
    """The cluster's CPU: the postmaster, its live backends, and the ones it reaped."""
    return cpu_seconds(postmaster, children=True) + children_cpu_seconds(postmaster)


@dataclass
class Meter:
    """CPU seconds of named processes (callables, read when asked), this process and the box."""

    sources: dict[str, Callable[[], float]] = field(default_factory=dict)

    def read(self) -> dict[str, float]:
        out = {}
        for name, source in self.sources.items():
            try:
                out[name] = source()
            except (OSError, RuntimeError):
                out[name] = float("nan")
        out["bench"] = time.process_time()
        out["box"] = busy_seconds()
        return out

    @staticmethod
    def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        return {name: after[name] - before[name] for name in after if name in before}


# -- what the sink stored ----------------------------------------------------------------------
@dataclass
class Stored:
    received_ns: int
    recipient: str
    mail_from: str
    subject: str
    content: bytes  # the message as the client sent it, CRLF line ends

    @classmethod
    def parse(cls, data: bytes) -> Stored:
        mail_from, recipient, received = "", "", 0
        rest = data
        for _ in range(3):  # Return-Path, Delivered-To (one recipient), X-Sink-Received
            line, _, rest = rest.partition(b"\n")
            name, _, value = line.decode().partition(": ")
            if name == "Return-Path":
                mail_from = value.strip("<>")
            elif name == "Delivered-To":
                recipient = value
            elif name == "X-Sink-Received":
                received = int(value)
        head = rest.split(b"\n\n", 1)[0].decode("ascii", "replace")
        found = re.search(r"^Subject: (.*)$", head, re.MULTILINE)
        subject = found.group(1) if found else ""
        return cls(received, recipient, mail_from, subject, rest.replace(b"\n", b"\r\n"))


def stored_count(maildir: Path) -> int:
    try:
        return len(os.listdir(maildir / "new"))
    except FileNotFoundError:
        return 0


def read_stored(maildir: Path) -> list[Stored]:
    folder = maildir / "new"
    return [Stored.parse((folder / name).read_bytes()) for name in os.listdir(folder)]


# -- (a) the sweep alone -----------------------------------------------------------------------
@dataclass
class SweepRun:
    wall: list[float]  # seconds, one per repeat
    cpu: list[float]  # this process's CPU, seconds
    db_cpu: list[float]
    due_users: float  # due_users() alone, seconds
    enqueued: int  # tasks the last sweep published

    @property
    def median(self) -> float:
        return statistics.median(self.wall)


def sweep_alone(app: Any, n: int, repeat: int, meter: Meter) -> SweepRun:
    """The sweep task's body in this process against the real database and broker (no email
    worker running), ``repeat`` times; then ``due_users()`` alone."""
    from webapp.delivery import digests
    from webapp.extensions import db
    from workers.celery_app import flask_app
    from workers.tasks.email import sweep

    walls, cpus, db_cpus, enqueued = [], [], [], 0
    for _ in range(repeat):
        unschedule(app)
        purge_email_queue()
        before = meter.read()
        started = time.perf_counter()
        users = sweep()
        walls.append(time.perf_counter() - started)
        spent = Meter.spent(before, meter.read())
        cpus.append(spent["bench"])
        db_cpus.append(spent.get("postgres", float("nan")))
        if users != n:
            raise SystemExit(f"the sweep found {users} users, not {n}")
        enqueued = purge_email_queue()
    unschedule(app)
    with flask_app().app_context():
        started = time.perf_counter()
        due = digests.due_users()
        alone = time.perf_counter() - started
        db.session.remove()
    if len(due) != n:
        raise SystemExit(f"due_users() found {len(due)} users, not {n}")
    unschedule(app)
    return SweepRun(walls, cpus, db_cpus, alone, enqueued)


# -- (b) end to end ----------------------------------------------------------------------------
@dataclass
class EndToEnd:
    n: int
    stored: int
    distinct: int
    wrong_subject: int
    first: float | None  # trigger -> first stored, seconds
    last: float | None  # trigger -> last stored
    booked: float | None  # trigger -> every digest ``sent`` in the database
    sweep_in_worker: float | None  # the sweep task's own time in the worker (its log)
    connections: int  # SMTP connections the sink saw
    cpu: dict[str, float]
    messages: list[Stored]

    @property
    def rate(self) -> float:
        return self.stored / self.last if self.last else 0.0


def end_to_end(
    app: Any,
    ids: list[uuid.UUID],
    worker: Any,
    sink: Any,
    meter: Meter,
    timeout: float,
) -> EndToEnd:
    """Send the sweep as beat does; wait for the sink to store one digest per user and for the
    worker to book them all."""
    from bench.push_pipeline import wait_quiet
    from workers.celery_app import celery

    n = len(ids)
    wait_quiet([worker], limit=15)
    sink.clear()
    log_from = worker.log_size()
    before = meter.read()
    started = time.time()
    celery.send_task("beacon.email.sweep")
    deadline = time.monotonic() + timeout
    while stored_count(sink.maildir) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    booked = None
    while time.monotonic() < deadline:
        if sent_count(app, ids) >= n:
            booked = time.time() - started
            break
        time.sleep(0.2)
    wait_quiet([worker], limit=30)
    cpu = Meter.spent(before, meter.read())
    messages = read_stored(sink.maildir)
    stamps = sorted(m.received_ns for m in messages)
    found = SWEEP_LOG.search(worker.log_text(since=log_from))
    expected = f"{len(MESSAGES)} new messages in 2 topics"
    return EndToEnd(
        n=n,
        stored=len(messages),
        distinct=len({m.recipient for m in messages}),
        wrong_subject=sum(1 for m in messages if m.subject != expected),
        first=stamps[0] / 1e9 - started if stamps else None,
        last=stamps[-1] / 1e9 - started if stamps else None,
        booked=booked,
        sweep_in_worker=float(found.group(1)) if found else None,
        connections=sink.connections(),
        cpu=cpu,
        messages=messages,
    )


# -- the SMTP client floor ---------------------------------------------------------------------
@dataclass
class Floor:
    label: str
    n: int
    wall: float
    cpu: float  # this process
    sink_cpu: float

    @property
    def rate(self) -> float:
        return self.n / self.wall if self.wall else 0.0


def smtp_floor(sink: Any, messages: list[Stored], meter: Meter, *, per_message: bool) -> Floor:
    """A plain smtplib loop sending the pre-rendered messages to the sink, from this process:
    over one connection, or a new connection per message (what each digest costs now)."""
    sink.clear()
    before = meter.read()
    started = time.perf_counter()
    if per_message:
        for m in messages:
            with smtplib.SMTP(sink.host, sink.port, timeout=30) as smtp:
                smtp.sendmail(m.mail_from, [m.recipient], m.content)
    else:
        with smtplib.SMTP(sink.host, sink.port, timeout=30) as smtp:
            for m in messages:
                smtp.sendmail(m.mail_from, [m.recipient], m.content)
    wall = time.perf_counter() - started
    spent = Meter.spent(before, meter.read())
    if stored_count(sink.maildir) != len(messages):
        raise SystemExit(f"the sink stored {stored_count(sink.maildir)}/{len(messages)}")
    label = "smtplib, a connection per message" if per_message else "smtplib, one connection"
    return Floor(label, len(messages), wall, spent["bench"], spent["sink"])


# -- statements per digest ---------------------------------------------------------------------
def statements_per_digest(app: Any, sink: Any, users: int) -> tuple[float, float, float]:
    """``deliver_all`` for ``users`` fresh users in this process (the code a ``send_digests``
    task runs), counting its SQL statements, commits and SMTP connections per digest."""
    from sqlalchemy import event

    from webapp.delivery import digests
    from webapp.extensions import db
    from workers.celery_app import flask_app

    ids = seed(app, users)
    sink.clear()
    counts = {"statements": 0, "commits": 0}

    def on_execute(*_: Any) -> None:
        counts["statements"] += 1

    def on_commit(*_: Any) -> None:
        counts["commits"] += 1

    with flask_app().app_context():
        engine = db.engine
        event.listen(engine, "before_cursor_execute", on_execute)
        event.listen(engine, "commit", on_commit)
        try:
            later = digests.deliver_all([str(u) for u in ids], final=False)
        finally:
            event.remove(engine, "before_cursor_execute", on_execute)
            event.remove(engine, "commit", on_commit)
            db.session.remove()
    if later.retry or later.busy or stored_count(sink.maildir) != users:
        raise SystemExit(f"in-process deliver_all: {later}, {stored_count(sink.maildir)} stored")
    return (
        counts["statements"] / users,
        counts["commits"] / users,
        sink.connections() / users,
    )


# -- the run -----------------------------------------------------------------------------------
def _x(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value and base else "-"


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:,.2f}"


def _ms_per(seconds: float, n: int) -> str:
    return "-" if seconds != seconds or not n else f"{seconds / n * 1000:.2f}"


def run(args: argparse.Namespace) -> int:
    from bench.load import profiled
    from bench.stack import beacon_stack, raise_fd_limit
    from tests.conftest import start_worker
    from tests.fakes.smtp import running_smtp_sink

    raise_fd_limit()
    sizes = [int(n) for n in args.users.split(",")]
    backend = "postgresql" if args.backend in ("postgres", "postgresql") else "sqlite"
    worker_args = shlex.split(args.worker_args)
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="beacon-email-")))
        sink = stack.enter_context(running_smtp_sink(folder / "smtp"))
        env = {**sink.env(), "SMTP_TIMEOUT": "30", "EMAIL_DELAY": "60"}
        for item in args.env:
            name, _, value = item.partition("=")
            env[name] = value
        bench = stack.enter_context(
            beacon_stack(backend, worker=False, extra_env=env, keep_logs=args.keep_logs)
        )
        assert bench.log_dir is not None
        # The sweep task runs in this process too: its Celery app and Flask app read the
        # stack's settings from the environment when first used.
        os.environ.update(bench.env)
        postmaster = postmaster_pid(bench.env["DATABASE_URL"])
        sources: dict[str, Callable[[], float]] = {
            "sink": lambda: group_cpu_seconds(sink.process.pid)
        }
        if postmaster is not None:
            sources["postgres"] = lambda: postgres_cpu(postmaster)
        if bench.redis is not None and bench.redis.pid is not None:
            redis_pid = bench.redis.pid
            sources["redis"] = lambda: cpu_seconds(redis_pid)
        meter = Meter(sources)
        print(
            f"email digests: {backend}; email worker {' '.join(worker_args)}; SMTP sink "
            f"tests/fakes/smtp.py (aiosmtpd, Maildir, own process); {len(MESSAGES)} held "
            f"messages per user in 2 topics; {os.cpu_count()} CPUs, load "
            f"{os.getloadavg()[0]:.1f}",
            flush=True,
        )
        from workers.celery_app import flask_app

        flask_app()  # this process's app for the sweep, before any timing
        per_digest = None
        if args.count_statements:
            per_digest = statements_per_digest(bench.app, sink, args.count_statements)
            print(
                f"per digest (deliver_all of {args.count_statements} users in this process): "
                f"{per_digest[0]:.1f} SQL statements, {per_digest[1]:.1f} commits, "
                f"{per_digest[2]:.1f} SMTP connections",
                flush=True,
            )

        sweeps: dict[int, SweepRun] = {}
        ends: dict[int, EndToEnd] = {}
        floors: dict[int, list[Floor]] = {}
        for n in sizes:
            ids = seed(bench.app, n)
            sweeps[n] = s = sweep_alone(bench.app, n, args.repeat, meter)
            print(
                f"{n:>6} users, sweep alone (in this process, no worker): "
                f"{', '.join(f'{w * 1000:,.0f}' for w in s.wall)} ms (median "
                f"{s.median * 1000:,.0f}); due_users() alone {s.due_users * 1000:,.0f} ms; "
                f"{s.enqueued} tasks enqueued; CPU: this process "
                f"{statistics.median(s.cpu) * 1000:,.0f} ms, database "
                f"{statistics.median(s.db_cpu) * 1000:,.0f} ms",
                flush=True,
            )
            if args.sweep_only:
                drop_held(bench.app)  # the next size's sweep finds only its own users
                continue
            worker = start_worker("email", bench.env, bench.log_dir, "email", *worker_args)
            try:
                meter.sources["worker"] = lambda w=worker: group_cpu_seconds(w.pid)
                profile = args.profile if n == max(sizes) else None
                with profiled(worker.pid, profile, f"email-worker-{backend}-{n}"):
                    e = end_to_end(bench.app, ids, worker, sink, meter, args.timeout)
            finally:
                worker.stop()
                meter.sources.pop("worker", None)
            ends[n] = e
            cpu = ", ".join(f"{k} {_ms_per(v, e.stored)}" for k, v in e.cpu.items())
            print(
                f"{n:>6} users, end to end: {e.stored}/{n} stored ({e.distinct} recipients, "
                f"{e.wrong_subject} unexpected subjects), first {_s(e.first)} s, last "
                f"{_s(e.last)} s, all booked {_s(e.booked)} s, {e.rate:,.0f} digests/s; sweep "
                f"in the worker {_s(e.sweep_in_worker)} s; {e.connections} SMTP connections; "
                f"CPU ms/digest: {cpu}",
                flush=True,
            )
            floors[n] = []
            for per_message in (False, True):
                f = smtp_floor(sink, e.messages, meter, per_message=per_message)
                floors[n].append(f)
                print(
                    f"{n:>6} messages, {f.label}: {f.rate:,.0f}/s ({f.wall:.2f} s; CPU ms/msg: "
                    f"client {_ms_per(f.cpu, f.n)}, sink {_ms_per(f.sink_cpu, f.n)})",
                    flush=True,
                )
            e.messages = []
            sink.clear()
        report(sizes, sweeps, ends, floors, per_digest)
        if args.keep_logs:
            print(f"logs: {bench.log_dir}")
    return 0


def report(
    sizes: list[int],
    sweeps: dict[int, SweepRun],
    ends: dict[int, EndToEnd],
    floors: dict[int, list[Floor]],
    per_digest: tuple[float, float, float] | None,
) -> None:
    base = sizes[0]
    print(f"\n(a) the sweep alone (median of the repeats); x: against {base:,} users")
    print(f"{'users':>7} {'sweep ms':>9} {'x':>6} {'due_users ms':>12} {'tasks':>6} {'µs/user':>8}")
    for n in sizes:
        s = sweeps[n]
        print(
            f"{n:>7,} {s.median * 1000:>9,.0f} {_x(s.median, sweeps[base].median):>6} "
            f"{s.due_users * 1000:>12,.0f} {s.enqueued:>6} {s.median / n * 1e6:>8,.0f}"
        )
    if not ends:
        return
    print(
        f"\n(b) end to end, sweep sent -> last digest stored; x {base:,}: digests/s against "
        f"{base:,} users; x floor: against smtplib over one connection / a connection per "
        "message, same messages, same sink"
    )
    print(
        f"{'users':>7} {'last s':>7} {'digests/s':>9} {'x ' + format(base, ','):>8} "
        f"{'floor/s':>8} {'x floor':>7} {'conn/s':>7} {'x conn':>6} {'sweep s':>7} "
        f"{'worker':>6} {'cores':>5} {'db':>5} {'sink':>5} {'box':>5}"
    )
    for n in sizes:
        e = ends[n]
        one, each = floors[n]
        wall = e.last or float("nan")
        print(
            f"{n:>7,} {_s(e.last):>7} {e.rate:>9,.0f} {_x(e.rate, ends[base].rate):>8} "
            f"{one.rate:>8,.0f} {_x(e.rate, one.rate):>7} {each.rate:>7,.0f} "
            f"{_x(e.rate, each.rate):>6} {_s(e.sweep_in_worker):>7} "
            f"{_ms_per(e.cpu.get('worker', float('nan')), e.stored):>6} "
            f"{e.cpu.get('worker', float('nan')) / wall:>5.2f} "
            f"{_ms_per(e.cpu.get('postgres', float('nan')), e.stored):>5} "
            f"{_ms_per(e.cpu['sink'], e.stored):>5} {e.cpu['box'] / wall:>5.2f}"
        )
    print(
        "(worker, db, sink: CPU ms per digest; cores: worker CPU / wall time; box: cores of the "
        "machine busy, any process)"
    )
    if per_digest is not None:
        print(
            f"per digest: {per_digest[0]:.1f} SQL statements, {per_digest[1]:.1f} commits, "
            f"{per_digest[2]:.1f} SMTP connections"
        )
    complete = all(
        e.stored == e.n and e.distinct == e.n and not e.wrong_subject and e.booked is not None
        for e in ends.values()
    )
    print(f"every user got exactly one digest, booked sent: {'yes' if complete else 'NO'}")
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


def main(argv: list[str] | None = None) -> int:
    from tests.harness.postgres_server import PostgresServer

    parser = argparse.ArgumentParser(description="missed-message email digests, end to end")
    parser.add_argument("--users", default="1000,10000", help="users with held messages")
    parser.add_argument(
        "--backend",
        choices=("postgres", "postgresql", "sqlite"),
        default="postgresql" if PostgresServer.available() else "sqlite",
    )
    parser.add_argument("--worker-args", default="-P gevent -c 20", help="email worker pool")
    parser.add_argument("--repeat", type=int, default=3, help="timed sweeps per size in (a)")
    parser.add_argument(
        "--count-statements",
        type=int,
        default=20,
        metavar="USERS",
        help="count SQL statements per digest over this many users (0: skip)",
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="more settings"
    )
    parser.add_argument("--sweep-only", action="store_true", help="(a) only: no worker, no SMTP")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per end-to-end run")
    parser.add_argument("--profile", metavar="DIR", help="py-spy the email worker (largest N)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    args = parser.parse_args(argv)

    return run_until_terminated(run, args)


if __name__ == "__main__":
    sys.exit(main())
