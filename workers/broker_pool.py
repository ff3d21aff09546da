"""Broker connections sized to the worker's concurrency, at worker start.

In a gevent (or eventlet, or threads) worker every task runs in a green thread of its own, and
that green thread also talks to Redis for it, at the same time as all the others:

- it acknowledges its task as soon as the task ends (``acks_late``; Celery's ``call_soon_ack``
  runs the ack at once, in that green thread) through the *consumer's* channel, whose
  redis-py ``ConnectionPool`` is also what the consumer loop uses to record every message it
  receives as unacked;
- it sends its task events through the event dispatcher's channel;
- it takes a producer from the producer pool (``broker_pool_limit``) for each task it enqueues.

A kombu Redis channel's pool holds at most the transport option ``max_connections``
(default 10), and redis-py does not wait for a free connection: past the limit it raises
``MaxConnectionsError`` ("Too many connections", a ``ConnectionError``). So when more than 10
green threads end together, their acks fail ("Couldn't ack"), and if the consumer loop is the
one that gets the error it takes it for a lost connection, closes the connection under the acks
still in flight ("I/O operation on closed file") and reconnects: those tasks stay in Redis's
``unacked`` hash until the visibility timeout (an hour). The producer pool, on the other hand,
makes a green thread *wait* for a free producer (no error), which only delays its publish.

Both limits are therefore raised here to the worker's concurrency plus headroom (the consumer
loop's own commands, timers), whatever ``-c`` the worker is started with: a value configured
higher is kept. Connections are opened lazily, so an idle worker does not hold more of them.
Prefork workers ack from the parent's event loop, one at a time; sizing them too is harmless.
``broker_pool_limit=None`` is not used: in Celery 5 it means no pooling at all (a connection
opened and closed per publish).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import signals

log = logging.getLogger(__name__)

#: Connections beyond one per task slot: the consumer loop itself, timers, kombu's default.
HEADROOM = 10
KOMBU_DEFAULT_MAX_CONNECTIONS = 10


def task_slots(concurrency: Any, autoscale: Any = None) -> int:
    """The most tasks a worker runs at once: ``-c`` (``auto``: at most the CPU count) or the
    maximum of ``--autoscale max,min``."""
    try:
        slots = int(concurrency)
    except (TypeError, ValueError):  # "auto" (resolved after worker_init) or unset
        slots = os.cpu_count() or 1
    if autoscale:
        if isinstance(autoscale, str):
            autoscale = autoscale.split(",")
        slots = max(slots, int(autoscale[0]))
    return max(slots, 1)


def size_for(conf: Any, slots: int) -> dict[str, int]:
    """Raise ``conf``'s per-channel Redis pool and producer pool to ``slots`` + headroom;
    returns the sizes now in effect."""
    needed = slots + HEADROOM
    options = dict(conf.broker_transport_options or {})
    current = int(options.get("max_connections") or KOMBU_DEFAULT_MAX_CONNECTIONS)
    options["max_connections"] = max(current, needed)
    conf.broker_transport_options = options
    limit = conf.broker_pool_limit
    if limit is not None and limit < needed:
        conf.broker_pool_limit = needed
    return {
        "max_connections": options["max_connections"],
        "broker_pool_limit": conf.broker_pool_limit,
    }


@signals.worker_init.connect
def _size_broker_pools(sender: Any = None, **_: Any) -> None:
    """Before the worker opens any broker connection (consumer, events, producers)."""
    worker = sender
    if worker is None:
        return
    options = getattr(worker, "options", None) or {}
    size_for(worker.app.conf, task_slots(worker.concurrency, options.get("autoscale")))


@signals.worker_ready.connect
def _log_sizes(sender: Any = None, **_: Any) -> None:
    """Logging is set up only after ``worker_init``: say what the consumer got here."""
    consumer = sender
    if consumer is None or consumer.connection is None:
        return
    log.info(
        "broker connections for %s concurrent tasks: %s per channel, %s producers",
        consumer.pool.num_processes if consumer.pool is not None else "?",
        consumer.connection.transport_options.get("max_connections"),
        consumer.app.conf.broker_pool_limit,
    )
