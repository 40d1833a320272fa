"""Time-zone names as Microsoft Graph accepts them on event start/end.

Source: GDC `api-reference/v1.0/resources/datetimetimezone.md`: "The TimeZone property can be set to any of
the time zones supported by Windows, as well as the following time zones names" (the IANA list below).
Windows names are mapped to IANA through CLDR's windowsZones table (the world-wide "001" row of each Windows
zone) as Babel ships it (`babel.core.get_global("windows_zone_mapping")`): deliberately not `tzlocal.windows_tz`,
the table the product uses, so that the exact-time tests compare the product with an independent reading of
the same CLDR data (tests/unit/test_windows_zones.py checks that the two agree on every zone the product
knows, and says where they differ). Times are only ever read through Babel's table.

Naming a mailbox's zone from an IANA name (the control API's ``time_zone``, e.g. "Europe/Madrid") needs
CLDR's per-territory rows, which Babel does not ship: an IANA zone that is some Windows zone's "001" zone
(or an old spelling of one) maps back through Babel's rows; any other is named through tzlocal's
territory rows, and only when the Windows id it gives is one CLDR (Babel) lists. That only picks the
name a test mailbox reports; the instants are still computed from Babel's table.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel.core import get_global
from tzlocal.windows_tz import tz_win as _territory_rows

# The documented "additional time zones" (IANA names), verbatim from the docs page. Where the page gives an
# alias in parentheses ("Europe/Kyiv (Kiev)") both spellings are accepted.
DOCUMENTED_IANA = """
Etc/GMT+12 Etc/GMT+11 Pacific/Honolulu America/Anchorage America/Santa_Isabel America/Los_Angeles
America/Phoenix America/Chihuahua America/Denver America/Guatemala America/Chicago America/Mexico_City
America/Regina America/Bogota America/New_York America/Indiana/Indianapolis America/Caracas America/Asuncion
America/Halifax America/Cuiaba America/La_Paz America/Santiago America/St_Johns America/Sao_Paulo
America/Argentina/Buenos_Aires America/Cayenne America/Godthab America/Montevideo America/Bahia Etc/GMT+2
Atlantic/Azores Atlantic/Cape_Verde Africa/Casablanca Etc/GMT Europe/London Atlantic/Reykjavik Europe/Berlin
Europe/Budapest Europe/Paris Europe/Warsaw Africa/Lagos Africa/Windhoek Europe/Bucharest Asia/Beirut
Africa/Cairo Asia/Damascus Africa/Johannesburg Europe/Kyiv Europe/Kiev Europe/Istanbul Asia/Jerusalem
Asia/Amman Asia/Baghdad Europe/Kaliningrad Asia/Riyadh Africa/Nairobi Asia/Tehran Asia/Dubai Asia/Baku
Europe/Moscow Indian/Mauritius Asia/Tbilisi Asia/Yerevan Asia/Kabul Asia/Karachi Asia/Toshkent Asia/Tashkent
Asia/Kolkata Asia/Colombo Asia/Kathmandu Asia/Astana Asia/Almaty Asia/Dhaka Asia/Yekaterinburg Asia/Yangon
Asia/Rangoon Asia/Bangkok Asia/Novosibirsk Asia/Shanghai Asia/Krasnoyarsk Asia/Singapore Australia/Perth
Asia/Taipei Asia/Ulaanbaatar Asia/Irkutsk Asia/Tokyo Asia/Seoul Australia/Adelaide Australia/Darwin
Australia/Brisbane Australia/Sydney Pacific/Port_Moresby Australia/Hobart Asia/Yakutsk Pacific/Guadalcanal
Asia/Vladivostok Pacific/Auckland Etc/GMT-12 Pacific/Fiji Asia/Magadan Pacific/Tongatapu Pacific/Apia
Pacific/Kiritimati
""".split()

# Spellings in the documented list that tzdata does not carry under that name.
_IANA_ALIASES = {"Asia/Toshkent": "Asia/Tashkent", "Asia/Astana": "Asia/Almaty"}

# CLDR windowsZones, "001" rows: Windows zone id -> IANA zone (e.g. "Romance Standard Time" -> "Europe/Paris").
WINDOWS_TO_IANA: dict[str, str] = dict(get_global("windows_zone_mapping"))
_CLDR_ALIASES: dict[str, str] = dict(get_global("zone_aliases"))  # old IANA spelling -> CLDR's


def _iana_to_windows() -> dict[str, str]:
    mapped: dict[str, str] = {}
    for windows, iana in sorted(WINDOWS_TO_IANA.items()):
        for spelling in {iana, _CLDR_ALIASES.get(iana, iana)}:
            mapped.setdefault(spelling, windows)  # a zone shared by two ids: the first by name
    for old, new in _CLDR_ALIASES.items():
        if new in mapped:
            mapped.setdefault(old, mapped[new])
    return mapped


IANA_TO_WINDOWS = _iana_to_windows()
_WINDOWS_BY_LOWER = {name.lower(): name for name in WINDOWS_TO_IANA}


class TimeZoneNotSupported(ValueError):
    """The name is neither a Windows time zone nor one of the documented IANA names."""

    def __init__(self, name: str) -> None:
        super().__init__(
            "A valid TimeZone value must be specified. The following TimeZone value is not supported: "
            f"'{name}'."
        )
        self.name = name


def resolve(name: str | None) -> ZoneInfo:
    """The zone for a Graph `timeZone` value; raises TimeZoneNotSupported."""
    if not isinstance(name, str) or not name.strip():
        raise TimeZoneNotSupported(str(name))
    windows = _WINDOWS_BY_LOWER.get(name.lower())
    if windows is not None:
        return _zone(WINDOWS_TO_IANA[windows], name)
    if name in DOCUMENTED_IANA:
        return _zone(_IANA_ALIASES.get(name, name), name)
    raise TimeZoneNotSupported(name)


def _zone(key: str, shown: str) -> ZoneInfo:
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise TimeZoneNotSupported(shown) from exc


def is_supported(name: str | None) -> bool:
    try:
        resolve(name)
    except TimeZoneNotSupported:
        return False
    return True


def windows_name(name: str) -> str:
    """Windows name for a Windows or IANA name (mailboxSettings.timeZone speaks Windows)."""
    windows = _WINDOWS_BY_LOWER.get(name.lower())
    if windows:
        return windows
    if name in ("UTC", "Etc/UTC"):
        return "UTC"
    canonical = _IANA_ALIASES.get(name, name)
    mapped = IANA_TO_WINDOWS.get(name) or IANA_TO_WINDOWS.get(canonical) or _territory_rows.get(canonical)
    if mapped in WINDOWS_TO_IANA:
        return mapped
    raise TimeZoneNotSupported(name)


_DT_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,7}))?)?)?"
    r"(?:Z|[+-]\d{2}:?\d{2})?$"
)


class BadDateTime(ValueError):
    pass


def parse_wall_clock(value: str) -> datetime:
    """Naive wall-clock datetime from a Graph `dateTime` string; any offset or `Z` is ignored (Graph reads
    the value in the accompanying `timeZone`). A bare date means midnight."""
    if not isinstance(value, str):
        raise BadDateTime(f"Cannot convert the literal '{value}' to the expected type 'Edm.DateTime'.")
    m = _DT_RE.match(value.strip())
    if not m:
        raise BadDateTime(f"Cannot convert the literal '{value}' to the expected type 'Edm.DateTime'.")
    y, mo, d, h, mi, s, frac = m.groups()
    micro = int((frac or "0").ljust(7, "0")[:6])
    try:
        return datetime(int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0), micro)
    except ValueError as exc:
        raise BadDateTime(f"Cannot convert the literal '{value}' to the expected type 'Edm.DateTime'.") from exc


def to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    """Wall-clock time in `zone` -> aware UTC instant.

    Documented choice (Graph/Exchange do not document it): a wall time that occurs twice (DST fold) is read
    as its first occurrence (fold=0); a wall time that does not exist (DST gap) is read with the offset in
    force before the transition, i.e. it lands after the gap (02:30 in a one-hour spring-forward gap becomes
    03:30 local).
    """
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


def format_graph(dt: datetime) -> str:
    """`2017-04-15T11:00:00.0000000` (7 fractional digits, no offset)."""
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond:06d}0"


def format_utc_z(dt: datetime) -> str:
    """DateTimeOffset as Graph writes it: `2017-04-15T03:00:50.7579581Z`."""
    return format_graph(dt.astimezone(UTC)) + "Z"


def render(instant: datetime, tz_name: str) -> dict:
    zone = resolve(tz_name)
    return {"dateTime": format_graph(instant.astimezone(zone).replace(tzinfo=None)), "timeZone": tz_name}


def render_date(day: date, tz_name: str) -> dict:
    """All-day events are floating: midnight of the date in whichever zone the answer uses."""
    return {"dateTime": format_graph(datetime(day.year, day.month, day.day)), "timeZone": tz_name}


def midnight_utc(day: date, zone: ZoneInfo) -> datetime:
    return to_utc(datetime(day.year, day.month, day.day), zone)


def days_between(a: date, b: date) -> int:
    return (b - a) // timedelta(days=1)
