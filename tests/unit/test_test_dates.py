"""Pins the rule the e2e tests' dates follow (tests/support/clock.py): computed from the clock,
never written as calendar dates, so the suite cannot turn red by itself as the calendar moves.
Checked for every fifth day of six years, as the service's own window rules see them."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, date, datetime, time, timedelta

from shared.rules.backfill_plan import in_window
from shared.rules.reconcile_plan import sync_window
from tests.support.clock import FUTURE_DAYS, PAST_DAYS, in_winter, monday_of, winter_day
from tests.unit.activity_builders import activity

TODAYS = [date(2026, 1, 1) + timedelta(days=n) for n in range(0, 6 * 366, 5)]
STANDARD = {"Europe/Madrid": 1, "Europe/Paris": 1, "America/Los_Angeles": -8, "America/Bogota": -5}


def at(day: date, hour: int, zone: str) -> datetime:
    return datetime.combine(day, time(hour), zoneinfo.ZoneInfo(zone))


def meeting(day: date) -> object:
    """The base e2e activity: 10:00-11:00 in Bogotá on ``day``."""
    return activity(
        start=f"{day}T10:00:00", end=f"{day}T11:00:00", time_zone="America/Bogota"
    )


def test_the_winter_day_is_ahead_inside_the_window_and_on_standard_time() -> None:
    for today in TODAYS:
        check_winter_day(today)


def check_winter_day(today: date) -> None:
    day = winter_day(after=today)
    now = datetime.combine(today, time(23, 59), UTC)  # the latest moment of that day
    assert today + timedelta(days=2) <= day <= today + timedelta(days=300)
    first, last = sync_window(now, PAST_DAYS, FUTURE_DAYS)
    for n in range(8):  # the day and the week after it, which the reconcile tests use
        other = day + timedelta(days=n)
        assert in_winter(other)
        for zone, hours in STANDARD.items():
            assert at(other, 10, zone).utcoffset() == timedelta(hours=hours), (other, zone)
        assert first <= at(other, 0, "UTC") and at(other, 23, "UTC") < last  # in the delta window
        assert in_window(meeting(other), now, PAST_DAYS)  # eligible for backfill
    assert monday_of(day).weekday() == 0 and day - monday_of(day) < timedelta(days=7)


def test_forty_days_ago_is_outside_the_window_and_a_week_ago_inside() -> None:
    for today in TODAYS:
        now = datetime.combine(today, time(0, 1), UTC)  # the earliest moment of that day
        assert not in_window(meeting(today - timedelta(days=40)), now, PAST_DAYS), today
        assert in_window(meeting(today - timedelta(days=7)), now, PAST_DAYS), today


def test_the_window_edge_is_the_activitys_end_exactly_past_days_ago() -> None:
    ended = datetime(2027, 3, 1, 12, tzinfo=UTC)
    item = activity(start="2027-03-01T11:00:00Z", end="2027-03-01T12:00:00Z", time_zone="UTC")
    assert in_window(item, ended + timedelta(days=PAST_DAYS), PAST_DAYS)
    assert not in_window(item, ended + timedelta(days=PAST_DAYS, seconds=1), PAST_DAYS)
