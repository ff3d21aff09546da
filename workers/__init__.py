"""Celery workers: ``celery -A workers worker -Q unread`` (and ``-Q push -P gevent``)."""

from workers import (  # noqa: F401  (pools sized to -c, redelivery sweep, task metrics)
    broker_pool,
    recovery,
    signals,
)
from workers.celery_app import celery

__all__ = ["celery"]
