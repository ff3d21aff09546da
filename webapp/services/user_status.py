"""Mirror presence transitions into ``users`` and announce them with ``user_status_change``.

Redis decides *when* a user comes online or goes offline; this module persists the result and
broadcasts it. Two processes can race (the last tab closes on one while a new tab opens on
another), so the database is written from the fresh connection count and an event is only
emitted when it still matches what Redis says.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update

from webapp import realtime
from webapp.extensions import db
from webapp.models import User, isoformat
from webapp.services import context


def user_status_payload(user: User) -> dict[str, Any]:
    return {
        "user_id": str(user.id),
        "username": user.username,
        "display_name": user.name,
        "is_online": user.is_online,
        "last_seen_at": isoformat(user.last_seen_at),
    }


def apply_transition(user_id: str, came_online: bool) -> None:
    """Persist a user's new status and broadcast it, unless a newer transition overtook it."""
    online_now = context.presence().connection_count(user_id) > 0
    values: dict[str, Any] = {"is_online": online_now}
    if not online_now:
        values["last_seen_at"] = datetime.now(UTC)
    uid = uuid.UUID(user_id)
    db.session.execute(update(User).where(User.id == uid).values(**values))
    db.session.commit()
    if online_now != came_online:
        return
    user = db.session.get(User, uid)
    if user is None:
        return
    realtime.emit(context.settings().redis_url, "user_status_change", user_status_payload(user))


def sweep_stale_connections() -> list[str]:
    """End connections of dead web processes and announce the users who went offline."""
    went_offline = context.presence().sweep_dead_processes()
    for user_id in went_offline:
        apply_transition(user_id, came_online=False)
    return went_offline
