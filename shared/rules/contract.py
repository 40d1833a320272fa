"""Parsing and validating what the CRM sends (design §3) into ``shared.rules.model`` records.

Every bad field is reported, not just the first, as ``(field_path, message)`` pairs such as
``("data.start", "must be ...")``; the HTTP layer turns ``ValidationError.as_json()`` into a 400.
Unknown extra fields are ignored; ``null`` counts as absent.

Rules worth knowing:
- ids are non-empty strings of at most 256 characters without control characters (numbers are
  rejected: ``1`` and ``"1"`` must not silently become the same id).
- text may contain tab/newline/CR but no other C0 control character (Exchange stores XML 1.0,
  which cannot carry them) and no unpaired surrogate.
- ``start``/``end``: RFC 3339 date-time with offset, a date-time without offset (read in
  ``time_zone``, see ``shared.rules.event_time``), or, exactly when ``all_day`` is true, a date
  ``YYYY-MM-DD``. Years 1900-2199. All-day ``end`` is exclusive; an ``end`` equal to ``start`` is
  accepted and means a one-day activity (normalised to start + 1 day). ``end`` before ``start``
  is rejected; a timed activity may last zero minutes.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any, TypeVar, get_args

from shared.rules.event_time import resolve_wall_clock
from shared.rules.json_fields import Fields
from shared.rules.model import (
    Activity,
    ActivityDeleted,
    ActivityType,
    ActivityTypeUpdated,
    CrmEvent,
    EventType,
    Party,
    Status,
    UserUpdated,
)

MAX_DESCRIPTION_BYTES = 32 * 1024  # UTF-8
MAX_EMAIL = 254
MAX_PHONE = 64
MAX_REMINDER_MINUTES = 40320  # four weeks, the largest reminder Outlook offers
MAX_VERSION = 2**63 - 1  # fits Table Storage Int64

_EMAIL = re.compile(r"[^@\s<>\"'()\[\]\\,;:]+@[^@\s<>\"'()\[\]\\,;:]+")
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")
T = TypeVar("T")


class ValidationError(Exception):
    """CRM input that cannot be accepted; ``errors`` names every bad field (messages in English)."""

    def __init__(self, errors: Sequence[tuple[str, str]]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(f"{path}: {message}" for path, message in self.errors))

    def as_json(self) -> dict[str, Any]:
        return {"error": "invalid_request",
                "fields": [{"field": path, "message": message} for path, message in self.errors]}


def _party(parent: Fields, key: str) -> Party | None:
    f = parent.obj_at(key, required=False)
    if f is None:
        return None
    pid, name = f.id("id"), f.text("name")
    email = f.text("email", MAX_EMAIL, required=False)
    if email is not None and not _EMAIL.fullmatch(email):
        f.bad("email", "must be an email address")
        email = None
    phone = f.text("phone", MAX_PHONE, required=False)
    if pid is None or name is None:
        return None
    return Party(pid, name, email, phone)


def _check_order(f: Fields, start: date | datetime, end: date | datetime, all_day: bool,
                 zone: str | None) -> date | datetime | None:
    """The (possibly normalised) end, or None after reporting why it is before start."""
    if all_day:
        assert isinstance(start, date) and isinstance(end, date)
        if end == start:
            return start + timedelta(days=1)
        if end < start:
            f.bad("end", "must not be before start")
            return None
        return end
    assert isinstance(start, datetime) and isinstance(end, datetime)
    if zone is None and (start.tzinfo is None or end.tzinfo is None):
        return end  # time_zone is already reported; cannot compare
    instants = [v if v.tzinfo else resolve_wall_clock(v, zoneinfo.ZoneInfo(zone or "UTC"))[0]
                for v in (start, end)]
    if instants[1] < instants[0]:
        f.bad("end", "must not be before start")
        return None
    return end


def _activity(f: Fields) -> Activity | None:
    aid = f.id("id")
    version = f.integer("version", 0, MAX_VERSION)
    owner = f.id("owner_user_id")
    type_ = _activity_type(f.obj_at("type", required=True))
    status = f.string("status", required=True)
    if status is not None and status not in get_args(Status):
        f.bad("status", "must be one of planned, completed, cancelled")
        status = None
    show = f.boolean("show_in_calendar", default=True)
    subject = f.text("subject")
    description = f.text("description", MAX_DESCRIPTION_BYTES, max_bytes=MAX_DESCRIPTION_BYTES,
                         required=False)
    zone = f.zone("time_zone")
    all_day = f.boolean("all_day", default=False)
    start, end = f.when("start", all_day), f.when("end", all_day)
    if start is not None and end is not None and all_day is not None:
        end = _check_order(f, start, end, all_day, zone)
    location = f.text("location", required=False)
    reminder = f.integer("reminder_minutes", 0, MAX_REMINDER_MINUTES, required=False)
    deal, company, contact = _party(f, "deal"), _party(f, "company"), _party(f, "contact")
    url = f.url("url")
    adopt = f.id("outlook_event_id", required=False)
    if f.errors:
        return None
    # No error recorded, so every required value above is set.
    return Activity(
        id=_set(aid), version=_set(version), owner_user_id=_set(owner), type=_set(type_),
        status=_set(status),  # type: ignore[arg-type]  # checked against Status above
        subject=_set(subject), description=description or "", start=_set(start), end=_set(end),
        time_zone=_set(zone), all_day=_set(all_day), url=_set(url), show_in_calendar=_set(show),
        location=location or None, reminder_minutes=reminder, deal=deal, company=company, contact=contact,
        outlook_event_id=adopt or None,
    )


def _activity_type(f: Fields | None) -> ActivityType | None:
    if f is None:
        return None
    tid, name, show = f.id("id"), f.text("name"), f.boolean("show_in_calendar")
    online = f.boolean("online_meeting", default=False)
    if tid is None or name is None or show is None or online is None:
        return None
    return ActivityType(tid, name, show, online)


def _raise_if(errors: list[tuple[str, str]]) -> None:
    if errors:
        raise ValidationError(errors)


def _root(obj: object, prefix: str, errors: list[tuple[str, str]]) -> Fields | None:
    if isinstance(obj, dict):
        return Fields(obj, prefix, errors)
    errors.append((prefix or "$", "must be a JSON object"))
    return None


def parse_activity(obj: object, path: str = "") -> Activity:
    """An activity (``data`` of ``activity.upserted``, or a backfill item with ``path="activities[3]"``)."""
    errors: list[tuple[str, str]] = []
    f = _root(obj, path, errors)
    activity = _activity(f) if f else None
    _raise_if(errors)
    assert activity is not None
    return activity


def _data(kind: str, f: Fields) -> Activity | ActivityDeleted | ActivityTypeUpdated | UserUpdated | None:
    """The record for ``kind``, or None once any error was recorded (every bad field is still named)."""
    if kind == "activity.upserted":
        return _activity(f)
    if kind == "activity.deleted":
        aid, owner, version = f.id("id"), f.id("owner_user_id"), f.integer("version", 0, MAX_VERSION)
        return None if f.errors else ActivityDeleted(_set(aid), _set(owner), _set(version))
    if kind == "activity_type.updated":
        tid, name, show = f.id("id"), f.text("name"), f.boolean("show_in_calendar")
        online = f.boolean("online_meeting", default=False)
        return None if f.errors else ActivityTypeUpdated(_set(tid), _set(name), _set(show), bool(online))
    user_id, zone = f.id("user_id"), f.zone("time_zone")
    locale = f.text("locale", 35)
    if locale is not None and not _LOCALE.fullmatch(locale):
        f.bad("locale", "must be a language tag such as es or en-US")
    return None if f.errors else UserUpdated(_set(user_id), _set(zone), _set(locale))


def parse_crm_event(obj: object) -> CrmEvent:
    """A ``POST /api/crm/events`` body; ``data`` errors are reported as ``data.<field>``."""
    errors: list[tuple[str, str]] = []
    f = _root(obj, "", errors)
    if f is None:
        raise ValidationError(errors)
    event_id, tenant = f.id("id"), f.id("tenant_id")
    kind = f.string("type", required=True)
    if kind is not None and kind not in get_args(EventType):
        f.bad("type", "must be one of " + ", ".join(get_args(EventType)))
        kind = None
    occurred = f.instant("occurred_at")
    data = f.obj_at("data", required=True)
    payload = _data(kind, data) if kind and data else None
    _raise_if(errors)
    return CrmEvent(_set(event_id), _set(kind), _set(tenant), _set(occurred), _set(payload))  # type: ignore[arg-type]


def _set(value: T | None) -> T:
    """A value read without an error: Fields records an error for every missing or bad one, and
    callers check for errors first, so None here is a bug, not bad input."""
    if value is None:
        raise AssertionError("a field was read as missing without an error recorded")
    return value
