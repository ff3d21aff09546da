"""Finding messages whose unread or push work was lost, so beat can enqueue it again.

The web tier commits a message and then enqueues its tasks. Three faults lose those tasks:
the broker fails between the commit and the enqueue, Redis restarts without persistence and
forgets its queues, or Sentinel promotes a replica that had not received the last writes.
Every task leaves a marker when its effect is applied (``unread:<id>`` for the increment,
``fanout:<id>`` once the pushes are planned), so the work that never ran is exactly the recent
messages without a marker. Enqueuing it again is safe: both tasks are
idempotent on those markers.

Single sends leave a marker only when they end (``push:<m>:<s>`` delivered, ``pushfailed:``
given up), so a send lost with Redis's data looks like one still waiting for its retry. When
Redis comes back empty or another primary answers (a key only this module sets holds the
replication ID it last saw), the fan-outs of the recent messages run again in "replan" mode,
skipping the sends that ended; a send that was in fact still alive in a worker is
deduplicated by its marker and lease.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import String, cast, exists, literal, select

from webapp.extensions import db
from webapp.models import Message, ProcessedEvent, utcnow
from webapp.platform import context
from webapp.presence.store import presence
from webapp.redis_client import get_redis

log = logging.getLogger(__name__)

# Only the newest messages are examined (cheap: a backwards walk of the primary key).
SCAN_LIMIT = 10_000
PENDING_KEY = "beacon:reconcile:{kind}:{message_id}"
EPOCH_KEY = "beacon:reconcile:epoch"


@dataclass(frozen=True)
class Missed:
    message_id: int
    topic_id: str
    sender_id: str
    unread: bool  # the unread increment never ran
    fanout: bool  # the push fan-out never ran


def _no_marker(prefix: str, message_id):  # type: ignore[no-untyped-def]
    return ~exists().where(ProcessedEvent.key == literal(prefix) + cast(message_id, String))


def find_missed(*, push_enabled: bool, limit: int = 500) -> list[Missed]:
    """Messages between ``RECONCILE_WINDOW`` and ``RECONCILE_GRACE`` old with no marker."""
    settings = context.settings()
    now = utcnow()
    newest = now - timedelta(seconds=settings.reconcile_grace)
    oldest = now - timedelta(seconds=settings.reconcile_window)
    recent = (
        select(Message.id, Message.topic_id, Message.sender_id, Message.created_at)
        .order_by(Message.id.desc())
        .limit(SCAN_LIMIT)
        .subquery()
    )
    no_unread = _no_marker("unread:", recent.c.id)
    no_fanout = _no_marker("fanout:", recent.c.id)
    missing = no_unread | no_fanout if push_enabled else no_unread
    rows = db.session.execute(
        select(recent.c.id, recent.c.topic_id, recent.c.sender_id, no_unread, no_fanout)
        .where(recent.c.created_at >= oldest, recent.c.created_at <= newest, missing)
        .order_by(recent.c.id)
        .limit(limit)
    ).all()
    db.session.rollback()
    return [
        Missed(mid, str(topic_id), str(sender_id), bool(u), bool(f) and push_enabled)
        for mid, topic_id, sender_id, u, f in rows
    ]


def fanned_out_recently() -> list[int]:
    """Messages in the window whose push fan-out ran (their sends may have been lost)."""
    settings = context.settings()
    oldest = utcnow() - timedelta(seconds=settings.reconcile_window)
    recent = (
        select(Message.id, Message.created_at)
        .order_by(Message.id.desc())
        .limit(SCAN_LIMIT)
        .subquery()
    )
    ids = db.session.execute(
        select(recent.c.id)
        .where(recent.c.created_at >= oldest, ~_no_marker("fanout:", recent.c.id))
        .order_by(recent.c.id)
    ).scalars()
    result = list(ids)
    db.session.rollback()
    return result


def redis_may_have_lost_data() -> bool:
    """True on the first run after the Redis that answers may lack writes it acknowledged:
    it started empty (a restart without persistence), or it is a replica Sentinel promoted
    (replication is asynchronous: the old primary's last writes may not have reached it). The
    sends it was holding may be gone, and markers alone cannot tell which. Told by the
    replication ID, which a restart or a promotion changes; also true on the very first run
    of a deployment, which is harmless."""
    client = get_redis(context.settings().redis_url)
    replid = str(client.info("replication").get("master_replid", ""))
    return client.set(EPOCH_KEY, replid, get=True) != replid


def claim_redispatch(kind: str, message_id: int) -> bool:
    """True once per grace period per message and kind: a re-enqueued task that is still
    waiting in the queue is not enqueued again on every run."""
    settings = context.settings()
    key = PENDING_KEY.format(kind=kind, message_id=message_id)
    ttl = max(1, int(settings.reconcile_grace))
    return bool(get_redis(settings.redis_url).set(key, "1", nx=True, ex=ttl))


def reconcile() -> list[Missed]:
    """Enqueue again the work of every missed message; returns what was found."""
    from webapp.platform import queue

    settings = context.settings()
    if settings.fanout_enabled and redis_may_have_lost_data():
        replanned = fanned_out_recently()
        for message_id in replanned:
            queue.replan_pushes(message_id)
        if replanned:
            log.warning(
                "reconcile: Redis may have lost writes (restarted or failed over); pushes of %d "
                "recent messages planned again "
                "(sends that already ended are skipped)",
                len(replanned),
            )
    missed = find_missed(push_enabled=settings.fanout_enabled)
    store = presence()
    for item in missed:
        exclude: list[str] | None = None
        if item.unread and claim_redispatch("unread", item.message_id):
            # Who looked at the topic when it was sent is lost; who looks now is the best
            # estimate (and a member who has read past the message is never counted).
            exclude = sorted(store.active_users(item.topic_id) | {item.sender_id})
        push = item.fanout and claim_redispatch("fanout", item.message_id)
        if exclude is None and not push:
            continue
        queue.redispatch(item.message_id, exclude, push=push)
        log.warning(
            "reconcile: message %s had lost work, enqueued again (unread=%s push=%s)",
            item.message_id,
            exclude is not None,
            push,
        )
    return missed
