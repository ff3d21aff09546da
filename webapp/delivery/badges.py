"""Badges that follow reads: when a user reads a topic on one device, their mobile apps get a
silent update with the new unread total, so the icon's badge and the notifications shown
follow (the app clears the topic's). Web Push cannot be silent (every push must show a
notification), so browsers are left as they are.

Best effort and idempotent: the update carries the total at send time, so a repeat is
harmless and a lost one is corrected by the next push or read.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import and_, delete, or_, select

from webapp.delivery import channels
from webapp.delivery.batch import publish_removed, unread_totals
from webapp.delivery.channels.base import DeviceToken, Item, Notification
from webapp.extensions import db
from webapp.models import PushSubscription, User
from webapp.platform import context

log = logging.getLogger(__name__)


def read_update(topic_id: uuid.UUID, badge: int) -> Notification:
    return Notification(
        payload={"type": "read", "topic_id": str(topic_id), "badge": badge},
        urgency="normal",
        collapse_key=f"read:{topic_id}",
        silent=True,
    )


def sync_after_read(user_id: uuid.UUID, topic_id: uuid.UUID) -> float | None:
    """Send the update to each of the user's mobile devices and delete those the push
    service says are gone. None when done; else the seconds to wait (at least) before trying
    again, for devices whose push service asked to retry."""
    mobile = [c for c in context.settings().push_channels if c != "webpush"]
    if not mobile:
        return None
    devices = db.session.execute(
        select(
            PushSubscription.id,
            PushSubscription.channel,
            PushSubscription.token,
            PushSubscription.app_id,
        ).where(PushSubscription.user_id == user_id, PushSubscription.channel.in_(mobile))
    ).all()
    if not devices:
        db.session.rollback()
        return None
    badge = unread_totals([user_id]).get(user_id, 0)
    db.session.rollback()  # no transaction held open across the requests
    note = read_update(topic_id, badge)
    gone = []
    retry_after: float | None = None
    for channel in mobile:
        mine = [d for d in devices if d.channel == channel]
        if not mine:
            continue
        items = [Item(DeviceToken(d.token, d.app_id), note, badge) for d in mine]
        for device, outcome in zip(mine, channels.get(channel).send(items), strict=True):
            if outcome.kind == "expired":
                gone.append(device)
            elif outcome.kind == "retry":
                retry_after = max(retry_after or 0.0, outcome.retry_after or 0.0)
    log.info(
        "badge update user=%s topic=%s badge=%d devices=%d gone=%d retry=%s",
        user_id,
        topic_id,
        badge,
        len(devices),
        len(gone),
        retry_after is not None,
    )
    if gone:
        _remove(user_id, gone)
    return retry_after


def _remove(user_id: uuid.UUID, gone: list[Any]) -> None:
    """Delete the devices by id and token (one registered again meanwhile stays)."""
    removed = set(
        db.session.execute(
            delete(PushSubscription)
            .where(
                or_(
                    *(
                        and_(PushSubscription.id == d.id, PushSubscription.token == d.token)
                        for d in gone
                    )
                )
            )
            .returning(PushSubscription.id)
        ).scalars()
    )
    external_id = db.session.scalar(select(User.external_id).where(User.id == user_id))
    db.session.commit()
    publish_removed([(device_id, user_id, external_id) for device_id in removed], "expired")
