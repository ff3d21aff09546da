"""The hand-off from the web tier to the workers: the one Celery app, and tasks sent by name.

The web tier never imports ``workers`` (workers import ``webapp``): it enqueues by task name,
and the task classes are resolved only in worker processes (``task_cls`` is given by name).
"""

from __future__ import annotations

import logging

import redis
from celery import Celery
from kombu.exceptions import OperationalError

log = logging.getLogger(__name__)

celery = Celery("beacon", task_cls="workers.celery_app:AppContextTask")
celery.config_from_object("celeryconfig")


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
    if exclude_user_ids is not None:
        celery.send_task("beacon.unread.increment", args=[message_id, exclude_user_ids])
    if push:
        celery.send_task("beacon.push.fan_out", args=[message_id])


def replan_pushes(message_id: int) -> None:
    """Plan a message's pushes again, skipping the sends that already ended."""
    celery.send_task("beacon.push.fan_out", args=[message_id], kwargs={"replan": True})


def topic_read(user_id: str, topic_id: str) -> None:
    """A user's unread total went down: their mobile apps' badges follow (best effort: a
    broker failure is logged; the next push carries the right badge anyway)."""
    try:
        celery.send_task("beacon.push.sync_badge", args=[user_id, topic_id])
    except (OperationalError, redis.RedisError, OSError) as exc:
        log.warning("could not enqueue the badge update of user %s (%s)", user_id, exc)


def test_push(user_id: str, job_id: str) -> None:
    """Enqueue "Send a test notification"; the worker sends and reports (``delivery.probe``)."""
    celery.send_task("beacon.push.test", args=[user_id, job_id])
