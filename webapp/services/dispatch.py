"""Hand-off from the web tier to the workers: the only place that enqueues Celery tasks."""

from __future__ import annotations


def message_posted(message_id: int, exclude_user_ids: list[str], *, push: bool) -> None:
    """Enqueue the unread increment and, when Web Push is configured, the push fan-out."""
    from workers.tasks.push import fan_out
    from workers.tasks.unread import increment_unread

    increment_unread.apply_async(args=[message_id, exclude_user_ids])
    if push:
        fan_out.apply_async(args=[message_id])
