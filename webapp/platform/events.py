"""Events for the integration's webhooks: published where things happen, delivered by workers.

``publish`` sits on hot paths (every message, read, presence flip, push batch), so when no
enabled hook subscribes to the event it costs a set lookup: each process caches the event names
that enabled hooks subscribe to for ``SUBSCRIBED_TTL`` seconds. The process that creates,
deletes, enables or disables a hook drops its cache at once; the others notice within the TTL
(meanwhile they skip a new hook's events, or enqueue events that the worker then finds no hook
for). Otherwise ``publish`` enqueues ``beacon.webhooks.dispatch`` by name (the web tier never
imports ``workers``); the worker finds the hooks and delivers to each, all on queue
``webhooks``. The event's ``id`` and ``created_at`` are fixed here, so every retry of every
delivery carries the same ones. ``publish`` never raises for an outage: an event that cannot be
enqueued (broker, database or Redis down) is logged and dropped, and the work that produced it
goes on.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import redis
from kombu.exceptions import OperationalError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from webapp.extensions import db
from webapp.models import Webhook, isoformat, utcnow
from webapp.platform import queue

log = logging.getLogger(__name__)

EVENTS = (
    "message.created",
    "message.read",
    "user.online",
    "user.offline",
    "push.failed",
    "device.removed",
)
SUBSCRIBED_TTL = 2.0  # seconds a process trusts its list of subscribed event names
DISPATCH_TASK = "beacon.webhooks.dispatch"

_subscribed: frozenset[str] = frozenset()
_expires = 0.0  # time.monotonic() after which _subscribed is read again
_read = False  # whether _subscribed was ever read
_lock = threading.Lock()


def publish(event: str, data: dict[str, Any], *, event_id: str | None = None) -> None:
    """Send ``event`` with ``data`` to the hooks that subscribe to it (if any), after the
    caller's commit. ``event_id`` (default: a new UUID) is what receivers de-duplicate by."""
    publish_many(event, [(data, event_id)])


def publish_many(event: str, items: Iterable[tuple[dict[str, Any], str | None]]) -> None:
    """``publish`` for several events of one type (``(data, event_id)`` each) in one task."""
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}")
    if not subscribed(event):
        return
    created_at = isoformat(utcnow())
    envelopes = [
        {"id": event_id or str(uuid.uuid4()), "type": event, "created_at": created_at, "data": data}
        for data, event_id in items
    ]
    if not envelopes:
        return
    try:
        # Flower shows the ids, not the data (a message.created event holds the message text).
        queue.celery.send_task(
            DISPATCH_TASK,
            args=[envelopes],
            argsrepr=repr([[e["id"] for e in envelopes]]),
        )
    except (OperationalError, redis.RedisError, OSError) as exc:
        log.warning("webhook event %s not enqueued (%s); it is dropped", event, exc)


def subscribed(event: str) -> bool:
    """Whether an enabled hook subscribes to ``event`` (as this process last read it); True
    while the list was never read (the worker then finds the hooks, or none)."""
    if time.monotonic() >= _expires:
        _refresh()
    return not _read or event in _subscribed


def invalidate() -> None:
    """Read the hooks again on the next ``publish`` (this process changed one)."""
    global _expires
    _expires = 0.0


def _refresh() -> None:
    """Read the subscribed event names, unless another caller is reading them: never wait for
    that read. A waiter holds its session's database connection while the reader needs one
    more from the pool; enough waiters leave none, and every message stalls until the pool's
    timeout. The others go on with the last list."""
    global _subscribed, _expires, _read
    if not _lock.acquire(blocking=False):
        return
    try:
        if time.monotonic() < _expires:
            return  # read meanwhile
        try:
            # A connection of its own: the caller's session and transaction stay as they are.
            with db.engine.connect() as conn:
                rows = conn.execute(select(Webhook.events).where(Webhook.disabled_at.is_(None)))
                _subscribed = frozenset(name for (events,) in rows for name in events.split())
            _read = True
        except SQLAlchemyError as exc:
            # Keep the last list for another TTL rather than ask a failing database every call.
            log.warning("webhook subscriptions unreadable (%s); keeping the last ones", exc)
        _expires = time.monotonic() + SUBSCRIBED_TTL
    finally:
        _lock.release()
