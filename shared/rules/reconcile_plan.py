"""Outlook -> CRM, decided (design §4 "Outlook-side changes"): what one delta item about one of our
events means, and when a pass is held by the mass-deletion guard. Pure; ``shared.flows.reconcile`` reads
Graph and storage and applies what is decided here.

Rules:
- **Only ours**: a delta item whose id is not the ``outlook_event_id`` of one of the user's links
  is not ours; it is skipped and nothing about it is kept (delta cannot return extended
  properties, so the event id in our link is the match).
- **Our own echo**: an event whose ``changeKey`` equals the one stored on its link (the one our
  last write got back, or the one we last reported) is not news; only its times are remembered
  (``Observation``) so a later change can be compared against them.
- **A user change**: another ``changeKey`` whose start, end or all-day flag differs from the
  reference -> ``Moved`` (callback ``activity.changed_in_outlook`` with the exact new times). The
  same times (a subject edit, a dismissed reminder) -> ``Touched``: the new changeKey is
  remembered, nothing is reported. Subject and body edits stay in Outlook until the CRM next
  changes the activity (its next push overwrites them).
- **Reference times**, best first: our own observation made at the link's current changeKey; else
  the end instant the push stored with its last write (``end_utc``, plus ``start_utc`` when the
  push stores it); else nothing is known and any other changeKey is reported (the CRM receives
  the event's current times, which is harmless when they equal its own).
- **Deletions are verified**: ``@removed`` also means "moved out of the window or to another
  calendar", and a full round simply does not list such events, so each candidate is read by id;
  only a 404 makes it ``Gone`` (callback ``activity.deleted_in_outlook``, link detached).
- **Mass-deletion guard**: more than ``MASS_DELETE_MIN`` deletions that are also more than
  ``MASS_DELETE_SHARE`` of the user's linked events are held, not reported, unless confirmed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from shared.rules.event_time import graph_all_day_dates, graph_to_utc
from shared.rules.sync_plan import MASS_DELETE_MIN, MASS_DELETE_SHARE, Link


@dataclass(frozen=True, slots=True)
class Times:
    """An event's times as the CRM receives them: UTC instants ``2027-01-15T15:00:00Z``, or
    dates ``2027-01-15`` for all-day events (end exclusive)."""

    start: str
    end: str
    all_day: bool

    def end_instant(self) -> datetime:
        return _instant(self.end, self.all_day)

    def start_instant(self) -> datetime:
        return _instant(self.start, self.all_day)


def _instant(text: str, all_day: bool) -> datetime:
    if all_day:
        return datetime.combine(date.fromisoformat(text), time(), UTC)
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def times_of(event: dict[str, Any]) -> Times:
    """The times of a Graph event (as delta or GET answer it)."""
    start, end = event["start"], event["end"]
    if event.get("isAllDay"):
        first, last = graph_all_day_dates(start, end)
        return Times(first.isoformat(), last.isoformat(), True)
    return Times(utc_text(graph_to_utc(start)), utc_text(graph_to_utc(end)), False)


@dataclass(frozen=True, slots=True)
class Tracked:
    """One of our events as we know it: the link plus what we observed of it."""

    link: Link
    observed: Times | None = None  # the times we last saw ...
    observed_key: str | None = None  # ... at this changeKey
    end_utc: str | None = None  # the push's last write (extra ``end_utc``)
    start_utc: str | None = None  # likewise, if the push records it

    @property
    def event_id(self) -> str:
        return self.link.outlook_event_id or ""

    def reference(self) -> tuple[str | None, str | None, bool | None]:
        """(start instant, end instant, all_day) believed current before this change; None = unknown."""
        if self.observed is not None and self.observed_key and self.observed_key == self.link.change_key:
            obs = self.observed
            return utc_text(obs.start_instant()), utc_text(obs.end_instant()), obs.all_day
        return self.start_utc, self.end_utc, None


@dataclass(frozen=True, slots=True)
class Seen:
    """A delta (or GET) item about one of our events."""

    event_id: str
    change_key: str | None
    times: Times | None  # None when removed


@dataclass(frozen=True, slots=True)
class Echo:
    """Our own write (or what we already reported): remember its times, say nothing."""

    tracked: Tracked
    seen: Seen


@dataclass(frozen=True, slots=True)
class Touched:
    """Changed in Outlook without moving: remember the new changeKey, say nothing."""

    tracked: Tracked
    seen: Seen


@dataclass(frozen=True, slots=True)
class Moved:
    """Rescheduled in Outlook: tell the CRM the exact new times."""

    tracked: Tracked
    seen: Seen


@dataclass(frozen=True, slots=True)
class Verify:
    """Maybe deleted: read the event by id before saying so."""

    tracked: Tracked


@dataclass(frozen=True, slots=True)
class Gone:
    """Deleted in Outlook (a GET answered 404): tell the CRM, detach the link."""

    tracked: Tracked


Decision = Echo | Touched | Moved | Verify | Gone


def decide(tracked: Tracked, seen: Seen) -> Decision:
    """What one item about one of our events means."""
    if seen.times is None:
        return Verify(tracked)
    if seen.change_key is not None and seen.change_key == tracked.link.change_key:
        return Echo(tracked, seen)
    return Moved(tracked, seen) if _moved(tracked, seen.times) else Touched(tracked, seen)


def _moved(tracked: Tracked, now: Times) -> bool:
    start, end, all_day = tracked.reference()
    if start is None and end is None and all_day is None:
        return True  # nothing known to compare with: report (never lose a reschedule)
    if all_day is not None and all_day != now.all_day:
        return True
    if start is not None and start != utc_text(now.start_instant()):
        return True
    return end is not None and end != utc_text(now.end_instant())


def after_read(tracked: Tracked, event: dict[str, Any] | None) -> Decision:
    """A ``Verify`` resolved by reading the event: None (404) -> Gone, else decide on the event."""
    if event is None:
        return Gone(tracked)
    return decide(tracked, Seen(tracked.event_id, event.get("changeKey"), times_of(event)))


def missing_from_full_round(
    tracked: list[Tracked], seen_ids: set[str], window: tuple[datetime, datetime]
) -> list[Verify]:
    """A full round lists every event in the window: ours that should be there and are not may
    have been deleted (or moved away). Events last known outside the window are not expected."""
    return [Verify(t) for t in tracked if t.event_id not in seen_ids and expected_in(t, window)]


def expected_in(tracked: Tracked, window: tuple[datetime, datetime]) -> bool:
    start, end = window
    known_start, known_end, _ = tracked.reference()
    if known_end is None and known_start is None:
        return True  # unknown: check it
    if known_end is not None and _parse(known_end) <= start:
        return False
    return not (known_start is not None and _parse(known_start) >= end)


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def held(gone: int, linked: int, *, confirmed: bool = False) -> bool:
    """The mass-deletion guard: True when this many deletions must not be reported."""
    return not confirmed and gone > MASS_DELETE_MIN and gone > MASS_DELETE_SHARE * linked


def callback_data(decision: Moved | Gone) -> dict[str, Any]:
    activity_id = decision.tracked.link.activity_id
    if isinstance(decision, Gone):
        return {"activity_id": activity_id}
    times = decision.seen.times
    assert times is not None
    return {"activity_id": activity_id, "start": times.start, "end": times.end, "all_day": times.all_day}


# --- the sync window and the sweep ---------------------------------------------------------------------


def sync_window(now: datetime, past_days: int, future_days: int) -> tuple[datetime, datetime]:
    """The delta window, whole UTC days: it moves once a day, and a moved window starts a new round."""
    today = datetime.combine(now.astimezone(UTC).date(), time(), UTC)
    return today - timedelta(days=past_days), today + timedelta(days=future_days + 1)


SWEEP_INTERVAL = timedelta(hours=6)  # every connected user is reconciled at least this often
SWEEP_PERIOD = timedelta(hours=1)  # how often the sweep timer runs
OVERDUE_SPACING = 0.1  # seconds between overdue users (36,000 fill the hour; more wrap round it)


@dataclass(frozen=True, slots=True)
class SweepUser:
    tenant: str
    user: str
    last_reconcile_at: datetime | None


def is_overdue(user: SweepUser, now: datetime) -> bool:
    return user.last_reconcile_at is None or user.last_reconcile_at + SWEEP_INTERVAL <= now


def plan_sweep(users: list[SweepUser], now: datetime, overdue_before: int = 0) -> list[tuple[SweepUser, int]]:
    """(user, delay in seconds) for every user whose reconcile falls due before the next sweep run.

    A user is due ``SWEEP_INTERVAL`` after their last reconcile (whatever caused it), so each gets
    a message delayed to exactly that moment; their due times are as spread as their past
    reconciles. Users already overdue (never reconciled, or missed) are spread ``OVERDUE_SPACING``
    apart, most overdue first, wrapping round within the period, so a first deployment does not
    reconcile everyone at once. The sweep plans one page of users at a time: ``overdue_before`` is
    how many overdue users earlier pages had, so the spreading continues where they left off."""
    scheduled: list[tuple[SweepUser, int]] = []
    overdue: list[SweepUser] = []
    for user in users:
        if is_overdue(user, now):
            overdue.append(user)
            continue
        assert user.last_reconcile_at is not None
        due = user.last_reconcile_at + SWEEP_INTERVAL
        if due < now + SWEEP_PERIOD:
            scheduled.append((user, max(1, int((due - now).total_seconds()))))
    oldest = datetime.min.replace(tzinfo=UTC)
    overdue.sort(key=lambda u: (u.last_reconcile_at or oldest, u.tenant, u.user))
    period = SWEEP_PERIOD.total_seconds()
    scheduled.extend(
        (user, int(((overdue_before + i) * OVERDUE_SPACING) % period)) for i, user in enumerate(overdue)
    )
    return scheduled
