"""Unread counter tasks (queue ``unread``)."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError

from webapp.services import unread
from workers.celery_app import celery


@celery.task(
    name="beacon.unread.increment",
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=None,
)
def increment_unread(message_id: int, exclude_user_ids: list[str]) -> int:
    """Apply a message's +1 once (idempotent: redelivery is safe), then announce the counts."""
    return unread.increment_for_message(message_id, exclude_user_ids)
