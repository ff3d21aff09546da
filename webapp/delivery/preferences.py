"""The caller's notification preferences over REST: push and email levels, quiet hours,
snooze, pushing while idle, and the email address's state.

Only ever the caller's own rows: every function takes the authenticated user, never an id.
Each change is sent to the user's connected devices as ``preferences_updated`` (the whole
preferences), so a settings screen open elsewhere shows it.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from sqlalchemy import delete, exists, select
from sqlalchemy import update as sql_update

from webapp import realtime
from webapp.delivery.rules import Rules
from webapp.errors import InvalidInput, NotFound
from webapp.extensions import db
from webapp.messaging.topics import member_topic
from webapp.models import (
    NOTIFY_LEVELS,
    NotificationOverride,
    NotificationSettings,
    PendingEmail,
    Topic,
    TopicMember,
    User,
    isoformat,
    utcnow,
)
from webapp.platform import context
from webapp.platform.dialect import insert
from webapp.platform.validation import require_object

MAX_SNOOZE = timedelta(days=366)
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_SETTINGS_FIELDS = {
    "level",
    "quiet_hours",
    "time_zone",
    "snooze_until",
    "snooze_minutes",
    "dnd_allow_mentions",
    "push_when_idle",
    "email_level",
    "email_delay",
    "share_read_receipts",
}
# The boolean settings; each refused as invalid_<name> when not a boolean.
_FLAGS = ("dnd_allow_mentions", "push_when_idle", "share_read_receipts")
MAX_EMAIL_DELAY = 86400


def get(user: User) -> dict[str, Any]:
    row = db.session.get(NotificationSettings, user.id)
    overrides = db.session.execute(
        select(NotificationOverride, Topic.channel_id)
        .outerjoin(Topic, Topic.id == NotificationOverride.topic_id)
        .where(NotificationOverride.user_id == user.id)
        .order_by(NotificationOverride.id)
    ).all()
    return {
        **_settings_view(row),
        "email": _email_view(user),
        "rooms": [
            {"room_id": str(o.channel_id), "level": o.level, "email_level": o.email_level}
            for o, _ in overrides
            if o.channel_id is not None
        ],
        "topics": [
            {
                "topic_id": str(o.topic_id),
                "room_id": str(channel_id),
                "level": o.level,
                "email_level": o.email_level,
            }
            for o, channel_id in overrides
            if o.topic_id is not None
        ],
    }


def _email_view(user: User) -> dict[str, Any]:
    """Where digests go and whether they can: read-only here (the address is set by the
    integration API or the CLI)."""
    settings = context.settings()
    return {
        "address": user.email,
        "enabled": settings.email_enabled,
        "failing": user.email_failing_at is not None,
        "failing_since": isoformat(user.email_failing_at),
        "delay_default": settings.email_delay,
    }


def _settings_view(row: NotificationSettings | None) -> dict[str, Any]:
    if row is None:
        row = NotificationSettings(
            level="all",
            time_zone="UTC",
            dnd_allow_mentions=False,
            push_when_idle=True,
            email_level="mentions",
            share_read_receipts=True,
        )
    quiet = None
    if row.quiet_start is not None and row.quiet_end is not None:
        quiet = {"start": _clock(row.quiet_start), "end": _clock(row.quiet_end)}
    now = utcnow()
    snoozing = Rules(snooze_until=row.snooze_until).dnd_active(now)
    rules = Rules(
        quiet_start=row.quiet_start,
        quiet_end=row.quiet_end,
        time_zone=row.time_zone,
        snooze_until=row.snooze_until,
    )
    return {
        "level": row.level,
        "quiet_hours": quiet,
        "time_zone": row.time_zone,
        "snooze_until": isoformat(row.snooze_until) if snoozing else None,  # past: no snooze
        "dnd_allow_mentions": row.dnd_allow_mentions,
        "dnd_active": rules.dnd_active(now),
        "push_when_idle": row.push_when_idle,
        "email_level": row.email_level,
        "email_delay": row.email_delay,
        "share_read_receipts": row.share_read_receipts,
    }


def update(user: User, payload: Any) -> dict[str, Any]:
    """Change any of the user-wide settings; fields left out keep their value."""
    data = require_object(payload, allowed=_SETTINGS_FIELDS)
    if "snooze_until" in data and "snooze_minutes" in data:
        raise InvalidInput("invalid_snooze", "give snooze_until or snooze_minutes, not both")
    values: dict[str, Any] = {}
    if "level" in data:
        values["level"] = parse_level(data["level"])
    if "time_zone" in data:
        values["time_zone"] = parse_time_zone(data["time_zone"])
    if "quiet_hours" in data:
        values["quiet_start"], values["quiet_end"] = parse_quiet_hours(data["quiet_hours"])
    if "snooze_until" in data:
        values["snooze_until"] = parse_snooze_until(data["snooze_until"])
    if "snooze_minutes" in data:
        values["snooze_until"] = parse_snooze_minutes(data["snooze_minutes"])
    for flag in _FLAGS:
        if flag in data:
            if not isinstance(data[flag], bool):
                raise InvalidInput(f"invalid_{flag}", f"{flag} must be a boolean")
            values[flag] = data[flag]
    if "email_level" in data:
        values["email_level"] = parse_level(data["email_level"], "email_level")
    if "email_delay" in data:
        values["email_delay"] = parse_email_delay(data["email_delay"])
    if values:
        values["updated_at"] = utcnow()
        # One statement, so two concurrent first updates cannot both insert.
        db.session.execute(
            insert(NotificationSettings)
            .values(user_id=user.id, **values)
            .on_conflict_do_update(index_elements=["user_id"], set_=values)
        )
        db.session.commit()
        return _announce(user)
    return get(user)


def _announce(user: User) -> dict[str, Any]:
    """The user's preferences after a change, also sent to every device of theirs."""
    current = get(user)
    realtime.emit(
        context.settings().redis_url,
        "preferences_updated",
        current,
        to=realtime.user_room(user.id),
    )
    return current


