"""What the benches share: a real Beacon stack on loopback, bulk fixtures, process figures.

A stack is the same processes the system tests start (tests/conftest.py): a private
``redis-server``, optionally a private PostgreSQL, ``flask --app wsgi db upgrade``,
``python wsgi.py`` and ``celery -A workers worker -Q unread``. The environment is the tests'
``base_env`` with the production presence intervals, so heartbeats cost what they cost in
production. Users, topics and memberships are inserted in bulk through SQLAlchemy (thousands
of CLI subprocesses would take minutes); tokens are minted with ``webapp.auth.issue_token``.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.harness.ports import free_port  # noqa: E402
from tests.harness.processes import ManagedProcess, wait_http_ok  # noqa: E402
from tests.harness.redis_server import RedisServer  # noqa: E402

PYTHON = sys.executable
JWT_SECRET = "bench-secret-" + "x" * 40
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (children started later inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def bench_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The tests' ``base_env`` with production presence timing and quieter logs."""
    from tests.conftest import base_env

    env = base_env(database_url, redis_url)
    env.update(
        {
            "PRESENCE_HEARTBEAT_INTERVAL": "10",
            "PRESENCE_HEARTBEAT_TTL": "30",
            "PRESENCE_SWEEP_INTERVAL": "15",
            "MAX_MESSAGE_LENGTH": "4000",
            "LOG_LEVEL": "WARNING",
            "DEV_LOGIN": "0",
            # Every bench client comes from 127.0.0.1; production clients come from many
            # addresses. Keep the check (and its cost) but not a per-address ceiling.
            "RATE_LIMIT_CONNECT_IP": "1000000/60s",
        }
    )
    env.update(extra)
    return env


# -- process figures ---------------------------------------------------------------------------
def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """User + system CPU time of a process (and its waited-for children) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def _live_cpu_seconds(field: int, value: int) -> float:
    """CPU time of every live process whose /proc stat ``field`` (after the command name:
    1 the parent, 2 the process group) is ``value``."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[field]) == value:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def group_cpu_seconds(pgid: int) -> float:
    """CPU time of every live process in a process group (a Celery worker and its pool)."""
    return _live_cpu_seconds(2, pgid)


def children_cpu_seconds(ppid: int) -> float:
    """CPU time of the live children of a process (PostgreSQL's backends)."""
    return _live_cpu_seconds(1, ppid)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


# -- fixtures ----------------------------------------------------------------------------------
@dataclass
class BenchUser:
    id: str
    username: str
    token: str


@dataclass
class BenchTopic:
    room_id: str
    topic_id: str
    members: list[int] = field(default_factory=list)  # indexes into the user list


def create_users(app: Any, count: int, prefix: str = "bench") -> list[BenchUser]:
    """``count`` users in one INSERT per 1,000, each with a fresh token."""
    from sqlalchemy import insert

    from webapp.auth import issue_token
    from webapp.extensions import db
    from webapp.models import User, utcnow

    settings = app.extensions["beacon_settings"]
    run = uuid.uuid4().hex[:6]
    users = []
    with app.app_context():
        rows = []
        for i in range(count):
            uid = uuid.uuid4()
            name = f"{prefix}-{run}-{i}"
            rows.append(
                {"id": uid, "username": name, "display_name": f"Bench {i}", "created_at": utcnow()}
            )
            users.append(BenchUser(str(uid), name, issue_token(settings, uid, ttl=6 * 3600)))
        for start in range(0, count, 1000):
            db.session.execute(insert(User), rows[start : start + 1000])
        db.session.commit()
    return users


