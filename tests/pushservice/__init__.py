"""A local Web Push service (a stand-in for a browser vendor's) for tests and benchmarks.

It imports nothing from ``webapp`` or ``workers``: it must judge our sender independently.
Names are imported lazily so ``python -m tests.pushservice.server`` runs cleanly.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "PushService",
    "PushServiceClient",
    "running_push_service",
    "running_push_service_process",
    "subscription_id",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tests.pushservice import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
