"""Exact time: CRM activity times -> Graph ``dateTimeTimeZone`` and back.

Graph reads ``start.dateTime`` as wall-clock time *in* ``start.timeZone`` and ignores any offset in
the string (graph-facts §3.4, prior-art §6). So an instant is sent as its wall-clock time in the
mailbox's zone together with that zone's Windows name; the wall-clock time is computed in the IANA
zone that the CLDR mapping gives for that very Windows name, so both sides use the same rules.

Rules (each adjustment is reported as a ``TimeNote``, never applied silently):

- Date-time without offset, read in the activity's IANA ``time_zone`` (RFC 5545 §3.3.5, the same
  as zoneinfo ``fold=0``): a time inside a DST gap is read with the offset in force *before* the
  gap (02:30 on a New York spring-forward day is 07:30Z = 03:30 EDT); a time that occurs twice is
  the first occurrence.
- Unknown or missing mailbox zone: times are sent in ``UTC``.
- An instant whose wall-clock time in the mailbox zone occurs twice (the repeated hour when clocks
  go back) cannot be told apart by Graph, so start and end are then both sent in ``UTC``: exact,
  Outlook still shows them in the user's zone.
- All-day: dates never move. Midnight of the start date to midnight of the (exclusive) end date,
  labelled with the mailbox zone (or UTC), ``isAllDay`` true.
"""

from __future__ import annotations

import functools
import re
import zoneinfo
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from tzlocal.windows_tz import tz_win, win_tz

from shared.rules.model import Activity

UTC_NAME = "UTC"
_NOT_ZONES = frozenset({"Factory", "localtime", "posixrules", "posix", "right"})

NoteKind = Literal["dst_gap", "dst_fold", "mailbox_zone_unknown", "ambiguous_in_mailbox_zone"]


@dataclass(frozen=True, slots=True)
class TimeNote:
    """An adjustment worth telling the CRM about (synced callback, status page)."""

    field: str  # "start" or "end"; "" when it concerns both
    kind: NoteKind
    message: str


@dataclass(frozen=True, slots=True)
class GraphTimes:
    start: dict[str, str]  # {"dateTime": ..., "timeZone": ...}
    end: dict[str, str]
    is_all_day: bool
    adjusted: tuple[TimeNote, ...] = ()


@functools.cache
def _iana_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) - _NOT_ZONES


def is_iana_zone(name: object) -> bool:
    return isinstance(name, str) and name in _iana_zones()


# tzlocal's table also lists three Canadian ids that no Windows version has and CLDR's windowsZones
# does not list (tests/unit/test_windows_zones.py finds exactly these). Graph takes Windows ids only,
# so the IANA zones tzlocal maps to them are sent as the Windows id CLDR gives their region.
_NOT_WINDOWS_IDS = {
    "Alberta Standard Time": "Mountain Standard Time",
    "British Columbia Standard Time": "Pacific Standard Time",
    "Manitoba Standard Time": "Central Standard Time",
}


def windows_to_iana(name: str | None) -> str | None:
    """CLDR's IANA zone for a Windows zone id (``mailboxSettings.timeZone``); None if unknown."""
    return win_tz.get(name) if name else None


def iana_to_windows(name: str | None) -> str | None:
    """CLDR's Windows zone id for an IANA zone (aliases included); None if there is none."""
    if not name:
        return None
    if name == "GMT":
        return UTC_NAME
    found = tz_win.get(name)
    return _NOT_WINDOWS_IDS.get(found, found) if found else None


def mailbox_zone(name: str | None) -> str | None:
    """The Windows zone id to send for a mailbox zone: Windows ids pass, IANA names are mapped."""
    if not name:
        return None
    if name in win_tz:
        return _NOT_WINDOWS_IDS.get(name, name)
    return iana_to_windows(name) if is_iana_zone(name) else None


def zone_for(name: str) -> zoneinfo.ZoneInfo:
    """The rules Graph applies for a ``timeZone`` value (Windows id, ``UTC`` or IANA name)."""
    iana = win_tz.get(name) or (name if is_iana_zone(name) else None)
    if iana is None:
        raise ValueError(f"unknown time zone {name!r}")
    return zoneinfo.ZoneInfo(iana)


def resolve_wall_clock(naive: datetime, zone: zoneinfo.ZoneInfo) -> tuple[datetime, NoteKind | None]:
    """Read a wall-clock time in ``zone`` (rule above); returns the UTC instant and what was odd."""
    first = naive.replace(tzinfo=zone, fold=0)
    instant = first.astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) != naive:
        return instant, "dst_gap"
    if first.utcoffset() != naive.replace(tzinfo=zone, fold=1).utcoffset():
        return instant, "dst_fold"
    return instant, None