def set_topic_level(user: User, topic_id: uuid.UUID, payload: Any) -> dict[str, Any]:
    topic, _ = member_topic(user.id, topic_id)
    levels = _parse_override(payload)
    row = _upsert_override(user.id, levels, topic_id=topic.id)
    _announce(user)
    return {"topic_id": str(topic.id), "room_id": str(topic.channel_id), **row}


def set_room_level(user: User, room_id: uuid.UUID, payload: Any) -> dict[str, Any]:
    _require_room_member(user.id, room_id)
    levels = _parse_override(payload)
    row = _upsert_override(user.id, levels, channel_id=room_id)
    _announce(user)
    return {"room_id": str(room_id), **row}


def _parse_override(payload: Any) -> dict[str, str | None]:
    """``{level?, email_level?}``: at least one; null clears that one (back to the room's or
    the user's)."""
    data = require_object(payload, allowed={"level", "email_level"})
    if not data:
        raise InvalidInput("invalid_level", "give level, email_level or both")
    return {
        field: None if data[field] is None else parse_level(data[field], field)
        for field in ("level", "email_level")
        if field in data
    }


def stop_emails(user_id: uuid.UUID) -> bool:
    """The one-click unsubscribe: no more digests (email level ``none`` everywhere, held
    messages dropped). False when there is no such user."""
    user = db.session.get(User, user_id)
    if user is None or user.deleted_at is not None:
        return False
    now = utcnow()
    db.session.execute(
        insert(NotificationSettings)
        .values(user_id=user_id, email_level="none", updated_at=now)
        .on_conflict_do_update(
            index_elements=["user_id"], set_={"email_level": "none", "updated_at": now}
        )
    )
    # Overrides of the email level go (and an override with no push level with them).
    db.session.execute(
        delete(NotificationOverride).where(
            NotificationOverride.user_id == user_id, NotificationOverride.level.is_(None)
        )
    )
    db.session.execute(
        sql_update(NotificationOverride)
        .where(NotificationOverride.user_id == user_id)
        .values(email_level=None)
    )
    db.session.execute(delete(PendingEmail).where(PendingEmail.user_id == user_id))
    db.session.commit()
    _announce(user)
    return True


def clear_topic_level(user: User, topic_id: uuid.UUID) -> None:
    """Back to the room's level (or the user's). Only ever deletes the caller's own row, so
    no membership is asked: an override outlives a topic the user left, and can go too."""
    if _delete_override(user.id, NotificationOverride.topic_id == topic_id):
        _announce(user)


def clear_room_level(user: User, room_id: uuid.UUID) -> None:
    if _delete_override(user.id, NotificationOverride.channel_id == room_id):
        _announce(user)


def _require_room_member(user_id: uuid.UUID, room_id: uuid.UUID) -> None:
    """A room the user has a topic in; any other room is 'not found' (no probing)."""
    member = db.session.execute(
        select(
            exists().where(
                TopicMember.user_id == user_id,
                TopicMember.topic_id == Topic.id,
                Topic.channel_id == room_id,
            )
        )
    ).scalar()
    if not member:
        raise NotFound("room_not_found", "no such room among yours")


