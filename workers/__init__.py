"""Celery workers: ``celery -A workers worker -Q unread`` (and ``-Q push -P gevent``)."""

from workers import signals  # noqa: F401  (task outcome metrics)
from workers.celery_app import celery

__all__ = ["celery"]
