"""Missed-message email tasks (queue ``email``; run it with ``-P gevent``: the work is
waiting on SMTP). Thin: each task is one call into ``webapp.delivery.digests``; the retry
policy (the push pipeline's: PUSH_MAX_RETRIES, PUSH_RETRY_BASE, PUSH_RETRY_MAX) lives here."""

from __future__ import annotations

from webapp.delivery import digests
from webapp.platform import context
from workers.celery_app import celery, outage_retry
from workers.retry import backoff_delay

DB_RETRY = outage_retry()
# Users per send task: a task sends their digests one after the other on one worker slot.
USERS_PER_TASK = 20


@celery.task(name="beacon.email.sweep", **DB_RETRY)
def sweep() -> int:
    """Beat, every EMAIL_SWEEP_INTERVAL: enqueue the digests that are due; how many users."""
    if not context.settings().email_enabled:
        return 0
    users = digests.due_users()
    for start in range(0, len(users), USERS_PER_TASK):
        send_digests.apply_async(args=[users[start : start + USERS_PER_TASK]])
    return len(users)


@celery.task(name="beacon.email.send_digests", **DB_RETRY)
def send_digests(user_ids: list[str], attempt: int = 0) -> int:
    """Send these users' digests; the ones to try again go on as a task of their own.
    Returns how many were left for later."""
    settings = context.settings()
    later = digests.deliver_all(user_ids, final=attempt >= settings.push_max_retries)
    if later.retry:
        delay = backoff_delay(
            attempt, settings.push_retry_base, settings.push_retry_max, later.retry_after
        )
        send_digests.apply_async(
            args=[later.retry], kwargs={"attempt": attempt + 1}, countdown=delay
        )
    if later.busy:
        send_digests.apply_async(
            args=[later.busy], kwargs={"attempt": attempt}, countdown=later.busy_for
        )
    return len(later.retry) + len(later.busy)


@celery.task(name="beacon.email.prune", **DB_RETRY)
def prune() -> int:
    """Beat, hourly: forget digests older than PUSH_HISTORY_DAYS."""
    return digests.prune()
