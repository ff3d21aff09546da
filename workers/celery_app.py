"""The workers' side of the one Celery app (``webapp.platform.queue``): the task base that
gives tasks a Flask app, and the retry options shared by the tasks."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, signals
from celery.exceptions import Reject
from flask import Flask

from webapp.platform.queue import celery  # noqa: F401  (the one app; tasks import it from here)

log = logging.getLogger(__name__)

_flask_app: Flask | None = None


def flask_app() -> Flask:
    """The worker's Flask app (database, settings); it serves no sockets, it emits write-only."""
    global _flask_app
    if _flask_app is None:
        from webapp import create_app

        _flask_app = create_app(serve_sockets=False)
    return _flask_app


class AppContextTask(Task):
    abstract = True

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with flask_app().app_context():
            return super().__call__(*args, **kwargs)

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        """Celery drops a task whose retry it cannot publish (``Reject(requeue=False)``: the
        broker is away, e.g. during a Redis failover). Requeue it instead: the broker puts
        the message back in its queue, or, when it cannot take even that, restores it from its
        unacknowledged set after the visibility timeout. Tasks are idempotent on markers."""
        try:
            return super().retry(*args, **kwargs)
        except Reject as rejected:
            if rejected.requeue:
                raise
            log.warning("task %s: its retry could not be enqueued; requeued", self.name)
            raise Reject(rejected.reason, requeue=True) from None


def outage_retry() -> dict[str, Any]:
    """Task options: while the database, Redis or the broker (a task that enqueues more work)
    is unreachable, retry with capped backoff (``DB_RETRY_BACKOFF_MAX``) for as long as it
    takes; the task is not lost meanwhile."""
    import redis
    from kombu.exceptions import OperationalError as BrokerError
    from sqlalchemy.exc import InterfaceError, OperationalError

    from config import load_settings

    return {
        "autoretry_for": (
            OperationalError,
            InterfaceError,
            redis.ConnectionError,
            redis.TimeoutError,
            BrokerError,
        ),
        "retry_backoff": True,
        "retry_backoff_max": load_settings().db_retry_backoff_max,
        "retry_jitter": True,
        "max_retries": None,
    }


@signals.after_setup_logger.connect
def _json_logs(logger: logging.Logger, **_: Any) -> None:
    """Celery owns worker logging; LOG_JSON=1 only changes the line format."""
    from config import load_settings
    from webapp.logging_setup import use_json

    if load_settings().log_json:
        use_json(logger.handlers)
