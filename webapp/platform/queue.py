"""The hand-off from the web tier to the workers: the one Celery app, and tasks sent by name.

The web tier never imports ``workers`` (workers import ``webapp``): it enqueues by task name,
and the task classes are resolved only in worker processes (``task_cls`` is given by name).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError

log = logging.getLogger(__name__)

celery = Celery("beacon", task_cls="workers.celery_app:AppContextTask")
celery.config_from_object("celeryconfig")


def _closed_channel_fails_as_a_lost_connection() -> None:
    """kombu (pinned in requirements.txt; tests/test_kombu_contract.py) closes a Redis channel
    when its connection drops (Redis restarted, a Sentinel failover) and sets the channel's
    connection (or the connection's client) to None, while an ack, a publish or the channel's
    own restore of its unacked messages may still be on its way through it: that call then
    fails with ``AttributeError`` inside ``Channel._connparams``. A worker's consumer
    takes that for an unrecoverable error and stops; a web process would answer a stored
    message with ``internal_error``. Raised as ``redis.ConnectionError`` it is what it is, a
    lost connection: the ack is retried by redelivery, the publish by its caller."""
    from kombu.transport import redis as transport

    original = transport.Channel._connparams
    if getattr(original, "beacon_patched", False):
        return

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        if self.connection is None or self.connection.client is None:
            raise redis.ConnectionError("the broker channel was closed: its connection was lost")
        return original(self, asynchronous)

    _connparams.beacon_patched = True  # type: ignore[attr-defined]
    transport.Channel._connparams = _connparams


_closed_channel_fails_as_a_lost_connection()


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
