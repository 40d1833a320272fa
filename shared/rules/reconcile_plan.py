"""Outlook -> CRM, decided (design §4 "Outlook-side changes", "Two-way content"): what one delta
item about one of our events means, and when a pass is held by the mass-deletion guard. Pure;
``shared.flows.reconcile`` reads Graph and storage and applies what is decided here.

Rules:
- **Only ours**: a delta item whose id is not the ``outlook_event_id`` of one of the user's links
  is not ours; it is skipped and nothing about it is kept (delta cannot return extended
  properties, so the event id in our link is the match).
- **Our own echo**: an event whose ``changeKey`` equals the one stored on its link (the one our
  last write got back, or the one we last reported) is not news; what it shows is remembered
  (``Link.shown``, and its times as an observation) so a later change is compared against it.
- **A user change**: another ``changeKey``. Its view (``shared.rules.field_diff.Shown``: subject,
  notes, location, times, reminder) is compared with what the link says Outlook showed: the net
  change since then, however many edits were made in between. The changed fields whose group is
  ``two_way`` for the tenant (``shared.rules.tenant_settings``; by default only ``times``) are
  reported -> ``Changed`` (callback ``activity.changed_in_outlook {activity_id, version,
  changed_at, changes, start, end, all_day}``). Nothing reportable (a ``crm_to_outlook`` field, a
  dismissed reminder, an edit undone) -> ``Touched``. Either way the new changeKey and view are
  remembered, so each edit is reported once; the edit stays in Outlook until the CRM's next change
  of the activity is written over it.
- **Links from before ``Link.shown``**: only times can be compared, against our own observation
  at the link's changeKey, else the instants the push stored with its last write (``end_utc``,
  ``start_utc``); with nothing known any other changeKey is reported as a time change (the CRM
  receives the event's current times, which is harmless when they equal its own).
- **Deletions are verified**: ``@removed`` also means "moved out of the window or to another
  calendar", and a full round simply does not list such events, so each candidate is read by id;
  only a 404 makes it ``Gone`` (callback ``activity.deleted_in_outlook``, link detached).
- **Mass-deletion guard**: more than ``MASS_DELETE_MIN`` deletions that are also more than
  ``MASS_DELETE_SHARE`` of the user's linked events are held, not reported, unless confirmed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any

from shared.rules.callback_messages import CHANGED_IN_OUTLOOK, DELETED_IN_OUTLOOK, report_id
from shared.rules.field_diff import (
    Shown,
    Times,
    conflicting,
    diff,
    parse_shown,
    reportable,
    shown_of,
    times_of,
    utc_text,
)
from shared.rules.sync_plan import MASS_DELETE_MIN, MASS_DELETE_SHARE, Link
from shared.rules.tenant_settings import FieldDirections

DEFAULT_DIRECTIONS = FieldDirections()


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

    @property
    def shown(self) -> Shown | None:
        return parse_shown(self.link.shown)

    def reference(self) -> tuple[str | None, str | None, bool | None]:
        """(start instant, end instant, all_day) believed current before this change; None = unknown."""
        shown = self.shown
        if shown is not None:
            obs: Times | None = shown.times
        elif self.observed is not None and self.observed_key and self.observed_key == self.link.change_key:
            obs = self.observed
        else:
            return self.start_utc, self.end_utc, None
        assert obs is not None
        return utc_text(obs.start_instant()), utc_text(obs.end_instant()), obs.all_day


@dataclass(frozen=True, slots=True)
class Seen:
    """A delta (or GET) item about one of our events."""

    event_id: str
    change_key: str | None
    times: Times | None  # None when removed
    view: Shown | None = None  # what the event shows (None when removed, or not read)
    changed_at: str | None = None  # Graph's lastModifiedDateTime


def seen_of(event: dict[str, Any]) -> Seen:
    """A Graph event (delta item or GET answer) as a ``Seen``; KeyError/ValueError if unreadable."""
    return Seen(
        str(event.get("id") or ""),
        event.get("changeKey"),
        times_of(event),
        shown_of(event),
        event.get("lastModifiedDateTime"),
    )


@dataclass(frozen=True, slots=True)
class Echo:
    """Our own write (or what we already reported): remember what it shows, say nothing."""

    tracked: Tracked
    seen: Seen


@dataclass(frozen=True, slots=True)
class Touched:
    """Changed in Outlook, nothing to report: remember the new changeKey and view, say nothing."""

    tracked: Tracked
    seen: Seen


@dataclass(frozen=True, slots=True)
class Changed:
    """Edited in Outlook: tell the CRM the two-way fields' net change."""

    tracked: Tracked
    seen: Seen
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)
    conflict: bool = False


Moved = Changed  # the name from when only reschedules were reported


@dataclass(frozen=True, slots=True)
class Verify:
    """Maybe deleted: read the event by id before saying so."""

    tracked: Tracked


