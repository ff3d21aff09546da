"""Mirror presence transitions into ``users`` and announce them with ``user_status_change``.

Redis decides *when* a user's status (``active``, ``idle``, ``offline``) changes; this module
persists the result and broadcasts it. Transitions of one user race (the last tab closes on
one greenlet or process while a new tab opens on another), so each one, under a short per-user
lock in Redis, reads the fresh status, stores it only if it differs from the stored one
(compare-and-set), and announces exactly the changes it stored, in the order they were stored.
A reconnect that overtakes a disconnect therefore changes nothing and says nothing; a real
offline-then-online is announced as exactly that.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy import select, update

from webapp import realtime
from webapp.extensions import db
from webapp.models import TopicMember, User, isoformat
from webapp.platform import context, events
from webapp.presence.store import LocalConnections, presence

log = logging.getLogger(__name__)


def user_status_payload(user: User) -> dict[str, Any]:
    return {
        "user_id": str(user.id),
        "username": user.username,
        "display_name": user.name,
        "is_online": user.is_online,
        "status": user.presence_status,
        "last_seen_at": isoformat(user.last_seen_at),
    }


# Per-user lock around "read the count, store, announce" (see the module docstring). Under a
# storm a holder can wait seconds for a database or Redis connection; the lock outlives that
# (a holder that died releases by expiry), and a transition never goes ahead unlocked: it
# fails like an outage instead, which the callers already recover from (the connect is refused
# and the heartbeat's rebuild settles the user; a disconnect is settled by that rebuild).
LOCK_PREFIX = "beacon:presence:lock:"
LOCK_TTL_MS = 60_000
LOCK_WAIT = 30.0
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class PresenceLockTimeout(redis.RedisError):
    """Another transition of the same user held the lock for longer than LOCK_WAIT."""


@contextlib.contextmanager
def _transition_lock(user_id: str) -> Iterator[None]:
    client = presence().redis
    key, token = f"{LOCK_PREFIX}{user_id}", uuid.uuid4().hex
    deadline = time.monotonic() + LOCK_WAIT
    while not client.set(key, token, nx=True, px=LOCK_TTL_MS):
        if time.monotonic() >= deadline:
            raise PresenceLockTimeout(f"presence lock of user {user_id} busy for {LOCK_WAIT}s")
        time.sleep(0.005)  # cooperative under gevent
    try:
        yield
    finally:
        client.eval(_RELEASE, 1, key, token)


def apply_transition(user_id: str) -> None:
    """Store the user's current status (from the live connections) and announce it if it
    changed.

    Called after a connect, disconnect or attention change that changed the user's status;
    the fresh status read under the lock decides, so a transition that a newer one overtook
    stores and says nothing. Webhooks hear ``user.online``/``user.offline`` only (not idle).
    """
    uid = uuid.UUID(user_id)
    # End the caller's read transaction (e.g. the connect handler's token lookup) so that its
    # pooled database connection is not held while this waits for the lock: under a connect
    # storm that exhausted the pool and refused handshakes.
    db.session.commit()
    with _transition_lock(user_id):
        status = presence().status(user_id)
        online_now = status != "offline"
        was_online = db.session.execute(
            select(User.is_online).where(User.id == uid, User.presence_status != status)
        ).scalar()
        if was_online is None:
            return  # already stored (and announced) by an earlier transition
        values: dict[str, Any] = {"is_online": online_now, "presence_status": status}
        if not online_now:
            values["last_seen_at"] = datetime.now(UTC)
        row = db.session.execute(
            update(User)
            .where(User.id == uid, User.presence_status != status)
            .values(**values)
            .returning(User.username, User.display_name, User.last_seen_at, User.external_id)
            .execution_options(synchronize_session=False)
        ).first()
        db.session.commit()
        if row is None:
            return
        payload = {
            "user_id": user_id,
            "username": row.username,
            "display_name": row.display_name or row.username,
            "is_online": online_now,
            "status": status,
            "last_seen_at": isoformat(row.last_seen_at),
        }
        settings = context.settings()
        realtime.emit(settings.redis_url, "user_status_change", payload, to=_audience(uid))
        if was_online == online_now:
            return
        events.publish(
            "user.online" if online_now else "user.offline",
            {
                "user_id": user_id,
                "external_id": row.external_id,
                "last_seen_at": payload["last_seen_at"],
            },
        )


def _audience(user_id: uuid.UUID) -> list[str] | None:
    """Who hears a user's status change: everyone (None), or with PRESENCE_EVENTS=topics the
    connections that joined one of the user's topics and the user's own devices."""
    if context.settings().presence_events != "topics":
        return None
    topic_ids = db.session.execute(
        select(TopicMember.topic_id).where(TopicMember.user_id == user_id)
    ).scalars()
    return [realtime.user_room(user_id), *(realtime.topic_room(t) for t in topic_ids)]


def sweep_stale_connections() -> list[str]:
    """End connections of dead web processes and announce the users whose status changed."""
    went_offline = presence().sweep_dead_processes()
    for user_id in went_offline:
        apply_transition(user_id)
    return went_offline


def rebuild_presence(proc_id: str, local: LocalConnections) -> tuple[list[str], list[str]]:
    """Re-register a web process's live connections in Redis and settle affected users.

    Run by the heartbeat when Redis forgot this process (restart, or swept as dead) or when a
    connect/disconnect could not be recorded. Users whose disconnect was not recorded are
    settled too: offline (with ``last_seen_at``) unless they are still connected somewhere.
    """
    pending = local.take_pending()
    try:
        came_online, went_offline = presence().rebuild(proc_id, local.snapshot())
        for user_id in came_online:
            apply_transition(user_id)
        for user_id in set(went_offline) | pending:
            apply_transition(user_id)
    except Exception:
        for user_id in pending:
            local.bookkeeping_failed(user_id)
        local.bookkeeping_failed()
        raise
    return came_online, went_offline
