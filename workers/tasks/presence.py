"""Periodic presence sweep (beat), for web processes that died without disconnecting."""

from __future__ import annotations

from webapp import metrics
from webapp.platform import context
from webapp.presence.user_status import sweep_stale_connections
from webapp.redis_client import get_redis
from workers.celery_app import celery


@celery.task(name="beacon.presence.sweep", ignore_result=True)
def sweep_presence() -> int:
    went_offline = sweep_stale_connections()
    # Only a completed sweep counts: /metrics shows the time since (presence sweep lag), which
    # grows when beat is down, the unread workers are down or behind, or the sweep fails.
    metrics.record_presence_sweep(get_redis(context.settings().redis_url))
    return len(went_offline)