def create_topics(app: Any, groups: list[list[int]], users: list[BenchUser]) -> list[BenchTopic]:
    """One channel, one topic per group of user indexes, memberships in bulk."""
    from sqlalchemy import insert

    from webapp.extensions import db
    from webapp.models import Channel, Topic, TopicMember, utcnow

    run = uuid.uuid4().hex[:6]
    topics: list[BenchTopic] = []
    with app.app_context():
        channel_id = uuid.uuid4()
        db.session.execute(
            insert(Channel), [{"id": channel_id, "name": f"bench-{run}", "created_at": utcnow()}]
        )
        topic_rows, member_rows = [], []
        for n, group in enumerate(groups):
            topic_id = uuid.uuid4()
            topic_rows.append(
                {"id": topic_id, "channel_id": channel_id, "name": f"t{n}", "created_at": utcnow()}
            )
            for i in group:
                member_rows.append(
                    {
                        "topic_id": topic_id,
                        "user_id": uuid.UUID(users[i].id),
                        "joined_at": utcnow(),
                    }
                )
            topics.append(BenchTopic(str(channel_id), str(topic_id), list(group)))
        for start in range(0, len(topic_rows), 1000):
            db.session.execute(insert(Topic), topic_rows[start : start + 1000])
        for start in range(0, len(member_rows), 5000):
            db.session.execute(insert(TopicMember), member_rows[start : start + 5000])
        db.session.commit()
    return topics


# -- the stack ---------------------------------------------------------------------------------
@dataclass
class BenchStack:
    url: str
    env: dict[str, str]
    app: Any
    web: ManagedProcess | None = None
    workers: list[ManagedProcess] = field(default_factory=list)
    redis: RedisServer | None = None
    log_dir: Path | None = None

    @property
    def web_pid(self) -> int | None:
        return self.web.pid if self.web is not None else None

    def redis_client(self) -> Any:
        from webapp.redis_client import get_redis

        return get_redis(self.env["REDIS_URL"])


@contextlib.contextmanager
def beacon_stack(
    backend: str = "sqlite",
    *,
    worker: bool = True,
    extra_env: dict[str, str] | None = None,
    keep_logs: bool = False,
) -> Iterator[BenchStack]:
    """A private Beacon: Redis, database, ``wsgi.py`` and an ``unread`` worker, torn down after."""
    from config import load_settings
    from tests.conftest import run_flask, start_worker
    from webapp import create_app

    raise_fd_limit()
    log_dir = Path(tempfile.mkdtemp(prefix="beacon-bench-"))
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(RedisServer())
        if backend == "postgresql":
            from tests.harness.postgres_server import PostgresServer

            pg = stack.enter_context(PostgresServer())
            database_url = pg.create_database("beacon_bench")
        else:
            database_url = f"sqlite:///{log_dir / 'beacon.db'}"
        port = free_port()
        env = bench_env(database_url, redis.url, PORT=str(port), **(extra_env or {}))
        run_flask(env, "db", "upgrade")
        web = ManagedProcess("web", [PYTHON, "wsgi.py"], env, REPO_ROOT, log_dir)
        stack.callback(web.stop)
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=web)
        workers = []
        if worker:
            w = start_worker("unread", env, log_dir, "unread", "-c", "2")
            stack.callback(w.stop)
            workers.append(w)
        app = create_app(load_settings(env), serve_sockets=False)
        bench = BenchStack(f"http://127.0.0.1:{port}", env, app, web, workers, redis, log_dir)
        try:
            yield bench
        finally:
            with app.app_context():
                from webapp.extensions import db

                db.engine.dispose()
    if not keep_logs:
        import shutil

        shutil.rmtree(log_dir, ignore_errors=True)


@contextlib.contextmanager
def external_stack(url: str) -> Iterator[BenchStack]:
    """A Beacon someone else runs: settings (database, JWT secret) from the environment/.env."""
    from config import load_settings
    from webapp import create_app

    raise_fd_limit()
    settings = load_settings()
    app = create_app(settings, serve_sockets=False)
    env = {"REDIS_URL": settings.redis_url, "DATABASE_URL": settings.database_url}
    yield BenchStack(url.rstrip("/"), env, app)


def run_until_terminated(run: Callable[[Any], int], args: Any) -> int:
    """``run(args)``, with SIGTERM raising ``SystemExit(143)``: it unwinds the bench's context
    managers, so every process the bench started is stopped."""

    def _terminate(_signum: int, _frame: object) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, _terminate)
    return run(args)
