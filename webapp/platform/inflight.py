"""The work a web process is in the middle of (Socket.IO events being handled, REST requests),
counted so that a stopping process (``wsgi.py``, SIGTERM) lets it finish before it exits: a
message committed whose ack never left would be sent again by its client."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

_count = 0  # greenlets switch only on I/O: no lock needed around the updates


@contextmanager
def tracked() -> Iterator[None]:
    """Count the enclosed work as in flight."""
    global _count
    _count += 1
    try:
        yield
    finally:
        _count -= 1


def count() -> int:
    """How many events and requests are being handled now."""
    return _count
