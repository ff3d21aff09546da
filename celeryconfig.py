"""Celery settings for every worker and beat process (read by ``workers.celery_app``)."""

from config import load_settings
from config.redis_urls import celery_broker

_settings = load_settings()

# REDIS_URL, or kombu's sentinel transport with REDIS_SENTINELS (config/redis_urls.py). Nothing
# here may import redis: this module is read before a gevent worker patches the standard library.
broker_url, _sentinel_options = celery_broker(_settings.redis_url)
broker_connection_retry_on_startup = True
# Keep reconnecting for as long as Redis is away: a worker must outlive a broker restart.
broker_connection_max_retries = None
# The producer pool of processes that are not workers (web). Workers raise it, and the Redis
# transport's per-channel pool (max_connections), to their concurrency + headroom at start
# (workers/broker_pool.py): a gevent worker's green threads all ack and publish at once.
broker_pool_limit = 50
# A task a worker took and never acknowledged (the worker was killed) goes to another worker
# after the visibility timeout. It must be longer than any retry countdown (the loader checks),
# or Redis hands delayed tasks to a second worker early. Abandoned tasks are looked for every
# unacked_restore_interval seconds (by green workers too: workers/recovery.py), under a mutex
# that a worker killed while holding it blocks until it expires: keep that short.
_vt = _settings.broker_visibility_timeout
broker_transport_options = {
    "visibility_timeout": _vt,
    "unacked_restore_interval": max(1, min(10, _vt // 10)),
    "unacked_restore_throttle": 1,
    "unacked_mutex_expire": max(5, min(300, _vt // 10)),
    **_sentinel_options,
}

task_serializer = "json"
accept_content = ["json"]
task_ignore_result = True
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# Task events let Flower show every task, its arguments and its retries.
worker_send_task_events = True
task_send_sent_event = True
# A cold shutdown (SIGQUIT, a second Ctrl-C) gives running tasks this long before cancelling
# them. SIGTERM, which systemd sends (deploy/systemd), is the warm shutdown instead: running
# tasks finish, taken ones go back to the queue (tests/deploy/test_systemd_units.py).
worker_soft_shutdown_timeout = 10.0
worker_enable_soft_shutdown_on_idle = True

imports = (
    "workers.tasks.unread",
    "workers.tasks.presence",
    "workers.tasks.push",
    "workers.tasks.webhooks",
    "workers.tasks.email",
)
task_default_queue = "unread"
task_routes = {
    "beacon.unread.*": {"queue": "unread"},
    "beacon.presence.*": {"queue": "unread"},
    "beacon.push.*": {"queue": "push"},
    # A webhook receiver that hangs holds a slot of this queue's workers only.
    "beacon.webhooks.*": {"queue": "webhooks"},
    # A slow SMTP server holds a slot of this queue's workers only.
    "beacon.email.*": {"queue": "email"},
}

beat_schedule = {
    "presence-sweep": {
        "task": "beacon.presence.sweep",
        "schedule": _settings.presence_sweep_interval,
    },
    "push-prune-failing": {"task": "beacon.push.prune_failing", "schedule": 3600.0},
    "push-prune-history": {"task": "beacon.push.prune_history", "schedule": 3600.0},
    "email-prune-digests": {"task": "beacon.email.prune", "schedule": 3600.0},
    "unread-prune-markers": {
        "task": "beacon.unread.prune_markers",
        "schedule": 3600.0,
        "options": {"expires": 3600.0},
    },
    "email-digests": {
        "task": "beacon.email.sweep",
        "schedule": _settings.email_sweep_interval,
        "options": {"expires": _settings.email_sweep_interval},
    },
    "reconcile-lost-work": {
        "task": "beacon.unread.reconcile",
        "schedule": _settings.reconcile_interval,
        "options": {"expires": _settings.reconcile_interval},
    },
}
