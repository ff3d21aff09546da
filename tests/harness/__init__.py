"""Test harness: real Redis, PostgreSQL, subprocesses and Socket.IO clients for system tests.

Nothing here imports the application (``webapp``/``workers``), so the harness can be used and
self-tested while the app itself changes.
"""

from __future__ import annotations

from .ports import free_port
from .waiting import wait_until

__all__ = ["free_port", "wait_until"]
