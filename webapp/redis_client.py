"""The one Redis client factory: every process shares a pooled client per URL.

``settings.redis_url`` is ``redis://...`` or, with ``REDIS_SENTINELS``, a
``redis+sentinel://[user:password@]host:port,.../db/master`` URL (config/redis_urls.py). Here
it becomes redis-py's Sentinel-managed pool for the app's own clients; Celery's broker
settings come from ``config.redis_urls.celery_broker``, and python-socketio reads the URL
itself (``MESSAGE_QUEUE_OPTIONS``). A Sentinel-managed connection asks the
sentinels where the primary is whenever it connects, so after a failover every client reaches
the new primary on its next connection; until then calls fail like an outage (``unavailable``).
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from redis.sentinel import Sentinel, SentinelConnectionPool

from config.redis_urls import SENTINEL_TIMEOUT, sentinel_target

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


# Connections per process. Under gevent every greenlet inside a Redis call holds one, and a
# connect storm has hundreds of handshakes in flight: past the ceiling a plain pool raises
# "Too many connections" (refusing the handshake as ``unavailable``); this pool makes the
# greenlet wait up to POOL_TIMEOUT seconds for a free connection instead.
MAX_CONNECTIONS = 100
POOL_TIMEOUT = 5
# The Socket.IO message queue's connections (python-socketio's ``redis_options``): its listener
# blocks on a read with no timeout, so only connecting is bounded; keepalive finds a dead peer.
MESSAGE_QUEUE_OPTIONS: dict[str, Any] = {"socket_connect_timeout": 5, "socket_keepalive": True}


class _BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """redis-py's Sentinel-managed pool (finds the primary) with the blocking pool's wait for a
    free connection (``MAX_CONNECTIONS``), as the plain URL gets."""


def get_redis(url: str) -> redis.Redis:
    """A process-wide client for ``url`` (connection-pooled, strings decoded, with timeouts)."""
    client = _clients.get(url)
    if client is None:
        with _lock:
            client = _clients.get(url)
            if client is None:
                client = _clients[url] = _connect(url)
    return client


def _connect(url: str) -> redis.Redis:
    options: dict[str, Any] = {
        "max_connections": MAX_CONNECTIONS,
        "timeout": POOL_TIMEOUT,
        "decode_responses": True,
        "socket_timeout": 5,
        "socket_connect_timeout": 5,
        "health_check_interval": 30,
        "retry_on_timeout": True,
    }
    target = sentinel_target(url)
    if target is None:
        return redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(url, **options))
    sentinel = Sentinel(
        target.sentinels,
        sentinel_kwargs={
            "socket_timeout": SENTINEL_TIMEOUT,
            "socket_connect_timeout": SENTINEL_TIMEOUT,
        },
    )
    return sentinel.master_for(
        target.master,
        connection_pool_class=_BlockingSentinelPool,
        db=target.db,
        username=target.username,
        password=target.password,
        **options,
    )