def _upsert_override(
    user_id: uuid.UUID, levels: dict[str, str | None], **scope: uuid.UUID
) -> dict[str, str | None]:
    """Set the given levels of the scope's override (the others keep theirs); an override
    left with no level at all is deleted. Returns both levels as they are now."""
    ((column, scope_id),) = scope.items()
    now = utcnow()
    returning = (
        NotificationOverride.id,
        NotificationOverride.level,
        NotificationOverride.email_level,
    )
    if all(level is None for level in levels.values()):
        # Only clearing: nothing to create, and an override left with no level goes.
        current = db.session.execute(
            select(*returning)
            .where(
                NotificationOverride.user_id == user_id,
                getattr(NotificationOverride, column) == scope_id,
            )
            .with_for_update()
        ).first()
        if current is None:
            db.session.commit()
            return {"level": None, "email_level": None}
        after = {"level": current.level, "email_level": current.email_level, **levels}
        if after["level"] is None and after["email_level"] is None:
            db.session.execute(
                delete(NotificationOverride).where(NotificationOverride.id == current.id)
            )
        else:
            db.session.execute(
                sql_update(NotificationOverride)
                .where(NotificationOverride.id == current.id)
                .values(**levels, updated_at=now)
            )
        db.session.commit()
        return after
    row = db.session.execute(
        insert(NotificationOverride)
        .values(
            user_id=user_id,
            updated_at=now,
            **{"level": None, "email_level": None, **levels},
            **scope,
        )
        .on_conflict_do_update(
            index_elements=["user_id", column], set_={**levels, "updated_at": now}
        )
        .returning(*returning)
    ).one()
    db.session.commit()
    return {"level": row.level, "email_level": row.email_level}


def _delete_override(user_id: uuid.UUID, scope: Any) -> int:
    deleted = db.session.execute(
        delete(NotificationOverride).where(NotificationOverride.user_id == user_id, scope)
    ).rowcount
    db.session.commit()
    return deleted


def parse_level(value: Any, field: str = "level") -> str:
    if not isinstance(value, str) or value not in NOTIFY_LEVELS:
        raise InvalidInput(f"invalid_{field}", f"{field} must be one of {', '.join(NOTIFY_LEVELS)}")
    return value


def parse_email_delay(value: Any) -> int | None:
    """Seconds a missed message waits for the digest; ``null``: the server's EMAIL_DELAY."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_EMAIL_DELAY:
        raise InvalidInput(
            "invalid_email_delay",
            f"email_delay must be a number of seconds from 0 to {MAX_EMAIL_DELAY}, or null",
        )
    return value


def parse_time_zone(value: Any) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise InvalidInput("invalid_time_zone", "time_zone must be an IANA name like Europe/Paris")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            "invalid_time_zone", "time_zone must be an IANA name like Europe/Paris"
        ) from None
    if value not in _zones():
        # ZoneInfo also opens odd files such as "posixrules"; accept only real zone names.
        raise InvalidInput("invalid_time_zone", "time_zone must be an IANA name like Europe/Paris")
    return value


_ZONES: set[str] | None = None


def _zones() -> set[str]:
    global _ZONES
    if _ZONES is None:
        _ZONES = available_timezones() | {"UTC"}
    return _ZONES


def parse_quiet_hours(value: Any) -> tuple[int | None, int | None]:
    """``null`` turns quiet hours off; ``{"start": "22:00", "end": "07:00"}`` (local time)."""
    if value is None:
        return None, None
    data = require_object(value, allowed={"start", "end"})
    start, end = _minutes(data.get("start"), "start"), _minutes(data.get("end"), "end")
    if start == end:
        raise InvalidInput("invalid_quiet_hours", "quiet hours must not start and end together")
    return start, end


def _minutes(value: Any, field: str) -> int:
    match = _CLOCK.match(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidInput("invalid_quiet_hours", f"quiet_hours.{field} must be HH:MM (24 h)")
    return int(match.group(1)) * 60 + int(match.group(2))


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def parse_snooze_until(value: Any) -> datetime | None:
    """``null`` ends a snooze; otherwise an ISO 8601 time with its UTC offset."""
    if value is None:
        return None
    try:
        if not isinstance(value, str) or len(value) > 64:
            raise ValueError
        until = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            "invalid_snooze", "snooze_until must be an ISO 8601 time such as 2026-01-01T08:00Z"
        ) from None
    if until.tzinfo is None:
        raise InvalidInput("invalid_snooze", "snooze_until needs a UTC offset (or Z)")
    return _bounded(until)


def parse_snooze_minutes(value: Any) -> datetime | None:
    """Snooze for this many minutes from now; 0 ends a snooze."""
    limit = int(MAX_SNOOZE.total_seconds() // 60)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise InvalidInput("invalid_snooze", f"snooze_minutes must be an integer from 0 to {limit}")
    return None if value == 0 else utcnow() + timedelta(minutes=value)


def _bounded(until: datetime) -> datetime | None:
    now = utcnow()
    if until <= now:
        return None  # a snooze in the past is no snooze
    if until - now > MAX_SNOOZE:
        raise InvalidInput("invalid_snooze", "a snooze lasts at most 366 days")
    return until
