"""Celery settings for every worker and beat process (read by ``workers.celery_app``)."""

from config import load_settings

_settings = load_settings()

broker_url = _settings.redis_url
broker_connection_retry_on_startup = True
broker_pool_limit = 50
# Longer than any retry countdown, or Redis hands delayed tasks to a second worker early.
broker_transport_options = {"visibility_timeout": 3600}

task_serializer = "json"
accept_content = ["json"]
task_ignore_result = True
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# Task events let Flower show every task, its arguments and its retries.
worker_send_task_events = True
task_send_sent_event = True
worker_soft_shutdown_timeout = 10.0
worker_enable_soft_shutdown_on_idle = True

imports = ("workers.tasks.unread", "workers.tasks.presence", "workers.tasks.push")
task_default_queue = "unread"
task_routes = {
    "beacon.unread.*": {"queue": "unread"},
    "beacon.presence.*": {"queue": "unread"},
    "beacon.push.*": {"queue": "push"},
}

beat_schedule = {
    "presence-sweep": {
        "task": "beacon.presence.sweep",
        "schedule": _settings.presence_sweep_interval,
    },
    "push-prune-failing": {"task": "beacon.push.prune_failing", "schedule": 3600.0},
}
