"""Periodic presence sweep (beat), for web processes that died without disconnecting."""

from __future__ import annotations

from webapp.presence.user_status import sweep_stale_connections
from workers.celery_app import celery


@celery.task(name="beacon.presence.sweep", ignore_result=True)
def sweep_presence() -> int:
    return len(sweep_stale_connections())
