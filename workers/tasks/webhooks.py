"""Webhook tasks (queue ``webhooks``; run it with ``-P gevent``: the work is waiting on HTTP).

Thin: each task is one call into ``webapp.admin.webhooks``; the retry policy lives here, the
same as the pushes' (``PUSH_MAX_RETRIES``, ``PUSH_RETRY_BASE``, ``PUSH_RETRY_MAX``, a
receiver's ``Retry-After`` as a floor). Retries wait in the broker with a countdown, not in a
pool slot. Task arguments hold event data (a ``message.created`` holds the message text), so
the tasks are sent with an ``argsrepr`` of ids only: that is what Flower and the logs show
(except for a task Celery itself retries during a database or Redis outage).
"""

from __future__ import annotations

import logging
from typing import Any

from webapp.admin import webhooks
from webapp.platform import context
from workers.celery_app import celery, outage_retry
from workers.retry import backoff_delay

log = logging.getLogger(__name__)

DB_RETRY = outage_retry()


@celery.task(name="beacon.webhooks.dispatch", **DB_RETRY)
def dispatch(events: list[dict[str, Any]]) -> int:
    """Events of one type (``webapp.platform.events``) to every enabled hook that subscribes
    to it: one delivery task per hook and event, so that each retries on its own."""
    hook_ids = webhooks.subscribers(events[0]["type"])
    for event in events:
        for hook_id in hook_ids:
            _deliver_later(hook_id, event, attempt=0, delay=None)
        log.info("webhook event %s type=%s hooks=%d", event["id"], event["type"], len(hook_ids))
    return len(hook_ids) * len(events)


@celery.task(name="beacon.webhooks.deliver", **DB_RETRY)
def deliver(hook_id: str, event: dict[str, Any], attempt: int = 0) -> str:
    """One attempt to deliver ``event`` to the hook; a transient failure goes on as the next
    attempt after a backoff, until ``PUSH_MAX_RETRIES`` retries were made."""
    settings = context.settings()
    result = webhooks.deliver(hook_id, event, final=attempt >= settings.push_max_retries)
    if result.outcome == "retry":
        delay = backoff_delay(
            attempt, settings.push_retry_base, settings.push_retry_max, result.retry_after
        )
        _deliver_later(hook_id, event, attempt=attempt + 1, delay=delay)
    return result.outcome


def _deliver_later(
    hook_id: str, event: dict[str, Any], *, attempt: int, delay: float | None
) -> None:
    deliver.apply_async(
        args=[hook_id, event],
        kwargs={"attempt": attempt},
        countdown=delay,
        argsrepr=repr([hook_id, event["id"], event["type"]]),
    )
