"""Levels and do-not-disturb as the fan-out applies them (pure rules, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from webapp.delivery.rules import Rules, in_quiet_hours

NOON = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("level", "mentioned", "expected"),
    [
        ("all", False, True),
        ("all", True, True),
        ("mentions", False, False),
        ("mentions", True, True),
        ("none", False, False),
        ("none", True, False),
    ],
)
def test_levels(level, mentioned, expected):
    assert Rules(level=level).allows(mentioned=mentioned, now=NOON) is expected


def _minutes(clock: str) -> int:
    hours, minutes = clock.split(":")
    return int(hours) * 60 + int(minutes)


@pytest.mark.parametrize(
    ("start", "end", "local_time", "quiet"),
    [
        ("22:00", "07:00", "23:30", True),  # wraps midnight
        ("22:00", "07:00", "03:00", True),
        ("22:00", "07:00", "07:00", False),  # the end is exclusive
        ("22:00", "07:00", "21:59", False),
        ("22:00", "07:00", "22:00", True),
        ("09:00", "17:00", "12:00", True),
        ("09:00", "17:00", "17:30", False),
        ("09:00", "17:00", "08:59", False),
    ],
)
def test_quiet_hours_window(start, end, local_time, quiet):
    hours, minutes = map(int, local_time.split(":"))
    now = datetime(2026, 1, 10, hours, minutes, tzinfo=UTC)
    assert in_quiet_hours(_minutes(start), _minutes(end), "UTC", now) is quiet


def test_quiet_hours_follow_the_users_time_zone_and_dst():
    paris_night = (_minutes("22:00"), _minutes("07:00"), "Europe/Paris")
    # 21:30 UTC is 22:30 in Paris in winter (UTC+1) but 23:30 in summer (UTC+2).
    assert in_quiet_hours(*paris_night, datetime(2026, 1, 10, 21, 30, tzinfo=UTC))
    # 05:30 UTC: 06:30 in winter (quiet), 07:30 in summer (not quiet): DST moves the window.
    assert in_quiet_hours(*paris_night, datetime(2026, 1, 10, 5, 30, tzinfo=UTC))
    assert not in_quiet_hours(*paris_night, datetime(2026, 7, 10, 5, 30, tzinfo=UTC))
    # The same UTC instant is afternoon in Tokyo: not quiet there.
    assert not in_quiet_hours(
        _minutes("22:00"), _minutes("07:00"), "Asia/Tokyo", datetime(2026, 1, 10, 5, 30, tzinfo=UTC)
    )


def test_unknown_zone_falls_back_to_utc_instead_of_failing_the_fan_out():
    assert in_quiet_hours(0, 60, "Not/AZone", datetime(2026, 1, 10, 0, 30, tzinfo=UTC))


def test_snooze_silences_until_it_ends():
    rules = Rules(snooze_until=NOON + timedelta(minutes=30))
    assert not rules.allows(mentioned=False, now=NOON)
    assert not rules.allows(mentioned=True, now=NOON)
    assert rules.allows(mentioned=False, now=NOON + timedelta(minutes=30))


def test_snooze_stored_without_offset_is_utc():
    rules = Rules(snooze_until=datetime(2026, 6, 15, 12, 30))  # SQLite hands back naive
    assert rules.dnd_active(NOON) and not rules.dnd_active(NOON + timedelta(hours=1))


def test_dnd_lets_mentions_through_only_when_allowed():
    quiet = {"quiet_start": _minutes("11:00"), "quiet_end": _minutes("13:00")}
    strict = Rules(**quiet)
    lenient = Rules(**quiet, dnd_allow_mentions=True)
    assert not strict.allows(mentioned=True, now=NOON)
    assert lenient.allows(mentioned=True, now=NOON)
    assert not lenient.allows(mentioned=False, now=NOON)
    # Outside quiet hours everything the level allows goes.
    assert strict.allows(mentioned=False, now=NOON + timedelta(hours=2))


def test_mentions_level_during_dnd_with_mentions_allowed():
    rules = Rules(level="mentions", snooze_until=NOON + timedelta(hours=1), dnd_allow_mentions=True)
    assert rules.allows(mentioned=True, now=NOON)
    assert not rules.allows(mentioned=False, now=NOON)
    # "none" wins over the DND exception.
    assert not Rules(level="none", dnd_allow_mentions=True).allows(mentioned=True, now=NOON)


@pytest.mark.parametrize(
    ("level", "mentioned", "expected"),
    [
        ("all", False, True),
        ("mentions", False, False),
        ("mentions", True, True),
        ("none", True, False),
    ],
)
def test_email_levels_ignore_do_not_disturb(level, mentioned, expected):
    snoozing = Rules(email_level=level, snooze_until=NOON + timedelta(hours=1))
    assert snoozing.allows_email(mentioned=mentioned) is expected


def test_do_not_disturb_ends_when_the_snooze_or_the_quiet_hours_end():
    assert Rules().dnd_ends(NOON) is None
    assert Rules(snooze_until=NOON + timedelta(minutes=5)).dnd_ends(NOON) == NOON + timedelta(
        minutes=5
    )
    # 22:00-07:00 in Paris (UTC+2 in June): at 23:30 local, it ends at 07:00 local tomorrow.
    night = Rules(quiet_start=22 * 60, quiet_end=7 * 60, time_zone="Europe/Paris")
    late = datetime(2026, 6, 15, 21, 30, tzinfo=UTC)
    assert night.dnd_ends(late) == datetime(2026, 6, 16, 5, 0, tzinfo=UTC)
    early = datetime(2026, 6, 16, 3, 0, tzinfo=UTC)  # 05:00 local: ends at 07:00 today
    assert night.dnd_ends(early) == datetime(2026, 6, 16, 5, 0, tzinfo=UTC)
    # Both: the later end.
    both = Rules(
        quiet_start=22 * 60,
        quiet_end=7 * 60,
        time_zone="Europe/Paris",
        snooze_until=datetime(2026, 6, 16, 9, 0, tzinfo=UTC),
    )
    assert both.dnd_ends(late) == datetime(2026, 6, 16, 9, 0, tzinfo=UTC)
