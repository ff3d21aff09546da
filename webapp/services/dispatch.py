"""Hand-off from the web tier to the workers: the only place that enqueues Celery tasks."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def message_posted(message_id: int, exclude_user_ids: list[str]) -> None:
    """Enqueue the unread increment for a new message."""
    from workers.tasks.unread import increment_unread

    increment_unread.apply_async(args=[message_id, exclude_user_ids])
