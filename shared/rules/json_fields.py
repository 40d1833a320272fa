"""Reading one JSON object field by field, collecting ``(path, message)`` errors instead of raising.

Generic building blocks of ``shared.rules.contract``: ids, bounded text, booleans, integers, IANA zones,
http(s) URLs and RFC 3339 times. ``null`` counts as absent.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

from shared.rules.event_time import is_iana_zone

MAX_ID = 256
MAX_NAME = 255
MAX_URL = 2048
YEARS = (1900, 2199)  # keeps every conversion far from datetime's limits

_ID_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TEXT_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?"
    r"(?:([Zz])|([+-])(\d{2}):(\d{2}))?"
)


class Fields:
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

    def string(self, key: str, required: bool) -> str | None:
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
        value = self.string(key, required)
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
        value = self.string(key, required)
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
        value = self.string(key, required=True)
        if value is not None and not is_iana_zone(value):
            self.bad(key, "must be an IANA time zone such as Europe/Madrid")
            return None
        return value

    def obj_at(self, key: str, required: bool) -> Fields | None:
        value = self.raw(key, required)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.bad(key, "must be an object")
            return None
        return Fields(value, self.path(key), self.errors)

    def url(self, key: str) -> str | None:
        value = self.string(key, required=True)
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
        value = self.string(key, required=True)
        if value is None:
            return None
        parsed = parse_time(value)
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

    def instant(self, key: str) -> datetime | None:
        value = self.string(key, required=True)
        if value is None:
            return None
        parsed = parse_time(value)
        if not isinstance(parsed, datetime) or parsed.tzinfo is None:
            self.bad(key, "must be an RFC 3339 date-time with a UTC offset")
            return None
        return parsed


def parse_time(text: str) -> date | datetime | str:
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

