"""The pushes sent to a user and how each ended, readable by that user, pruned by age."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import insert as sa_insert
from sqlalchemy import select

from webapp.errors import InvalidInput
from webapp.extensions import db
from webapp.models import PushRecord, User, isoformat, utcnow
from webapp.platform import context
from webapp.platform.pruning import delete_older_than

OUTCOMES = ("delivered", "expired", "failed")


def push_service(channel: str, endpoint: str | None) -> str:
    """Which push service: a Web Push endpoint's origin (the browser's vendor, not the
    device's token), else the channel (``fcm``, ``apns``)."""
    if channel != "webpush":
        return channel
    parts = urlsplit(endpoint or "")
    return f"{parts.scheme}://{parts.netloc}"[:255]


def row(
    *,
    user_id: uuid.UUID,
    subscription_id: uuid.UUID,
    channel: str,
    endpoint: str | None,
    payload: dict[str, Any],
    outcome: str,
    status: int | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """One history row (for ``insert``)."""
    topic_id = payload.get("topic_id")
    return {
        "user_id": user_id,
        "subscription_id": subscription_id,
        "channel": channel,
        "push_service": push_service(channel, endpoint),
        "topic_id": uuid.UUID(topic_id) if topic_id else None,
        "message_id": payload.get("message_id"),
        "kind": str(payload.get("type") or "message")[:16],
        "message_count": int(payload.get("count") or 1),
        "outcome": outcome,
        "status_code": status,
        "reason": (reason or None) and reason[:300],
        "created_at": utcnow(),
    }


def insert(rows: list[dict[str, Any]]) -> None:
    """Add the rows to the current transaction in one INSERT (committed with the sends'
    own effects)."""
    if rows:
        db.session.execute(sa_insert(PushRecord.__table__), rows)


def list_for(user: User, *, before: int | None, limit: int, outcome: str | None) -> dict[str, Any]:
    """Newest first; ``next_before`` pages further back."""
    if outcome is not None and outcome not in OUTCOMES:
        raise InvalidInput("invalid_outcome", "outcome must be delivered, expired or failed")
    query = select(PushRecord).where(PushRecord.user_id == user.id)
    if before is not None:
        query = query.where(PushRecord.id < before)
    if outcome is not None:
        query = query.where(PushRecord.outcome == outcome)
    rows = list(db.session.execute(query.order_by(PushRecord.id.desc()).limit(limit + 1)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    return {
        "pushes": [_view(r) for r in rows],
        "next_before": rows[-1].id if more else None,
    }


def _view(row: PushRecord) -> dict[str, Any]:
    return {
        "id": row.id,
        "created_at": isoformat(row.created_at),
        "outcome": row.outcome,
        "status_code": row.status_code,
        "reason": row.reason,
        "type": row.kind,
        "message_count": row.message_count,
        "topic_id": str(row.topic_id) if row.topic_id else None,
        "message_id": row.message_id,
        "subscription_id": str(row.subscription_id),
        "channel": row.channel,
        "push_service": row.push_service,
    }


def prune() -> int:
    """Delete what is older than ``PUSH_HISTORY_DAYS`` (in batches; ``created_at`` is
    indexed)."""
    cutoff = utcnow() - timedelta(days=context.settings().push_history_days)
    return delete_older_than(PushRecord.id, PushRecord.created_at, cutoff)
