"""Whether a message may be pushed to a member: their levels and their do-not-disturb.

The fan-out asks this before anything is enqueued, in one query per message for all its
offline members. Unread counts never depend on it: a muted topic still counts.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import or_, select

from webapp.extensions import db
from webapp.models import NotificationOverride, NotificationSettings, Topic


@dataclass(frozen=True)
class Rules:
    """One user's rules for one topic, resolved (topic over channel over the user's level)."""

    level: str = "all"
    quiet_start: int | None = None
    quiet_end: int | None = None
    time_zone: str = "UTC"
    snooze_until: datetime | None = None
    dnd_allow_mentions: bool = False

    def dnd_active(self, now: datetime) -> bool:
        if self.snooze_until is not None and now < _aware(self.snooze_until):
            return True
        if self.quiet_start is None or self.quiet_end is None:
            return False
        return in_quiet_hours(self.quiet_start, self.quiet_end, self.time_zone, now)

    def allows(self, *, mentioned: bool, now: datetime) -> bool:
        """``none`` silences even mentions; do-not-disturb lets mentions through only when
        the user said so."""
        if self.level == "none" or (self.level == "mentions" and not mentioned):
            return False
        if self.dnd_active(now):
            return mentioned and self.dnd_allow_mentions
        return True


DEFAULT = Rules()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def zone(name: str) -> ZoneInfo:
    """The IANA time zone; an unknown name (only possible if the database was edited by
    hand) falls back to UTC rather than failing a fan-out."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def in_quiet_hours(start: int, end: int, time_zone: str, now: datetime) -> bool:
    """``start``/``end`` are minutes after local midnight; ``start > end`` spans midnight
    (22:00-07:00). The local wall clock decides, so DST moves the window with the user."""
    local = _aware(now).astimezone(zone(time_zone))
    minute = local.hour * 60 + local.minute
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


def rules_for(user_ids: list[uuid.UUID], topic: Topic) -> dict[uuid.UUID, Rules]:
    """Each user's rules for ``topic``; users with no settings and no override are absent
    (``DEFAULT`` applies)."""
    if not user_ids:
        return {}
    settings = {
        row.user_id: row
        for row in db.session.execute(
            select(NotificationSettings).where(NotificationSettings.user_id.in_(user_ids))
        ).scalars()
    }
    channel_level: dict[uuid.UUID, str] = {}
    topic_level: dict[uuid.UUID, str] = {}
    overrides = db.session.execute(
        select(
            NotificationOverride.user_id,
            NotificationOverride.topic_id,
            NotificationOverride.level,
        ).where(
            NotificationOverride.user_id.in_(user_ids),
            or_(
                NotificationOverride.topic_id == topic.id,
                NotificationOverride.channel_id == topic.channel_id,
            ),
        )
    ).all()
    for user_id, topic_id, level in overrides:
        (topic_level if topic_id is not None else channel_level)[user_id] = level
    rules: dict[uuid.UUID, Rules] = {}
    for user_id in settings.keys() | channel_level.keys() | topic_level.keys():
        row = settings.get(user_id)
        base = row.level if row is not None else "all"
        level = topic_level.get(user_id) or channel_level.get(user_id) or base
        if row is None:
            rules[user_id] = Rules(level=level)
        else:
            rules[user_id] = Rules(
                level=level,
                quiet_start=row.quiet_start,
                quiet_end=row.quiet_end,
                time_zone=row.time_zone,
                snooze_until=row.snooze_until,
                dnd_allow_mentions=row.dnd_allow_mentions,
            )
    return rules
