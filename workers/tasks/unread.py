"""Unread counter tasks (queue ``unread``)."""

from __future__ import annotations

from datetime import timedelta

from webapp.admin import publishing
from webapp.messaging import reconcile, unread
from webapp.models import utcnow
from webapp.platform import context, idempotency
from workers.celery_app import celery, outage_retry


@celery.task(name="beacon.unread.increment", **outage_retry())
def increment_unread(message_id: int, exclude_user_ids: list[str]) -> int:
    """Apply a message's +1 once (idempotent: redelivery is safe), then announce the counts."""
    return unread.increment_for_message(message_id, exclude_user_ids)


@celery.task(name="beacon.unread.reconcile", ignore_result=True)
def reconcile_lost_work() -> int:
    """Beat: enqueue again the unread/push work of recent messages whose tasks were lost.

    No retry on an outage: the next scheduled run does the same work."""
    return len(reconcile.reconcile())


@celery.task(name="beacon.unread.prune_markers", ignore_result=True)
def prune_markers() -> int:
    """Beat (hourly): delete the processed-event markers older than their retention
    (``PROCESSED_EVENTS_DAYS``, never below what a redelivery, a retry or reconciliation can
    still need), and the integration API's idempotency keys older than a day. No retry on an
    outage: the next run deletes the same rows."""
    retention = context.settings().processed_events_retention
    now = utcnow()
    pruned = idempotency.prune(now - timedelta(seconds=retention))
    return pruned + publishing.prune_keys(now - publishing.KEY_RETENTION)
