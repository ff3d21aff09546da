"""Task outcome metrics, counted in Redis so ``/metrics`` on any web process shows them."""

from __future__ import annotations

from typing import Any

from celery import Task, signals

from webapp import metrics
from webapp.redis_client import get_redis
from workers.celery_app import flask_app


def _record(task: Task | None, outcome: str) -> None:
    if task is None:
        return
    info = getattr(task.request, "delivery_info", None) or {}
    queue = info.get("routing_key") or "unknown"
    metrics.record_task(
        get_redis(flask_app().extensions["beacon_settings"].redis_url), queue, task.name, outcome
    )


@signals.task_success.connect
def _success(sender: Task | None = None, **_: Any) -> None:
    _record(sender, "success")


@signals.task_retry.connect
def _retry(sender: Task | None = None, **_: Any) -> None:
    _record(sender, "retry")


@signals.task_failure.connect
def _failure(sender: Task | None = None, **_: Any) -> None:
    _record(sender, "failure")