def activity_instants(activity: Activity) -> tuple[datetime, datetime, tuple[TimeNote, ...]]:
    """Start and end of a timed activity as UTC instants, with the notes of the reading."""
    if activity.all_day:
        raise ValueError("all-day activities have dates, not instants")
    zone = zoneinfo.ZoneInfo(activity.time_zone)
    notes: list[TimeNote] = []
    out = []
    for field, value in (("start", activity.start), ("end", activity.end)):
        assert isinstance(value, datetime)
        if value.tzinfo is not None:
            out.append(value.astimezone(UTC))
            continue
        instant, kind = resolve_wall_clock(value, zone)
        out.append(instant)
        if kind == "dst_gap":
            local = instant.astimezone(zone)
            notes.append(TimeNote(field, kind, f"{value.isoformat()} does not exist in {activity.time_zone} "
                                  f"(DST gap); read as {local.isoformat()}"))
        elif kind == "dst_fold":
            notes.append(TimeNote(field, kind, f"{value.isoformat()} occurs twice in {activity.time_zone} "
                                  f"(DST fold); read as the first, {instant.astimezone(zone).isoformat()}"))
    return out[0], out[1], tuple(notes)


def _wall(value: datetime) -> str:
    """Graph's ``dateTime`` text: naive ISO wall-clock, microseconds only when there are any."""
    return value.replace(tzinfo=None).isoformat(timespec="microseconds" if value.microsecond else "seconds")


def _is_ambiguous(local: datetime) -> bool:
    return local.utcoffset() != local.replace(fold=1 - local.fold).utcoffset()


def to_graph_times(activity: Activity, mailbox_windows_tz: str | None) -> GraphTimes:
    notes: list[TimeNote] = []
    sent_zone = mailbox_zone(mailbox_windows_tz)
    if sent_zone is None:
        what = f"{mailbox_windows_tz!r} is not known" if mailbox_windows_tz else "is not known yet"
        notes.append(TimeNote("", "mailbox_zone_unknown", f"mailbox time zone {what}; times sent in UTC"))
        sent_zone = UTC_NAME

    if activity.all_day:
        assert isinstance(activity.start, date) and isinstance(activity.end, date)
        return GraphTimes(
            start={"dateTime": f"{activity.start.isoformat()}T00:00:00", "timeZone": sent_zone},
            end={"dateTime": f"{activity.end.isoformat()}T00:00:00", "timeZone": sent_zone},
            is_all_day=True,
            adjusted=tuple(notes),
        )

    start, end, read_notes = activity_instants(activity)
    notes.extend(read_notes)
    zone = zone_for(sent_zone)
    local_start, local_end = start.astimezone(zone), end.astimezone(zone)
    if _is_ambiguous(local_start) or _is_ambiguous(local_end):
        notes.append(TimeNote("", "ambiguous_in_mailbox_zone",
                              f"a time falls in the repeated hour of {sent_zone}; times sent in UTC"))
        sent_zone, local_start, local_end = UTC_NAME, start, end
    return GraphTimes(
        start={"dateTime": _wall(local_start), "timeZone": sent_zone},
        end={"dateTime": _wall(local_end), "timeZone": sent_zone},
        is_all_day=False,
        adjusted=tuple(notes),
    )


_GRAPH_DT = re.compile(r"(\d{4}-\d{2}-\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,7}))?)?)?")


def parse_graph_wall_clock(text: str) -> datetime:
    """Graph's ``dateTime`` (e.g. ``2017-04-15T11:00:00.0000000``, up to 7 fractional digits)."""
    m = _GRAPH_DT.fullmatch(text)
    if not m:
        raise ValueError(f"not a Graph dateTime: {text!r}")
    day, hh, mm, ss, frac = m.groups()
    micro = int((frac or "0").ljust(7, "0")[:6])
    return datetime.fromisoformat(day).replace(hour=int(hh or 0), minute=int(mm or 0),
                                               second=int(ss or 0), microsecond=micro)


def graph_to_utc(value: dict[str, str]) -> datetime:
    """A Graph ``{dateTime, timeZone}`` as an aware UTC instant (wall-clock read as above)."""
    naive = parse_graph_wall_clock(value["dateTime"])
    instant, _ = resolve_wall_clock(naive, zone_for(value.get("timeZone") or UTC_NAME))
    return instant


def graph_all_day_dates(start: dict[str, str], end: dict[str, str]) -> tuple[date, date]:
    """Dates of a Graph all-day event (end exclusive); the labels' zone does not move dates."""
    first = parse_graph_wall_clock(start["dateTime"]).date()
    last = parse_graph_wall_clock(end["dateTime"]).date()
    return first, max(last, first + timedelta(days=1))


def iso(moment: datetime) -> str:
    """A moment as RFC 3339 UTC with a ``Z``, as tables, callbacks and status show it."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
