"""Test dates computed from the clock the service reads, never written as calendar dates.

The service decides with ``datetime.now(UTC)`` of the machine it runs on (the dev host runs here),
so a date a test needs inside the sync window (from now - SYNC_WINDOW_PAST_DAYS to now +
SYNC_WINDOW_FUTURE_DAYS) or outside it is computed from the same clock. Run the suite under
libfaketime (``faketime '2027-03-01 08:00:00' .venv/bin/python -m pytest ...``) and every process,
the tests, the dev host and Azurite, reads the faked clock alike.

Exact-time expectations (10:00 in Bogotá is 16:00 in Madrid) depend on daylight-saving time, so
tests that assert wall-clock times use ``winter_day``: a future day on which Europe and North
America both keep standard time, whatever today is."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

PAST_DAYS = 30  # SYNC_WINDOW_PAST_DAYS's default (shared/settings.py), which the test stacks keep
FUTURE_DAYS = 365  # SYNC_WINDOW_FUTURE_DAYS's default


def today() -> date:
    """Today in UTC, as the service sees it."""
    return datetime.now(UTC).date()


def days_from_today(days: int) -> date:
    return today() + timedelta(days=days)


def in_winter(day: date) -> bool:
    """Standard time in Europe (last Sunday of October to last Sunday of March) and in the USA and
    Canada (first Sunday of November to second Sunday of March), with a margin of days."""
    return (day.month, day.day) >= (11, 10) or (day.month, day.day) <= (2, 25)


def winter_day(span_days: int = 7, *, after: date | None = None) -> date:
    """The first day at least two days ahead such that it and the ``span_days`` after it are all in
    winter (``in_winter``): always in the future and at most about 270 days ahead, well inside the
    sync window, and with the same UTC offsets every year."""
    day = (after or today()) + timedelta(days=2)
    while not all(in_winter(day + timedelta(days=n)) for n in range(span_days + 1)):
        day += timedelta(days=1)
    return day


def monday_of(day: date) -> date:
    return day - timedelta(days=day.weekday())
