"""System-test fixtures: a real Redis, real PostgreSQL, the real web process and Celery worker.

Tests that take the ``beacon`` fixture run once per database backend (``--backends``, default
``sqlite,postgresql``). Each backend gets its own stack (database, Redis logical database, web
process, worker) for the whole session; tests isolate themselves by creating fresh users and
topics instead of wiping shared state.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.harness.postgres_server import PostgresServer
from tests.harness.processes import ManagedProcess, wait_http_ok, wait_log_contains
from tests.harness.redis_server import RedisServer
from tests.harness.sio_client import RecordingClient
from tests.pushservice.server import PushServiceClient, running_push_service

pytest_plugins = ["tests.reliability"]  # the ``reliability`` fixture, --reliability-report

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
FLASK = [PYTHON, "-m", "flask", "--app", "wsgi"]
CELERY = [PYTHON, "-m", "celery", "-A", "workers"]
JWT_SECRET = "test-secret-" + "x" * 40
BACKENDS = ("sqlite", "postgresql")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--backends",
        default=os.environ.get("BEACON_TEST_BACKENDS", ",".join(BACKENDS)),
        help="comma-separated database backends for system tests (sqlite,postgresql)",
    )


def selected_backends(config: pytest.Config) -> list[str]:
    chosen = [b.strip() for b in config.getoption("--backends").split(",") if b.strip()]
    unknown = set(chosen) - set(BACKENDS)
    if unknown:
        raise pytest.UsageError(f"unknown backend(s): {', '.join(sorted(unknown))}")
    return chosen


# Suites that kill and restart processes, fuzz every route and event, or drive a browser:
# ``-m "not slow"`` runs everything else (the README's fast loop).
SLOW_SUITES = frozenset({"e2e", "faults", "security"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent.name in SLOW_SUITES:
            item.add_marker(pytest.mark.slow)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", selected_backends(metafunc.config), scope="session")


def base_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment of every Beacon process under test (no developer .env leaks in).

    Push is disabled unless ``extra`` carries VAPID keys (see the ``stack`` fixture).
    """
    return {
        "BEACON_ENV_FILE": "",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "JWT_SECRET": JWT_SECRET,
        "JWT_ALGORITHM": "HS256",
        "PRESENCE_HEARTBEAT_INTERVAL": "0.5",
        "PRESENCE_HEARTBEAT_TTL": "3",
        "PRESENCE_SWEEP_INTERVAL": "1",
        "MAX_MESSAGE_LENGTH": "2000",
        "PUSH_MAX_RETRIES": "3",
        "PUSH_RETRY_BASE": "0.2",
        "PUSH_RETRY_MAX": "2",
        "PUSH_REQUEST_TIMEOUT": "5",
        # One push per message, as most tests count them; tests/test_coalescing.py sets it.
        "PUSH_COALESCE_WINDOW": "0",
        # The fuzz tests send 100-150 topic events of one user within seconds and the unread
        # race loops mark_as_read; tests/security/test_limits.py tests the low limits.
        "RATE_LIMIT_JOIN_TOPIC": "10000/10s",
        "RATE_LIMIT_LEAVE_TOPIC": "10000/10s",
        "RATE_LIMIT_MARK_AS_READ": "10000/10s",
        "RATE_LIMIT_MARK_AS_UNREAD": "10000/10s",
        "RATE_LIMIT_SYNC": "10000/10s",
        # A test push waits this long for its outcomes before answering 202.
        "TEST_PUSH_WAIT": "2",
        "LOG_LEVEL": "INFO",
        "DEV_LOGIN": "1",
        **extra,
    }


