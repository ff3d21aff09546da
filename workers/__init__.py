"""Celery workers: ``celery -A workers worker -Q unread`` (and ``-Q push -P gevent``)."""

from workers import recovery, signals  # noqa: F401  (redelivery sweep, task metrics)
from workers.celery_app import celery

__all__ = ["celery"]