@dataclass(frozen=True, slots=True)
class Gone:
    """Deleted in Outlook (a GET answered 404): tell the CRM, detach the link."""

    tracked: Tracked


Decision = Echo | Touched | Changed | Verify | Gone


def decide(tracked: Tracked, seen: Seen, directions: FieldDirections = DEFAULT_DIRECTIONS) -> Decision:
    """What one item about one of our events means."""
    if seen.times is None:
        return Verify(tracked)
    if seen.change_key is not None and seen.change_key == tracked.link.change_key:
        return Echo(tracked, seen)
    changes = reportable(user_changes(tracked, seen), directions)
    return Changed(tracked, seen, changes) if changes else Touched(tracked, seen)


def user_changes(tracked: Tracked, seen: Seen) -> dict[str, tuple[Any, Any]]:
    """Every field that differs from what Outlook showed before (all groups; directions apply later)."""
    before = tracked.shown
    if before is not None and seen.view is not None:
        return diff(before, seen.view)
    assert seen.times is not None
    if not _moved(tracked, seen.times):
        return {}
    start, end, all_day = tracked.reference()
    now = seen.times
    out: dict[str, tuple[Any, Any]] = {}
    if all_day != now.all_day:
        out["all_day"] = (all_day, now.all_day)
    if start != utc_text(now.start_instant()) or all_day != now.all_day:
        out["start"] = (start, now.start)
    if end != utc_text(now.end_instant()) or all_day != now.all_day:
        out["end"] = (end, now.end)
    return out


def _moved(tracked: Tracked, now: Times) -> bool:
    start, end, all_day = tracked.reference()
    if start is None and end is None and all_day is None:
        return True  # nothing known to compare with: report (never lose a reschedule)
    if all_day is not None and all_day != now.all_day:
        return True
    if start is not None and start != utc_text(now.start_instant()):
        return True
    return end is not None and end != utc_text(now.end_instant())


def after_read(
    tracked: Tracked, event: dict[str, Any] | None, directions: FieldDirections = DEFAULT_DIRECTIONS
) -> Decision:
    """A ``Verify`` resolved by reading the event: None (404) -> Gone, else decide on the event."""
    if event is None:
        return Gone(tracked)
    return decide(tracked, replace_id(seen_of(event), tracked.event_id), directions)


def replace_id(seen: Seen, event_id: str) -> Seen:
    return seen if seen.event_id == event_id else Seen(event_id, seen.change_key, seen.times, seen.view,
                                                       seen.changed_at)


def edit_before_write(
    tracked: Tracked, seen: Seen, crm_next: Shown | None, directions: FieldDirections
) -> Changed | None:
    """The push found (If-Match answered 412) that the user edited the event after what we knew,
    just before writing the CRM's newer version over it. The rule: the CRM's change is written
    (it wins in Outlook), and the user's edit is still reported, with ``conflict`` when the CRM
    changed one of the same fields to something else. None when there is nothing to report."""
    decided = decide(tracked, seen, directions)
    if not isinstance(decided, Changed):
        return None
    before, now = tracked.shown, seen.view
    conflict = bool(
        before is not None
        and now is not None
        and crm_next is not None
        and conflicting(before, now, crm_next, list(decided.changes))
    )
    return Changed(decided.tracked, decided.seen, decided.changes, conflict)


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


def report_of(tenant: str, user: str, decision: Changed | Gone) -> tuple[str, str]:
    """The callback kind of a report and its id: one id per event state, so the same Outlook edit
    reported by two readers (the reconcile, and a push whose ``If-Match`` met it) is one report."""
    if isinstance(decision, Gone):
        return DELETED_IN_OUTLOOK, report_id(DELETED_IN_OUTLOOK, tenant, user, decision.tracked.event_id, None)
    key = decision.seen.change_key
    return CHANGED_IN_OUTLOOK, report_id(CHANGED_IN_OUTLOOK, tenant, user, decision.tracked.event_id, key)


def callback_data(decision: Changed | Gone, now: datetime | None = None) -> dict[str, Any]:
    """The callback's ``data``. A change carries ``changes`` (only two-way fields), ``version`` (the
    CRM version the event was last written from), ``changed_at`` (Outlook's lastModifiedDateTime)
    and, as before two-way content existed, the event's current ``start``, ``end`` and ``all_day``."""
    activity_id = decision.tracked.link.activity_id
    if isinstance(decision, Gone):
        return {"activity_id": activity_id}
    times = decision.seen.times
    assert times is not None
    changed_at = decision.seen.changed_at or (utc_text(now) if now else None)
    data: dict[str, Any] = {
        "activity_id": activity_id,
        "version": decision.tracked.link.version,
        "changed_at": changed_at,
        "changes": decision.changes,
        "start": times.start,
        "end": times.end,
        "all_day": times.all_day,
    }
    if decision.conflict:
        data["conflict"] = True
    return data


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