def run_flask(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """``flask --app wsgi ...`` as a real subprocess (what operators and scripts run)."""
    return run_in_repo(env, *FLASK, *args, check=check)


def run_in_repo(env: dict[str, str], *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    """``cmd`` from the repository root with ``env`` over the caller's; output captured."""
    return subprocess.run(
        list(cmd),
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
    )


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("beacon-run")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def push_service() -> Iterator[PushServiceClient]:
    """A local push service on loopback: verifies VAPID, decrypts, records, fails on demand."""
    with running_push_service() as client:
        yield client


@pytest.fixture(scope="session")
def vapid_keys() -> tuple[str, str]:
    from webapp.delivery.channels.webpush.vapid import generate_vapid_keypair

    return generate_vapid_keypair()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    reason = PostgresServer.unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {reason}")
        pytest.skip(reason)
    with PostgresServer() as server:
        yield server


def make_database_url(
    backend: str, name: str, run_dir: Path, request: pytest.FixtureRequest
) -> str:
    """A fresh, empty database of the given backend."""
    if backend == "sqlite":
        path = run_dir / f"{name}.db"
        path.unlink(missing_ok=True)
        return f"sqlite:///{path}"
    return request.getfixturevalue("postgres_server").create_database(name)


@dataclass
class TestUser:
    id: str
    username: str
    token: str


@dataclass
class TestTopic:
    room_id: str
    topic_id: str

    def ref(self, **extra: Any) -> dict[str, Any]:
        return {"room_id": self.room_id, "topic_id": self.topic_id, **extra}


@dataclass
class Stack:
    """A running Beacon (web + worker) on one backend, plus helpers to drive it."""

    backend: str
    url: str
    env: dict[str, str]
    app: Any
    web: ManagedProcess
    workers: dict[str, ManagedProcess]
    push: PushServiceClient
    clients: list[RecordingClient] = field(default_factory=list)
    #: more processes of the same deployment (second web, beat, ...) started by the test
    extra: dict[str, ManagedProcess] = field(default_factory=dict)
    run_dir: Path | None = None
    name: str = ""  # suffix of the log file names; the backend by default

    def cli(self, *args: str) -> str:
        """Run a ``beacon`` CLI command in-process (the real Click command) and return stdout."""
        result = self.app.test_cli_runner().invoke(args=["beacon", *args])
        if result.exit_code != 0:
            raise AssertionError(f"beacon {' '.join(args)} failed: {result.output}")
        return result.output.strip()

    def user(self, prefix: str = "user", display_name: str | None = None) -> TestUser:
        username = f"{prefix}-{uuid.uuid4().hex[:8]}"
        args = ["create-user", username]
        if display_name:
            args += ["--display-name", display_name]
        user_id = self.cli(*args)
        return TestUser(user_id, username, self.cli("token", username))

    def topic(self, *members: TestUser, channel: str | None = None) -> TestTopic:
        channel = channel or f"chan-{uuid.uuid4().hex[:8]}"
        args = ["create-topic", channel, f"topic-{uuid.uuid4().hex[:6]}"]
        for m in members:
            args += ["--member", m.username]
        room_id, topic_id = self.cli(*args).split()
        return TestTopic(room_id, topic_id)

    def client(
        self, user: TestUser | None, name: str | None = None, **kwargs: Any
    ) -> RecordingClient:
        client = RecordingClient(name=name or (user.username if user else "anon"))
        self.clients.append(client)
        client.connect(self.url, user.token if user else None, **kwargs)
        return client

    def new_client(self, name: str = "client") -> RecordingClient:
        """An unconnected client, closed after the test."""
        client = RecordingClient(name=name)
        self.clients.append(client)
        return client

    def api(
        self, user: TestUser | None, method: str, path: str, **kwargs: Any
    ) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if user is not None:
            headers["Authorization"] = f"Bearer {user.token}"
        return requests.request(method, self.url + path, headers=headers, timeout=10, **kwargs)

    def unread(self, user: TestUser, topic: TestTopic) -> int:
        """The stored count, read straight from the database."""
        from sqlalchemy import select

        from webapp.extensions import db
        from webapp.models import TopicMember

        with self.app.app_context():
            return db.session.execute(
                select(TopicMember.unread_count).where(
                    TopicMember.topic_id == uuid.UUID(topic.topic_id),
                    TopicMember.user_id == uuid.UUID(user.id),
                )
            ).scalar_one()

    def close_clients(self) -> None:
        for client in self.clients:
            client.disconnect()
        self.clients.clear()

    # -- more processes of this deployment (fault tests) ---------------------------------------
    @property
    def label(self) -> str:
        return self.name or self.backend

    @property
    def processes(self) -> dict[str, ManagedProcess]:
        return {"web": self.web, **self.workers, **self.extra}

    def start_web(self, name: str) -> str:
        """Another web process on the same Redis and database; returns its URL."""
        from tests.harness.ports import free_port

        assert self.run_dir is not None
        port = free_port()
        self.extra[name] = start_web(f"{name}-{self.label}", self.env, port, self.run_dir)
        return f"http://127.0.0.1:{port}"

    def start_worker(self, name: str, queues: str, *pool: str) -> ManagedProcess:
        assert self.run_dir is not None
        worker = start_worker(f"{name}-{self.label}", self.env, self.run_dir, queues, *pool)
        self.extra[name] = worker
        return worker

    def start_beat(self, name: str = "beat") -> ManagedProcess:
        assert self.run_dir is not None
        beat = start_beat(f"{name}-{self.label}", self.env, self.run_dir)
        self.extra[name] = beat
        return beat

    def stop(self, *, kill: bool = False) -> None:
        """Close clients, stop every process (``kill``: SIGKILL, when nothing of the run is
        kept), release the database."""
        self.close_clients()
        procs = [*self.extra.values(), *self.workers.values(), self.web]
        if kill:
            for proc in procs:
                proc.kill()
        else:
            # All at once: a gevent worker's warm shutdown takes seconds, one after another
            # they added up in every module's teardown.
            stopping = [threading.Thread(target=proc.stop) for proc in procs]
            for thread in stopping:
                thread.start()
            for thread in stopping:
                thread.join()
        with self.app.app_context():
            from webapp.extensions import db

            db.engine.dispose()


def start_web(name: str, env: dict[str, str], port: int, log_dir: Path) -> ManagedProcess:
    web = ManagedProcess(name, [PYTHON, "wsgi.py"], {**env, "PORT": str(port)}, ROOT, log_dir)
    wait_http_ok(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=web)
    return web


def start_worker(
    name: str, env: dict[str, str], log_dir: Path, queues: str, *pool: str
) -> ManagedProcess:
    """A real ``celery -A workers worker`` for ``queues``; ``pool`` e.g. ``-P gevent -c 50``."""
    worker = ManagedProcess(
        name,
        [
            *CELERY,
            "worker",
            "-Q",
            queues,
            *(pool or ("-c", "2")),
            "--without-mingle",
            "--without-gossip",
            "-n",
            f"{name}-{uuid.uuid4().hex[:6]}@%h",
            "--loglevel",
            "INFO",
        ],
        env,
        ROOT,
        log_dir,
    )
    wait_log_contains(worker, " ready.", timeout=60)
    return worker


def start_beat(name: str, env: dict[str, str], log_dir: Path) -> ManagedProcess:
    """A real ``celery -A workers beat`` (its schedule file in ``log_dir``)."""
    schedule = log_dir / f"{name}-schedule-{uuid.uuid4().hex[:6]}"
    beat = ManagedProcess(
        name,
        [*CELERY, "beat", "--schedule", str(schedule), "--loglevel", "INFO"],
        env,
        ROOT,
        log_dir,
    )
    wait_log_contains(beat, "beat: Starting", timeout=60)
    return beat


DEFAULT_WORKERS: dict[str, tuple[str, ...]] = {
    "unread": ("unread",),
    "push": ("push", "-P", "gevent", "-c", "50"),
}


def stack_env(
    database_url: str,
    redis_url: str,
    port: int,
    push_service: PushServiceClient,
    vapid_keys: tuple[str, str],
    **extra: str,
) -> dict[str, str]:
    """``base_env`` plus Web Push towards the local push service, for a web on ``port``;
    ``extra`` adds to it or overrides it."""
    push_host = push_service.base_url.split("://", 1)[1]
    web_push = {
        "VAPID_PRIVATE_KEY": vapid_keys[0],
        "VAPID_PUBLIC_KEY": vapid_keys[1],
        "VAPID_SUBJECT": "mailto:ops@beacon.test",
        "PUSH_ALLOWED_HOSTS": push_host,
        "APP_BASE_URL": f"http://127.0.0.1:{port}",
    }
    return base_env(database_url, redis_url, **{**web_push, **extra})


def launch_stack(
    backend: str,
    env: dict[str, str],
    port: int,
    run_dir: Path,
    push_service: PushServiceClient,
    *,
    name: str | None = None,
    workers: dict[str, tuple[str, ...]] | None = None,
    migrate: bool = True,
) -> Stack:
    """Migrate the database, start web and workers (``DEFAULT_WORKERS`` unless given, each
    ``{key: (queues, *pool options)}``), and return the ``Stack``; ``Stack.stop()`` ends it.
    Process logs are ``<run_dir>/<key>-<name>.log`` (name defaults to the backend)."""
    name = name or backend
    if migrate:
        run_flask(env, "db", "upgrade")
    web = start_web(f"web-{name}", env, port, run_dir)
    started: dict[str, ManagedProcess] = {}
    try:
        for key, (queues, *pool) in (DEFAULT_WORKERS if workers is None else workers).items():
            started[key] = start_worker(f"{key}-{name}", env, run_dir, queues, *pool)
    except BaseException:
        for proc in [*started.values(), web]:
            proc.stop()
        raise

    from config import load_settings
    from webapp import create_app

    app = create_app(load_settings({**env, "PORT": str(port)}), serve_sockets=False)
    url = f"http://127.0.0.1:{port}"
    return Stack(backend, url, env, app, web, started, push_service, run_dir=run_dir, name=name)


@contextlib.contextmanager
def shared_services_stack(
    request: pytest.FixtureRequest,
    backend: str,
    database: str,
    *,
    name: str | None = None,
    workers: dict[str, tuple[str, ...]] | None = None,
    **extra: str,
) -> Iterator[Stack]:
    """A whole stack on its own database and Redis database, using the session's Redis, push
    service and VAPID keys; ``extra`` adds to its environment, ``workers`` replaces the
    default ones (see ``launch_stack``). Stopped on exit."""
    from tests.harness.ports import free_port

    run_dir = request.getfixturevalue("run_dir")
    push_service = request.getfixturevalue("push_service")
    database_url = make_database_url(backend, database, run_dir, request)
    port = free_port()
    redis_url = request.getfixturevalue("redis_server").new_db_url()
    vapid_keys = request.getfixturevalue("vapid_keys")
    env = stack_env(database_url, redis_url, port, push_service, vapid_keys, **extra)
    stack = launch_stack(backend, env, port, run_dir, push_service, name=name, workers=workers)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def stack(backend: str, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """Web, an ``unread`` worker and a ``push`` worker (gevent pool), as in production."""
    with shared_services_stack(request, backend, f"beacon_{backend}") as stack:
        yield stack


@pytest.fixture
def beacon(stack: Stack) -> Iterator[Stack]:
    """The running stack; clients opened during the test are closed after it."""
    yield stack
    stack.close_clients()
