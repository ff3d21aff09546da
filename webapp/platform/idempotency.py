"""Exactly-once task effects: a processed-event marker written in the effect's transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from webapp.extensions import db
from webapp.models import ProcessedEvent, utcnow
from webapp.platform.dialect import insert
from webapp.platform.pruning import delete_older_than

_CHUNK = 1000


def claim(key: str) -> bool:
    """Insert the marker in the current transaction; False when it already exists.

    Commit it together with the effect. Concurrent claimers of one key block on the unique
    key until the first commits, then get False.
    """
    stmt = (
        insert(ProcessedEvent)
        .values(key=key, created_at=utcnow())
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(ProcessedEvent.key)
    )
    return db.session.execute(stmt).first() is not None


def is_claimed(key: str) -> bool:
    return (
        db.session.execute(select(ProcessedEvent.key).where(ProcessedEvent.key == key)).first()
        is not None
    )


def claim_many(keys: list[str]) -> set[str]:
    """``claim`` for many keys in one statement; returns the keys this call inserted.

    One cached statement executed for many rows (SQLAlchemy batches them into multi-row
    INSERTs): a statement built with the rows as literal VALUES is compiled anew each time,
    which cost twice as much."""
    if not keys:
        return set()
    now = utcnow()
    table = ProcessedEvent.__table__
    stmt = insert(table).on_conflict_do_nothing(index_elements=["key"]).returning(table.c.key)
    rows = [{"key": key, "created_at": now} for key in dict.fromkeys(keys)]
    return set(db.session.execute(stmt, rows).scalars())


def claimed_among(keys: list[str]) -> set[str]:
    """The keys among ``keys`` that have a marker (one query per thousand keys: a statement's
    bound parameters are limited)."""
    found: set[str] = set()
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        found.update(
            db.session.execute(
                select(ProcessedEvent.key).where(ProcessedEvent.key.in_(chunk))
            ).scalars()
        )
    return found


def prune(older_than: datetime) -> int:
    """Delete the markers created before ``older_than`` (in batches; ``created_at`` is
    indexed). Returns how many.

    Only for markers whose tasks can no longer run again: see
    ``Settings.processed_events_minimum``."""
    return delete_older_than(ProcessedEvent.key, ProcessedEvent.created_at, older_than)
