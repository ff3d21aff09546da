"""Hand-off from the web tier to the workers: the only place that enqueues Celery tasks."""

from __future__ import annotations

import logging

import redis
from kombu.exceptions import OperationalError

log = logging.getLogger(__name__)


def message_posted(message_id: int, exclude_user_ids: list[str], *, push: bool) -> bool:
    """Enqueue the unread increment and, when Web Push is configured, the push fan-out.

    Called after the message is committed, so a broker failure is logged, not raised: the
    message exists, and ``reconcile`` (beat) enqueues its work later. False when it failed.
    """
    try:
        redispatch(message_id, exclude_user_ids, push=push)
    except (OperationalError, redis.RedisError, OSError) as exc:
        log.warning(
            "could not enqueue the work of message %s (%s); the reconciliation will",
            message_id,
            exc,
        )
        return False
    return True


def redispatch(message_id: int, exclude_user_ids: list[str] | None, *, push: bool) -> None:
    """Enqueue a message's work; also what reconciliation found missing (each task is
    idempotent). ``exclude_user_ids`` None: the increment is not wanted."""
    from workers.tasks.push import fan_out
    from workers.tasks.unread import increment_unread

    if exclude_user_ids is not None:
        increment_unread.apply_async(args=[message_id, exclude_user_ids])
    if push:
        fan_out.apply_async(args=[message_id])


def replan_pushes(message_id: int) -> None:
    """Plan a message's pushes again, skipping the sends that already ended."""
    from workers.tasks.push import fan_out

    fan_out.apply_async(args=[message_id], kwargs={"replan": True})
