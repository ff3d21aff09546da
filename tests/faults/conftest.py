"""Fault tests kill, freeze and stop real processes, so each test gets a stack of its own.

A private ``redis-server`` and a private PostgreSQL cluster (shared by the fault tests, emptied
between them) keep the faults away from the session's shared ``stack``. Each test gets a fresh
database copied from one migrated once (a PostgreSQL template, or a copy of a SQLite file),
and its own web, worker and beat processes, stopped afterwards whatever happened.

Timing is shortened so that the bounds are testable in seconds: heartbeat 0.5 s / TTL 3 s /
sweep 1 s (``base_env``), a 6 s visibility timeout (longer than the longest deliberate hold:
retry countdown 2 s + a 3 s push request), reconciliation every second for messages older than
3 s.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    DEFAULT_WORKERS,
    Stack,
    launch_stack,
    run_flask,
    stack_env,
)
from tests.harness.ports import free_port
from tests.harness.postgres_server import PostgresServer
from tests.harness.redis_server import RedisServer
from tests.pushservice.server import PushServiceClient, running_push_service

FAULT_ENV = {
    "BROKER_VISIBILITY_TIMEOUT": "6",
    "PUSH_MAX_RETRIES": "3",
    "PUSH_RETRY_BASE": "0.2",
    "PUSH_RETRY_MAX": "2",
    "PUSH_REQUEST_TIMEOUT": "3",
    "WEBHOOK_TIMEOUT": "3",
    "DB_RETRY_BACKOFF_MAX": "2",
    "RECONCILE_INTERVAL": "1",
    "RECONCILE_GRACE": "3",
    "RECONCILE_WINDOW": "600",
}
_names = itertools.count(1)


@pytest.fixture(scope="package")
def fault_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="package")
def fault_postgres() -> Iterator[PostgresServer | None]:
    """A private cluster (the DB outage test stops it), or None where PostgreSQL is missing."""
    reason = PostgresServer.unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI: {reason}")
        yield None
        return
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="package")
def fault_templates(
    fault_postgres: PostgresServer | None,
    fault_redis: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """Migrated-once databases to copy: {"sqlite": path, "postgresql": template name}."""
    templates: dict[str, str] = {}
    path = tmp_path_factory.mktemp("fault-template") / "template.db"
    run_flask(stack_env_for(f"sqlite:///{path}", fault_redis.url), "db", "upgrade")
    with sqlite3.connect(path) as conn:  # fold the WAL into the file, which is what we copy
        conn.execute("PRAGMA journal_mode=DELETE")
    templates["sqlite"] = str(path)
    if fault_postgres is not None:
        url = fault_postgres.create_database("fault_template")
        run_flask(stack_env_for(url, fault_redis.url), "db", "upgrade")
        templates["postgresql"] = "fault_template"
    return templates


def stack_env_for(database_url: str, redis_url: str) -> dict[str, str]:
    from tests.conftest import base_env

    return base_env(database_url, redis_url)


@pytest.fixture
def make_stack(
    fault_redis: RedisServer,
    fault_postgres: PostgresServer | None,
    fault_templates: dict[str, str],
    push_service: PushServiceClient,
    vapid_keys: tuple[str, str],
    run_dir: Path,
) -> Iterator[Callable[..., Stack]]:
    """``make_stack(backend, workers=..., push=..., **env)`` starts a private stack.

    ``backend`` "postgresql" skips the test where PostgreSQL is missing (outside CI).
    """
    stacks: list[Stack] = []
    if not fault_redis.alive:  # a failed test may have left it stopped
        fault_redis.start()
    fault_redis.flushall()

    def make(
        backend: str = "sqlite",
        *,
        workers: dict[str, tuple[str, ...]] | None = None,
        push: PushServiceClient | None = None,
        **extra_env: str,
    ) -> Stack:
        n = next(_names)
        if backend == "postgresql":
            if fault_postgres is None:
                pytest.skip("PostgreSQL is not available here")
            if not fault_postgres.running:
                fault_postgres.start()
            url = fault_postgres.create_database(
                f"fault_{n}", template=fault_templates["postgresql"]
            )
        else:
            path = run_dir / f"fault_{n}.db"
            shutil.copyfile(fault_templates["sqlite"], path)
            url = f"sqlite:///{path}"
        port = free_port()
        pusher = push or push_service
        env = stack_env(
            url, fault_redis.url, port, pusher, vapid_keys, **{**FAULT_ENV, **extra_env}
        )
        stack = launch_stack(
            backend,
            env,
            port,
            run_dir,
            pusher,
            name=f"fault{n}-{backend}",
            workers=DEFAULT_WORKERS if workers is None else workers,
            migrate=False,
        )
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop(kill=True)  # its database and Redis data are thrown away anyway


def message_ids(stack: Stack, topic: Any) -> list[int]:
    """The ids of the messages stored in ``topic``, in order."""
    import uuid

    from sqlalchemy import select

    from webapp.extensions import db
    from webapp.models import Message

    with stack.app.app_context():
        return list(
            db.session.execute(
                select(Message.id)
                .where(Message.topic_id == uuid.UUID(topic.topic_id))
                .order_by(Message.id)
            ).scalars()
        )


def process_report(stack: Stack) -> dict[str, Any]:
    """Which of the stack's processes are still running (a fault must not make one exit)."""
    return {name: proc.alive for name, proc in stack.processes.items()}


class Gate:
    """Holds every push request while closed. On ``open`` the held requests are processed,
    or, with ``drop_held``, answered 503 unprocessed (a push service that never got to them)."""

    def __init__(self, client: PushServiceClient, *, holding: bool, drop_held: bool) -> None:
        assert client.service is not None
        self._service = client.service
        self._original = self._service.handle_push
        self._cond = threading.Condition()
        self._drop_held = drop_held
        self.holding = holding
        self.held = 0
        self._service.handle_push = self._handle  # type: ignore[method-assign]

    def _handle(self, sub_id: str, headers: Any, body: bytes) -> tuple[int, dict, bytes]:
        with self._cond:
            if self.holding:
                self.held += 1
                self._cond.notify_all()
                self._cond.wait_for(lambda: not self.holding)
                if self._drop_held:
                    return 503, {}, b"dropped: the push service never processed this request"
        return self._original(sub_id, headers, body)

    def close(self) -> None:
        with self._cond:
            self.holding = True

    def open(self) -> None:
        with self._cond:
            self.holding = False
            self._cond.notify_all()


@contextlib.contextmanager
def gated_push_service(
    *, holding: bool, drop_held: bool
) -> Iterator[tuple[PushServiceClient, Gate]]:
    """A local push service behind a ``Gate`` (opened at the end, so nothing stays held)."""
    with running_push_service() as client:
        gate = Gate(client, holding=holding, drop_held=drop_held)
        try:
            yield client, gate
        finally:
            gate.open()
