"""What Outlook shows of one of our events, field by field, and what changed between two views.

``Shown`` is the same record whether it is read from the event we render
(``shared.rules.event_render``) or from the event Graph returns (delta, GET), so "what we wrote"
and "what Outlook shows" compare directly: times as UTC instants (dates for all-day events),
the body split into the user's notes and our block (``shared.rules.event_notes``), the reminder as
minutes or None when it is off. What is not reported but still matters for "is it already there"
(our block, categories, show-as) is folded into ``rest``.

The link keeps the ``Shown`` of what Outlook shows now (``Link.shown``): after our write it is what
we rendered; after the reconcile reads a user's edit it is the user's version. So

- the reconcile diffs the new view against it: the **net** change since the last one it knew,
  however many edits the user made in between, and
- the push sees when the CRM sends back exactly what Outlook already shows (the CRM accepted the
  user's edit) and writes nothing (``shared.rules.sync_plan``: ``ALREADY_SHOWN``).

Reported fields and their direction group (``shared.rules.tenant_settings``): ``subject``,
``description``, ``location``, ``start``/``end``/``all_day`` (``times``), ``reminder_minutes``
(``reminder``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time
from typing import Any

from shared.rules.event_notes import notes_of
from shared.rules.event_time import graph_all_day_dates, graph_to_utc
from shared.rules.tenant_settings import FieldDirections

GROUP_OF = {
    "subject": "subject",
    "description": "description",
    "location": "location",
    "start": "times",
    "end": "times",
    "all_day": "times",
    "reminder_minutes": "reminder",
}
REPORTED = tuple(GROUP_OF)


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
    """The times of a Graph event (as delta or GET answer it, or as we render it)."""
    start, end = event["start"], event["end"]
    if event.get("isAllDay"):
        first, last = graph_all_day_dates(start, end)
        return Times(first.isoformat(), last.isoformat(), True)
    return Times(utc_text(graph_to_utc(start)), utc_text(graph_to_utc(end)), False)


@dataclass(frozen=True, slots=True)
class Shown:
    subject: str
    description: str
    location: str
    start: str
    end: str
    all_day: bool
    reminder_minutes: int | None
    rest: str  # hash of our block's text, the categories, show-as and the event's time zone

    @property
    def times(self) -> Times:
        return Times(self.start, self.end, self.all_day)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def shown_of(event: dict[str, Any]) -> Shown:
    """The view of an event, ours as rendered or Outlook's as Graph returns it."""
    body = notes_of(event.get("body"))
    times = times_of(event)
    reminder = event.get("reminderMinutesBeforeStart") if event.get("isReminderOn") else None
    location = event.get("location") or {}
    # The zone the event is kept in (ours as sent; Graph's as originalStartTimeZone): not reported,
    # but a mailbox zone change must still re-label the event.
    zone = event.get("originalStartTimeZone") or (event.get("start") or {}).get("timeZone") or ""
    rest = json.dumps(
        [
            body.block,
            sorted(str(c) for c in event.get("categories") or []),
            str(event.get("showAs") or "busy"),
            str(zone),
        ],
        ensure_ascii=False,
    )
    return Shown(
        subject=" ".join(str(event.get("subject") or "").split()),
        description=body.notes,
        location=" ".join(str(location.get("displayName") or "").split()) if isinstance(location, dict) else "",
        start=times.start,
        end=times.end,
        all_day=times.all_day,
        reminder_minutes=int(reminder) if isinstance(reminder, int | float) else None,
        rest=hashlib.sha256(rest.encode()).hexdigest()[:32],
    )


def parse_shown(text: str | None) -> Shown | None:
    """A link's stored ``shown``; None when absent or unreadable (an older row)."""
    if not text:
        return None
    try:
        data = json.loads(text)
        return Shown(**{k: data[k] for k in Shown.__dataclass_fields__})
    except (ValueError, TypeError, KeyError):
        return None


def diff(before: Shown, after: Shown) -> dict[str, tuple[Any, Any]]:
    """Every reported field whose value differs: ``{field: (from, to)}``."""
    return {
        name: (getattr(before, name), getattr(after, name))
        for name in REPORTED
        if getattr(before, name) != getattr(after, name)
    }


def reportable(changes: dict[str, tuple[Any, Any]], directions: FieldDirections) -> dict[str, dict[str, Any]]:
    """The changes of ``two_way`` fields, as the callback carries them."""
    return {
        name: {"from": old, "to": new}
        for name, (old, new) in changes.items()
        if directions.two_way(GROUP_OF[name])
    }


def conflicting(before: Shown, outlook: Shown, crm: Shown, fields: list[str]) -> list[str]:
    """Of ``fields`` the user changed in Outlook (``before`` -> ``outlook``), those the CRM changed
    too, to something else (``before`` -> ``crm``)."""
    return [
        name
        for name in fields
        if getattr(crm, name) != getattr(before, name) and getattr(crm, name) != getattr(outlook, name)
    ]
