"""Test dates computed from the clock the service reads, never written as calendar dates.

The service decides with ``datetime.now(UTC)`` of the machine it runs on (the dev host runs here),
so a date a test needs inside the sync window (from now - SYNC_WINDOW_PAST_DAYS to now +
SYNC_WINDOW_FUTURE_DAYS) or outside it is computed from the same clock.

Another date: ``TESTS_CLOCK=2027-03-01T08:00:00Z .venv/bin/python -m pytest tests/e2e/...`` moves
the test process (and the in-process Graph emulator) there with time-machine, and every dev host the
tests start there too (``LOCAL_HOST_CLOCK_OFFSET_SECONDS``, local/host/__main__.py): the wall clock
only, ticking from that instant; monotonic time and sleeps stay real. Azurite keeps the real clock,
as a storage account's clock is not the app's. (libfaketime was tried first: 0.9.10 hangs
Python 3.11's ``threading.Event.wait``, which the dev host's pollers use, or fails its sleeps.)

Exact-time expectations (10:00 in Bogotá is 16:00 in Madrid) depend on daylight-saving time, so
tests that assert wall-clock times use ``winter_day``: a future day on which Europe and North
America both keep standard time, whatever today is."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta
from typing import Any

PAST_DAYS = 30  # SYNC_WINDOW_PAST_DAYS's default (shared/rules/settings.py), which the test stacks keep
FUTURE_DAYS = 365  # SYNC_WINDOW_FUTURE_DAYS's default


_traveller: Any = None
OFFSET_SECONDS = 0.0  # how far TESTS_CLOCK moved this process, for the hosts it starts


def start_tests_clock() -> None:
    """Move this process to TESTS_CLOCK (ISO 8601, e.g. 2027-03-01T08:00:00Z), if set."""
    global _traveller, OFFSET_SECONDS
    wanted = os.environ.get("TESTS_CLOCK")
    if not wanted or _traveller is not None:
        return
    import time_machine

    moment = datetime.fromisoformat(wanted.replace("Z", "+00:00"))
    OFFSET_SECONDS = (moment - datetime.now(UTC)).total_seconds()
    _traveller = time_machine.travel(moment, tick=True)
    _traveller.start()


def host_clock_env() -> dict[str, str]:
    """The dev host's setting that puts it on this process's clock (nothing when not moved)."""
    return {"LOCAL_HOST_CLOCK_OFFSET_SECONDS": str(OFFSET_SECONDS)} if _traveller is not None else {}


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
