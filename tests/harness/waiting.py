"""Polling instead of fixed sleeps: tests wait for a condition, never for a guessed duration."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition was not met",
    *,
    ignore_exceptions: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that value.

    Raises ``TimeoutError(message)`` after ``timeout`` seconds. The predicate is always tried
    at least once, and once more at the deadline, so a slow machine does not lose a last chance.
    Exceptions listed in ``ignore_exceptions`` count as "not yet" (e.g. ``ConnectionError``
    while a server boots); the last one is chained to the ``TimeoutError`` for diagnosis.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        final = time.monotonic() >= deadline
        try:
            result = predicate()
        except ignore_exceptions as exc:
            last_exc = exc
        else:
            if result:
                return result
        if final:
            detail = f" (last error: {last_exc!r})" if last_exc is not None else ""
            raise TimeoutError(f"{message} after {timeout:.1f}s{detail}") from last_exc
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
