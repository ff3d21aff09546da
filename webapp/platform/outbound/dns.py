"""Lookups of the hosts users chose (push endpoints, webhook URLs), apart from the worker's own.

Such a host's name servers may answer slowly. In a gevent worker every ``getaddrinfo`` runs in
the hub's threadpool (10 threads), which Redis, the broker and every connect need too: ten slow
endpoint lookups at once stalled the whole push worker
(``tests/faults/test_push_dns_starvation.py``). So these lookups run in threads of their own
(``LOOKUP_THREADS``) and are waited for at most a deadline; without gevent they run in the
calling thread, as any lookup does. IP literals are never looked up.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable
from typing import Any

LOOKUP_THREADS = 32

# The C resolver, called from one of this module's threads under gevent (replaceable in tests).
system_getaddrinfo: Callable[..., list[tuple[Any, ...]]] | None = None
_pool: Any = None
_lock = threading.Lock()


def getaddrinfo(host: str, port: int, *, timeout: float) -> list[tuple[Any, ...]]:
    """``socket.getaddrinfo(host, port, 0, SOCK_STREAM)``; ``TimeoutError`` when a gevent
    worker's lookup takes longer than ``timeout`` (its thread finishes it, unobserved)."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    else:
        family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (str(address), port))]
    pool = _green_pool()
    if pool is None:
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    import gevent

    lookup = system_getaddrinfo or _original_getaddrinfo()
    try:
        return pool.spawn(lookup, host, port, 0, socket.SOCK_STREAM).get(timeout=timeout)
    except gevent.Timeout:
        raise TimeoutError("endpoint host lookup timed out") from None


def _green_pool() -> Any:
    """This module's threadpool when the process is gevent-patched, else None."""
    global _pool
    if _pool is None:
        from gevent import monkey

        if not monkey.is_module_patched("socket"):
            return None
        with _lock:
            if _pool is None:
                from gevent.threadpool import ThreadPool

                _pool = ThreadPool(LOOKUP_THREADS)
    return _pool


def _original_getaddrinfo() -> Callable[..., list[tuple[Any, ...]]]:
    from gevent import monkey

    return monkey.get_original("socket", "getaddrinfo")
