"""The one Redis client factory: every process shares a pooled client per URL."""

from __future__ import annotations

import threading

import redis

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


def get_redis(url: str) -> redis.Redis:
    """A process-wide client for ``url`` (connection-pooled, strings decoded, with timeouts)."""
    client = _clients.get(url)
    if client is None:
        with _lock:
            client = _clients.get(url)
            if client is None:
                client = redis.Redis.from_url(
                    url,
                    decode_responses=True,
                    socket_timeout=5,
                    socket_connect_timeout=5,
                    health_check_interval=30,
                    retry_on_timeout=True,
                )
                _clients[url] = client
    return client
