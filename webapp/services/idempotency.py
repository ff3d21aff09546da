"""Exactly-once task effects: a processed-event marker written in the effect's transaction."""

from __future__ import annotations

from sqlalchemy import select

from webapp.extensions import db
from webapp.models import ProcessedEvent, utcnow
from webapp.services.dialect import insert


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
