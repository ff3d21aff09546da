"""Whether a message may be pushed or emailed to a member: their levels and do-not-disturb.

The fan-out asks this before anything is enqueued, in one query per message for all its
away members. Unread counts never depend on it: a muted topic still counts.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import or_, select
from sqlalchemy.orm import aliased

from webapp.extensions import db
from webapp.models import NotificationOverride, NotificationSettings, Topic, TopicMember


@dataclass(frozen=True)
class Rules:
    """One user's rules for one topic, resolved (topic over channel over the user's level,
    for pushes and for email each)."""

    level: str = "all"
    quiet_start: int | None = None
    quiet_end: int | None = None
    time_zone: str = "UTC"
    snooze_until: datetime | None = None
    dnd_allow_mentions: bool = False
    push_when_idle: bool = True
    email_level: str = "mentions"
    # Seconds a missed message waits for the digest; None: EMAIL_DELAY.
    email_delay: int | None = None
    # Where ``level`` comes from: the topic's override, the room's, or the user's own.
    level_rule: str = "user"

    def dnd_active(self, now: datetime) -> bool:
        if self.snooze_until is not None and now < _aware(self.snooze_until):
            return True
        if self.quiet_start is None or self.quiet_end is None:
            return False
        return in_quiet_hours(self.quiet_start, self.quiet_end, self.time_zone, now)

    def dnd_kind(self, now: datetime) -> str | None:
        """Which do-not-disturb holds now: ``snooze``, ``quiet_hours`` or None."""
        if self.snooze_until is not None and now < _aware(self.snooze_until):
            return "snooze"
        if self.dnd_active(now):
            return "quiet_hours"
        return None

    def allows(self, *, mentioned: bool, now: datetime) -> bool:
        """``none`` silences even mentions; do-not-disturb lets mentions through only when
        the user said so."""
        if self.level == "none" or (self.level == "mentions" and not mentioned):
            return False
        if self.dnd_active(now):
            return mentioned and self.dnd_allow_mentions
        return True

    def allows_email(self, *, mentioned: bool) -> bool:
        """The email level only: do-not-disturb holds a digest, it does not drop it."""
        return self.email_level == "all" or (self.email_level == "mentions" and mentioned)

    def dnd_ends(self, now: datetime) -> datetime | None:
        """When do-not-disturb is over (None: it is not on): the snooze's end or the next end
        of quiet hours, whichever is later when both hold (a snooze that runs into quiet
        hours is asked again then)."""
        if not self.dnd_active(now):
            return None
        ends = []
        if self.snooze_until is not None and now < _aware(self.snooze_until):
            ends.append(_aware(self.snooze_until))
        if self.quiet_start is not None and self.quiet_end is not None:
            local = _aware(now).astimezone(zone(self.time_zone))
            if in_quiet_hours(self.quiet_start, self.quiet_end, self.time_zone, now):
                end = local.replace(
                    hour=self.quiet_end // 60, minute=self.quiet_end % 60, second=0, microsecond=0
                )
                if end <= local:
                    end += timedelta(days=1)
                ends.append(end.astimezone(UTC))
        return max(ends)


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


# Up to this many users are looked up by id; for more (a big topic's fan-out) the query reads
# the topic's memberships instead of binding a list of thousands of ids.
BY_ID_LIMIT = 100


def rules_for(user_ids: list[uuid.UUID], topic: Topic) -> dict[uuid.UUID, Rules]:
    """Each user's rules for ``topic`` (``user_ids`` are members of it); users with no
    settings and no override are absent (``DEFAULT`` applies).

    One query, one row per member who has any rule, plain columns: the fan-out asks this for
    every message, and turning ids into UUID objects is most of its cost.
    """
    if not user_ids:
        return {}
    settings = NotificationSettings
    for_topic = aliased(NotificationOverride)
    for_room = aliased(NotificationOverride)
    member = TopicMember.user_id
    query = (
        select(
            member,
            settings.level,
            settings.quiet_start,
            settings.quiet_end,
            settings.time_zone,
            settings.snooze_until,
            settings.dnd_allow_mentions,
            settings.push_when_idle,
            settings.email_level,
            settings.email_delay,
            for_topic.level,
            for_room.level,
            for_topic.email_level,
            for_room.email_level,
        )
        .select_from(TopicMember)
        .outerjoin(settings, settings.user_id == member)
        .outerjoin(for_topic, (for_topic.user_id == member) & (for_topic.topic_id == topic.id))
        .outerjoin(
            for_room, (for_room.user_id == member) & (for_room.channel_id == topic.channel_id)
        )
        .where(
            TopicMember.topic_id == topic.id,
            or_(
                settings.user_id.is_not(None),
                for_topic.id.is_not(None),
                for_room.id.is_not(None),
            ),
        )
    )
    if len(user_ids) <= BY_ID_LIMIT:
        query = query.where(member.in_(user_ids))
    wanted = set(user_ids)
    rules: dict[uuid.UUID, Rules] = {}
    for (
        user_id,
        level,
        start,
        end,
        zone_name,
        snooze,
        allow,
        when_idle,
        email_level,
        email_delay,
        topic_level,
        room_level,
        topic_email,
        room_email,
    ) in db.session.execute(query):
        if user_id not in wanted:
            continue
        rules[user_id] = Rules(
            level=topic_level or room_level or level or "all",
            quiet_start=start,
            quiet_end=end,
            time_zone=zone_name or "UTC",
            snooze_until=snooze,
            dnd_allow_mentions=bool(allow),
            push_when_idle=when_idle is not False,
            email_level=topic_email or room_email or email_level or "mentions",
            email_delay=email_delay,
            level_rule="topic" if topic_level else "room" if room_level else "user",
        )
    return rules
