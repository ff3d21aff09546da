"""Push tasks (queue ``push``; run it with ``-P gevent``: the work is waiting on HTTP).

Thin: each task is one call into ``webapp.delivery``; the retry policy lives here.
"""

from __future__ import annotations

import uuid
from typing import Any

from webapp.delivery import badges, batch, decisions, history, planning, probe
from webapp.platform import context
from workers.celery_app import celery, outage_retry
from workers.retry import backoff_delay

DB_RETRY = outage_retry()


@celery.task(name="beacon.push.fan_out", **DB_RETRY)
def fan_out(message_id: int, replan: bool = False) -> int:
    """Plan a message's pushes: a send task per batch of devices, a flush task per group of
    coalescing windows."""
    plan = planning.plan_fanout(message_id, replan=replan)
    _enqueue(plan.batches)
    for topic_id, delay, user_ids in plan.flushes:
        flush_held.apply_async(args=[topic_id, user_ids], countdown=delay)
    planning.mark_fanned_out(message_id, plan.emails)
    decisions.record(plan.decided)
    return plan.deliveries


@celery.task(name="beacon.push.flush_held", **DB_RETRY)
def flush_held(topic_id: str, user_ids: list[str]) -> int:
    """Coalescing windows ended: one push per user for the messages each held."""
    batches, decided = planning.plan_flush(topic_id, user_ids)
    _enqueue(batches)
    decisions.record(decided)
    return sum(len(b.deliveries) for b in batches)


def _enqueue(batches: list[planning.Batch]) -> None:
    for b in batches:
        send_batch.apply_async(args=[b.channel, b.message_id, [d.wire() for d in b.deliveries]])


@celery.task(name="beacon.push.send_batch", **DB_RETRY)
def send_batch(channel: str, message_id: int, deliveries: list[list[Any]], attempt: int = 0) -> int:
    """Send a batch. The deliveries to retry go on as a batch of their own, after a backoff
    that honours the longest Retry-After among them; those another attempt holds are looked
    at again when its lease ends. Returns how many were left for later."""
    settings = context.settings()
    items = [batch.Delivery.from_wire(message_id, raw) for raw in deliveries]
    final = attempt >= settings.push_max_retries
    later = batch.run(channel, message_id, items, final=final, attempts=attempt + 1)
    if later.retry:
        delay = backoff_delay(
            attempt, settings.push_retry_base, settings.push_retry_max, later.retry_after
        )
        _send_later(channel, message_id, later.retry, attempt + 1, delay)
    if later.busy:
        _send_later(channel, message_id, later.busy, attempt, later.busy_for)
    return len(later.retry) + len(later.busy)


def _send_later(
    channel: str, message_id: int, deliveries: list[batch.Delivery], attempt: int, delay: float
) -> None:
    send_batch.apply_async(
        args=[channel, message_id, [d.wire() for d in deliveries]],
        kwargs={"attempt": attempt},
        countdown=delay,
    )


@celery.task(name="beacon.push.sync_badge", **DB_RETRY)
def sync_badge(user_id: str, topic_id: str, attempt: int = 0) -> bool:
    """The user read a topic: their mobile apps get the new badge, silently. Tried again
    (the push retry rules) while a push service asks to; True when it is done."""
    settings = context.settings()
    retry_after = badges.sync_after_read(uuid.UUID(user_id), uuid.UUID(topic_id))
    if retry_after is None:
        return True
    if attempt < settings.push_max_retries:
        delay = backoff_delay(
            attempt, settings.push_retry_base, settings.push_retry_max, retry_after
        )
        sync_badge.apply_async(
            args=[user_id, topic_id], kwargs={"attempt": attempt + 1}, countdown=delay
        )
    return False


@celery.task(name="beacon.push.prune_failing", **DB_RETRY)
def prune_failing() -> int:
    return batch.prune_failing()


@celery.task(name="beacon.push.prune_history", **DB_RETRY)
def prune_history() -> int:
    return history.prune()


@celery.task(name="beacon.push.test", **DB_RETRY)
def test_push(user_id: str, job_id: str) -> int:
    """A test notification to every device of a user; reported on Redis and the sockets."""
    return len(probe.send(uuid.UUID(user_id), job_id)["deliveries"])
