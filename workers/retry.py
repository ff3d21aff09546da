"""The retry policy of the workers: how long a task waits before its next attempt."""

from __future__ import annotations

import math
import random
from collections.abc import Callable


def backoff_delay(
    attempt: int,
    base: float,
    cap: float,
    retry_after: float | None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry).

    Exponential backoff with full jitter (uniform in ``[0, min(cap, base * 2**attempt))``) so
    that many workers hit by the same outage do not retry in lockstep. A push service's
    ``Retry-After`` is a floor: we never come back earlier than it asked. The result is capped
    at ``cap``; a caller that must not retry earlier than a longer Retry-After should give up
    instead.
    """
    cap = max(0.0, float(cap))
    exponent = min(max(int(attempt), 0), 62)
    ceiling = min(cap, max(0.0, float(base)) * (2.0**exponent))
    delay = rng() * ceiling
    if retry_after is not None and math.isfinite(retry_after):
        delay = max(delay, float(retry_after))
    return min(max(delay, 0.0), cap)
