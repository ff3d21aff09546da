"""The one Redis client factory: every process shares a pooled client per URL."""

from __future__ import annotations

import threading

import redis

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


# Connections per process. Under gevent every greenlet inside a Redis call holds one, and a
# connect storm has hundreds of handshakes in flight: past the ceiling a plain pool raises
# "Too many connections" (refusing the handshake as ``unavailable``); this pool makes the
# greenlet wait up to POOL_TIMEOUT seconds for a free connection instead.
MAX_CONNECTIONS = 100
POOL_TIMEOUT = 5


def get_redis(url: str) -> redis.Redis:
    """A process-wide client for ``url`` (connection-pooled, strings decoded, with timeouts)."""
    client = _clients.get(url)
    if client is None:
        with _lock:
            client = _clients.get(url)
            if client is None:
                pool = redis.BlockingConnectionPool.from_url(
                    url,
                    max_connections=MAX_CONNECTIONS,
                    timeout=POOL_TIMEOUT,
                    decode_responses=True,
                    socket_timeout=5,
                    socket_connect_timeout=5,
                    health_check_interval=30,
                    retry_on_timeout=True,
                )
                client = redis.Redis(connection_pool=pool)
                _clients[url] = client
    return client
