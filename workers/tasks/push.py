"""Web Push tasks (queue ``push``; run it with ``-P gevent``: the work is waiting on HTTP)."""

from __future__ import annotations

from typing import Any

from celery import Task

from webapp.services import context, push_delivery, push_history
from webapp.services.push_sender import backoff_delay
from workers.celery_app import celery, outage_retry

DB_RETRY = outage_retry()


@celery.task(name="beacon.push.fan_out", **DB_RETRY)
def fan_out(message_id: int, replan: bool = False) -> int:
    """Plan one send per subscription of each offline member; each is its own task."""
    plan = push_delivery.plan_fanout(message_id, replan=replan)
    _enqueue(plan.jobs)
    for user_id, topic_id, delay in plan.flushes:
        flush_held.apply_async(args=[user_id, topic_id], countdown=delay)
    push_delivery.mark_fanned_out(message_id)
    return len(plan.jobs)


@celery.task(name="beacon.push.flush_held", **DB_RETRY)
def flush_held(user_id: str, topic_id: str) -> int:
    """A coalescing window ended: one push for the messages it held."""
    jobs = push_delivery.plan_flush(user_id, topic_id)
    _enqueue(jobs)
    return len(jobs)


def _enqueue(jobs: list[push_delivery.PushJob]) -> None:
    for job in jobs:
        send_push.apply_async(
            args=[job.subscription_id, job.message_id, job.payload, job.urgency, job.topic],
            kwargs={"summary": True} if job.summary else {},
        )


@celery.task(bind=True, name="beacon.push.send", **DB_RETRY)
def send_push(
    self: Task,
    subscription_id: str,
    message_id: int,
    payload: dict[str, Any],
    urgency: str,
    topic: str,
    summary: bool = False,
) -> str | None:
    job = push_delivery.PushJob(subscription_id, message_id, payload, urgency, topic, summary)
    result = push_delivery.deliver(job)
    if result is None or result.outcome != "retry":
        return result.outcome if result else None
    settings = context.settings()
    attempt = self.request.retries
    if attempt >= settings.push_max_retries:
        push_delivery.record_failure(
            job, f"gave up after {attempt + 1} attempts: {result.reason}", result.status
        )
        return "failed"
    delay = backoff_delay(
        attempt, settings.push_retry_base, settings.push_retry_max, result.retry_after
    )
    raise self.retry(countdown=delay, max_retries=None)


@celery.task(name="beacon.push.prune_failing", **DB_RETRY)
def prune_failing() -> int:
    return push_delivery.prune_failing()


@celery.task(name="beacon.push.prune_history", **DB_RETRY)
def prune_history() -> int:
    return push_history.prune()
