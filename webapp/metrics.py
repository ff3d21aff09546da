"""Prometheus metrics.

Two kinds: what one web process knows (its live connections, messages it accepted) lives in
prometheus-client objects; what the cluster knows (online users, queue depth, task outcomes,
push responses and webhook deliveries recorded by every worker) is kept as Redis counters and
read by a custom collector at scrape time, so any web process's ``/metrics`` shows the whole
cluster's figures. The disabled webhooks are counted in the database at scrape time.

The presence sweep that beat runs (``beacon.presence.sweep``) stores when it last completed, on
Redis's clock; the collector reads it with Redis's clock too, so the lag it shows does not
depend on the clocks of the worker's and the web process's hosts.
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Iterable, Iterator

import redis
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from webapp.extensions import db
from webapp.models import Webhook
from webapp.presence.store import ACTIVE, ONLINE

log = logging.getLogger(__name__)

TASKS_KEY = "beacon:metrics:tasks"  # field "<queue>|<task>|<outcome>"
PUSH_KEY = "beacon:metrics:push"  # field "<status class>"
DECISIONS_KEY = "beacon:metrics:push_decisions"  # field "<decision>"
WEBHOOKS_KEY = "beacon:metrics:webhooks"  # field "<outcome>"
EMAILS_KEY = "beacon:metrics:emails"  # field "<outcome>"
# Redis's TIME ("<seconds>.<microseconds>") when a beat-driven presence sweep last completed.
PRESENCE_SWEEP_KEY = "beacon:metrics:presence_sweep_completed"
QUEUES = ("unread", "push", "webhooks", "email")

registry = CollectorRegistry(auto_describe=True)
# The process's own figures (process_resident_memory_bytes, process_cpu_seconds_total,
# process_open_fds, python_gc_*, python_info), as the default registry would have them.
ProcessCollector(registry=registry)
PlatformCollector(registry=registry)
GCCollector(registry=registry)
CONNECTIONS = Gauge(
    "beacon_connections", "Live Socket.IO connections on this web process", registry=registry
)
MESSAGES = Counter("beacon_messages", "Messages accepted by this web process", registry=registry)
SLOW_CLIENTS_DROPPED = Counter(
    "beacon_slow_clients_dropped",
    "Connections this web process closed because more than MAX_PENDING_BYTES waited for them",
    registry=registry,
)


def status_class(status: int | None) -> str:
    return "network_error" if status is None else f"{status // 100}xx"


def record_task(client: redis.Redis, queue: str, task: str, outcome: str) -> None:
    """Count a task outcome (success, retry, failure) cluster-wide; never raises."""
    try:
        client.hincrby(TASKS_KEY, f"{queue}|{task}|{outcome}", 1)
    except redis.RedisError:
        log.debug("could not record task metric", exc_info=True)


def record_pushes(client: redis.Redis, statuses: Iterable[int | None]) -> None:
    """Count push answers by status class (one round trip for a batch); never raises."""
    counts = collections.Counter(status_class(s) for s in statuses)
    try:
        pipe = client.pipeline(transaction=False)
        for cls, count in counts.items():
            pipe.hincrby(PUSH_KEY, cls, count)
        pipe.execute()
    except redis.RedisError:
        log.debug("could not record push metric", exc_info=True)


def record_push_decisions(client: redis.Redis, counts: dict[str, int]) -> None:
    """Count what the fan-out and the coalescing flushes decided, per member (sent, silenced
    by the member's rules, held by coalescing; flushed, flush_skipped); never raises."""
    try:
        pipe = client.pipeline(transaction=False)
        for decision, count in counts.items():
            if count:
                pipe.hincrby(DECISIONS_KEY, decision, count)
        pipe.execute()
    except redis.RedisError:
        log.debug("could not record push decisions", exc_info=True)


def record_webhook(client: redis.Redis, outcome: str) -> None:
    """Count a webhook delivery attempt's outcome (delivered, retry, failed, skipped);
    never raises."""
    try:
        client.hincrby(WEBHOOKS_KEY, outcome, 1)
    except redis.RedisError:
        log.debug("could not record webhook metric", exc_info=True)


def record_email(client: redis.Redis, outcome: str) -> None:
    """Count how a digest's send ended (sent, bounced, failed, retry, dropped); never
    raises."""
    try:
        client.hincrby(EMAILS_KEY, outcome, 1)
    except redis.RedisError:
        log.debug("could not record email metric", exc_info=True)


def record_presence_sweep(client: redis.Redis) -> None:
    """Store that a beat-driven presence sweep completed now (Redis's clock); never raises."""
    try:
        seconds, micros = client.time()
        client.set(PRESENCE_SWEEP_KEY, f"{seconds}.{micros:06d}")
    except redis.RedisError:
        log.debug("could not record the presence sweep", exc_info=True)


def sweep_lag(completed: str | None, now: tuple[int, int]) -> float:
    """Seconds from the last completed sweep to ``now`` (Redis's TIME); +Inf if none is
    recorded (no sweep ever completed against this Redis, or it restarted empty)."""
    if completed is None:
        return math.inf
    try:
        return max(0.0, now[0] + now[1] / 1e6 - float(completed))
    except ValueError:
        return math.inf


def _disabled_webhooks() -> int | None:
    """Webhooks disabled now (None when the database does not answer), on a connection of
    its own (the scraping request's session is left alone)."""
    try:
        with db.engine.connect() as conn:
            return conn.execute(
                select(func.count()).select_from(Webhook).where(Webhook.disabled_at.is_not(None))
            ).scalar_one()
    except SQLAlchemyError:
        log.warning("metrics: database unavailable, disabled webhooks omitted")
        return None


class ClusterCollector(Collector):
    """Reads the cluster-wide figures from Redis at scrape time."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        disabled = _disabled_webhooks()
        if disabled is not None:
            yield GaugeMetricFamily(
                "beacon_webhooks_disabled",
                "Webhooks disabled after WEBHOOK_DISABLE_AFTER failed deliveries in a row (or "
                "by the API)",
                disabled,
            )
        try:
            pipe = self.client.pipeline()
            pipe.scard(ONLINE)
            pipe.scard(ACTIVE)
            for queue in QUEUES:
                pipe.llen(queue)
            pipe.hgetall(TASKS_KEY)
            pipe.hgetall(PUSH_KEY)
            pipe.hgetall(DECISIONS_KEY)
            pipe.hgetall(WEBHOOKS_KEY)
            pipe.hgetall(EMAILS_KEY)
            pipe.get(PRESENCE_SWEEP_KEY)
            pipe.time()
            online, active, *rest = pipe.execute()
        except redis.RedisError:
            log.warning("metrics: Redis unavailable, cluster figures omitted")
            return
        depths, (tasks, pushes, decisions, hooks, emails, swept, now) = (
            rest[: len(QUEUES)],
            rest[len(QUEUES) :],
        )

        yield GaugeMetricFamily("beacon_online_users", "Users with a live connection", online)
        yield GaugeMetricFamily(
            "beacon_active_users",
            "Users with a connection that is not idle (the rest of the online users are idle)",
            active,
        )
        depth = GaugeMetricFamily("beacon_queue_depth", "Tasks waiting", labels=["queue"])
        for queue, value in zip(QUEUES, depths, strict=True):
            depth.add_metric([queue], value)
        yield depth
        outcomes = CounterMetricFamily(
            "beacon_tasks", "Task outcomes", labels=["queue", "task", "outcome"]
        )
        for field, value in sorted(tasks.items()):
            queue, task, outcome = field.split("|", 2)
            outcomes.add_metric([queue, task, outcome], float(value))
        yield outcomes
        responses = CounterMetricFamily(
            "beacon_push_responses", "Push service answers by status class", labels=["status"]
        )
        for field, value in sorted(pushes.items()):
            responses.add_metric([field], float(value))
        yield responses
        decided = CounterMetricFamily(
            "beacon_push_decisions",
            "Members the push fan-out sent to, silenced (their rules) or held (coalescing); "
            "coalescing windows flushed or skipped",
            labels=["decision"],
        )
        for field, value in sorted(decisions.items()):
            decided.add_metric([field], float(value))
        yield decided
        deliveries = CounterMetricFamily(
            "beacon_webhook_deliveries",
            "Webhook delivery attempts by outcome: delivered (2xx), retry (429, 5xx, network; "
            "tried again later), failed (for good), skipped (hook deleted or disabled)",
            labels=["outcome"],
        )
        for field, value in sorted(hooks.items()):
            deliveries.add_metric([field], float(value))
        yield deliveries
        digests = CounterMetricFamily(
            "beacon_email_digests",
            "Missed-message digest sends by outcome: sent, bounced (address refused), failed "
            "(for good), retry (tried again later), dropped (nothing left unread to send)",
            labels=["outcome"],
        )
        for field, value in sorted(emails.items()):
            digests.add_metric([field], float(value))
        yield digests
        yield GaugeMetricFamily(
            "beacon_presence_sweep_lag_seconds",
            "Seconds since the presence sweep that beat runs every PRESENCE_SWEEP_INTERVAL last "
            "completed (+Inf: none recorded since Redis started empty)",
            sweep_lag(swept, now),
        )


_collector: ClusterCollector | None = None


def render(client: redis.Redis) -> bytes:
    """The exposition text for this process plus the cluster."""
    global _collector
    if _collector is None:
        _collector = ClusterCollector(client)
        registry.register(_collector)
    return generate_latest(registry)
