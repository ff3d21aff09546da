"""Deleting rows by age from tables that grow with traffic (push history, task markers).

In batches, each its own statement and transaction, so that no long lock is held on a big
table; the age column must be indexed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, select

from webapp.extensions import db

BATCH = 5000


def delete_older_than(key: Any, created_at: Any, cutoff: datetime, batch: int = BATCH) -> int:
    """Delete the rows of ``key``'s table whose ``created_at`` is before ``cutoff``, ``batch``
    at a time (``key`` is the primary key column); returns how many."""
    total = 0
    while True:
        keys = select(key).where(created_at < cutoff).limit(batch)
        deleted = db.session.execute(
            delete(key.class_).where(key.in_(keys.scalar_subquery()))
        ).rowcount
        db.session.commit()
        total += deleted
        if deleted < batch:
            return total
