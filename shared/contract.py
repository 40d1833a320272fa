"""Parsing and validating what the CRM sends (design §3) into ``shared.model`` records.

Every bad field is reported, not just the first, as ``(field_path, message)`` pairs such as
``("data.start", "must be ...")``; the HTTP layer turns ``ValidationError.as_json()`` into a 400.
Unknown extra fields are ignored; ``null`` counts as absent.

Rules worth knowing:
- ids are non-empty strings of at most 256 characters without control characters (numbers are
  rejected: ``1`` and ``"1"`` must not silently become the same id).
- text may contain tab/newline/CR but no other C0 control character (Exchange stores XML 1.0,
  which cannot carry them) and no unpaired surrogate.
- ``start``/``end``: RFC 3339 date-time with offset, a date-time without offset (read in
  ``time_zone``, see ``shared.event_time``), or, exactly when ``all_day`` is true, a date
  ``YYYY-MM-DD``. Years 1900-2199. All-day ``end`` is exclusive; an ``end`` equal to ``start`` is
  accepted and means a one-day activity (normalised to start + 1 day). ``end`` before ``start``
  is rejected; a timed activity may last zero minutes.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, get_args
from urllib.parse import urlsplit

from shared.event_time import is_iana_zone, resolve_wall_clock
from shared.model import (
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

MAX_ID = 256
MAX_NAME = 255  # subject, names, location, type name
MAX_DESCRIPTION_BYTES = 32 * 1024  # UTF-8
MAX_URL = 2048
MAX_EMAIL = 254
MAX_PHONE = 64
MAX_REMINDER_MINUTES = 40320  # four weeks, the largest reminder Outlook offers
MAX_VERSION = 2**63 - 1  # fits Table Storage Int64
YEARS = (1900, 2199)

_ID_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TEXT_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))?"
)
_EMAIL = re.compile(r"[^@\s<>\"'()\[\]\\,;:]+@[^@\s<>\"'()\[\]\\,;:]+")
_LOCALE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")


class ValidationError(Exception):
    """CRM input that cannot be accepted; ``errors`` names every bad field (messages in English)."""

    def __init__(self, errors: Sequence[tuple[str, str]]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(f"{path}: {message}" for path, message in self.errors))

    def as_json(self) -> dict[str, Any]:
        return {"error": "invalid_request",
                "fields": [{"field": path, "message": message} for path, message in self.errors]}


class _Fields:
    """Reads one JSON object, collecting errors under a path prefix."""

    def __init__(self, obj: dict[str, Any], prefix: str, errors: list[tuple[str, str]]) -> None:
        self.obj, self.prefix, self.errors = obj, prefix, errors

    def path(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def bad(self, key: str, message: str) -> None:
        self.errors.append((self.path(key), message))

    def raw(self, key: str, required: bool) -> Any:
        value = self.obj.get(key)
        if value is None and required:
            self.bad(key, "is required")
        return value

    def _string(self, key: str, required: bool) -> str | None:
        value = self.raw(key, required)
        if value is None:
            return None
        if not isinstance(value, str):
            self.bad(key, "must be a string")
            return None
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            self.bad(key, "must be valid Unicode (unpaired surrogate)")
            return None
        return value

    def id(self, key: str, required: bool = True) -> str | None:
        value = self._string(key, required)
        if value is None:
            return None
        if not value:
            self.bad(key, "must not be empty")
        elif len(value) > MAX_ID:
            self.bad(key, f"must be at most {MAX_ID} characters")
        elif _ID_FORBIDDEN.search(value):
            self.bad(key, "must not contain control characters")
        else:
            return value
        return None

    def text(self, key: str, max_chars: int = MAX_NAME, *, required: bool = True,
             max_bytes: int | None = None) -> str | None:
        value = self._string(key, required)
        if value is None:
            return None
        if len(value) > max_chars:
            self.bad(key, f"must be at most {max_chars} characters")
        elif max_bytes is not None and len(value.encode("utf-8")) > max_bytes:
            self.bad(key, f"must be at most {max_bytes} bytes in UTF-8")
        elif _TEXT_FORBIDDEN.search(value):
            self.bad(key, "must not contain control characters other than tab and newline")
        else:
            return value
        return None

    def boolean(self, key: str, default: bool | None = None) -> bool | None:
        value = self.raw(key, required=default is None)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.bad(key, "must be true or false")
            return None
        return value

    def integer(self, key: str, low: int, high: int, *, required: bool = True) -> int | None:
        value = self.raw(key, required)
        if value is None:
            return None
        if type(value) is not int:  # bool and float are not integers here
            self.bad(key, "must be an integer")
        elif not low <= value <= high:
            self.bad(key, f"must be between {low} and {high}")
        else:
            return value
        return None

    def zone(self, key: str) -> str | None:
        value = self._string(key, required=True)
        if value is not None and not is_iana_zone(value):
            self.bad(key, "must be an IANA time zone such as Europe/Madrid")
            return None
        return value

    def obj_at(self, key: str, required: bool) -> _Fields | None:
        value = self.raw(key, required)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.bad(key, "must be an object")
            return None
        return _Fields(value, self.path(key), self.errors)

    def url(self, key: str) -> str | None:
        value = self._string(key, required=True)
        if value is None:
            return None
        parts = urlsplit(value) if len(value) <= MAX_URL else None
        if parts is None:
            self.bad(key, f"must be at most {MAX_URL} characters")
        elif parts.scheme.lower() not in ("http", "https") or not parts.netloc:
            self.bad(key, "must be an absolute http or https URL")
        elif re.search(r"[\s\x00-\x1f\x7f-\x9f]", value):
            self.bad(key, "must not contain spaces or control characters")
        else:
            return value
        return None

    def when(self, key: str, all_day: bool | None) -> date | datetime | None:
        value = self._string(key, required=True)
        if value is None:
            return None
        parsed = _parse_time(value)
        if isinstance(parsed, str):
            self.bad(key, parsed)
            return None
        if all_day and isinstance(parsed, datetime):
            self.bad(key, "must be a date (YYYY-MM-DD) when all_day is true")
            return None
        if all_day is False and not isinstance(parsed, datetime):
            self.bad(key, "must be a date-time; a date alone needs all_day true")
            return None
        return parsed


def _parse_time(text: str) -> date | datetime | str:
    """A date, a naive or an aware datetime; an error message (str) when it is neither."""
    try:
        if m := _DATE.fullmatch(text):
            value: date | datetime = date(int(m[1]), int(m[2]), int(m[3]))
        elif m := _DATETIME.fullmatch(text):
            micro = int((m[7] or "0").ljust(6, "0")[:6])
            value = datetime(int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6] or 0), micro)
            if m[8]:
                value = value.replace(tzinfo=UTC)
            elif m[9]:
                hours, minutes = int(m[10]), int(m[11])
                if hours > 23 or minutes > 59:
                    return "has an invalid UTC offset"
                sign = 1 if m[9] == "+" else -1
                value = value.replace(tzinfo=timezone(sign * timedelta(hours=hours, minutes=minutes)))
        else:
            return "must be an RFC 3339 date-time (with or without offset) or a date YYYY-MM-DD"
    except ValueError:
        return "is not a valid calendar date or time"
    if not YEARS[0] <= value.year <= YEARS[1]:
        return f"must be between the years {YEARS[0]} and {YEARS[1]}"
    return value


def _party(parent: _Fields, key: str) -> Party | None:
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


def _check_order(f: _Fields, start: date | datetime, end: date | datetime, all_day: bool,
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
    instants = [v if v.tzinfo else resolve_wall_clock(v, zoneinfo.ZoneInfo(zone))[0]  # type: ignore[arg-type]
                for v in (start, end)]
    if instants[1] < instants[0]:
        f.bad("end", "must not be before start")
        return None
    return end


def _activity(f: _Fields) -> Activity | None:
    aid = f.id("id")
    version = f.integer("version", 0, MAX_VERSION)
    owner = f.id("owner_user_id")
    type_ = _activity_type(f.obj_at("type", required=True))
    status = f._string("status", required=True)
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
    if f.errors:
        return None
    return Activity(
        id=aid, version=version, owner_user_id=owner, type=type_, status=status,  # type: ignore[arg-type]
        subject=subject, description=description or "", start=start, end=end,  # type: ignore[arg-type]
        time_zone=zone, all_day=all_day, url=url, show_in_calendar=show,  # type: ignore[arg-type]
        location=location or None, reminder_minutes=reminder, deal=deal, company=company, contact=contact,
    )


def _activity_type(f: _Fields | None) -> ActivityType | None:
    if f is None:
        return None
    tid, name, show = f.id("id"), f.text("name"), f.boolean("show_in_calendar")
    if tid is None or name is None or show is None:
        return None
    return ActivityType(tid, name, show)


def _raise_if(errors: list[tuple[str, str]]) -> None:
    if errors:
        raise ValidationError(errors)


def _root(obj: object, prefix: str, errors: list[tuple[str, str]]) -> _Fields | None:
    if isinstance(obj, dict):
        return _Fields(obj, prefix, errors)
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


def _data(kind: str, f: _Fields) -> Any:
    if kind == "activity.upserted":
        return _activity(f)
    if kind == "activity.deleted":
        return ActivityDeleted(f.id("id"), f.id("owner_user_id"),  # type: ignore[arg-type]
                               f.integer("version", 0, MAX_VERSION))  # type: ignore[arg-type]
    if kind == "activity_type.updated":
        return ActivityTypeUpdated(f.id("id"), f.text("name"), f.boolean("show_in_calendar"))  # type: ignore[arg-type]
    user_id, zone = f.id("user_id"), f.zone("time_zone")
    locale = f.text("locale", 35)
    if locale is not None and not _LOCALE.fullmatch(locale):
        f.bad("locale", "must be a language tag such as es or en-US")
    return UserUpdated(user_id, zone, locale)  # type: ignore[arg-type]


def parse_crm_event(obj: object) -> CrmEvent:
    """A ``POST /api/crm/events`` body; ``data`` errors are reported as ``data.<field>``."""
    errors: list[tuple[str, str]] = []
    f = _root(obj, "", errors)
    if f is None:
        raise ValidationError(errors)
    event_id, tenant = f.id("id"), f.id("tenant_id")
    kind = f._string("type", required=True)
    if kind is not None and kind not in get_args(EventType):
        f.bad("type", "must be one of " + ", ".join(get_args(EventType)))
        kind = None
    occurred = f.when("occurred_at", all_day=False)
    if isinstance(occurred, datetime) and occurred.tzinfo is None:
        f.bad("occurred_at", "must include a UTC offset")
    data = f.obj_at("data", required=True)
    payload = _data(kind, data) if kind and data else None
    _raise_if(errors)
    return CrmEvent(event_id, kind, tenant, occurred, payload)  # type: ignore[arg-type]
