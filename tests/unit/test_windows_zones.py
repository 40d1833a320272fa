"""The product's Windows <-> IANA table (``tzlocal.windows_tz``, read by ``shared.rules.event_time``)
against an independent copy of CLDR's windowsZones: the one Babel ships, which the Graph emulator
uses (``local.emulator.timezones``), so that the exact-time tests do not judge the product by a
copy of its own table.

Where they differ, the documented behaviour decides: Graph takes "any of the time zones supported
by Windows" (CLDR windowsZones lists them) or a documented IANA name (datetimetimezone.md)."""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta

from babel.core import get_global
from tzlocal.windows_tz import win_tz

from local.emulator import timezones as emulator_zones
from shared.rules.event_time import iana_to_windows, mailbox_zone, windows_to_iana, zone_for

CLDR = get_global("windows_zone_mapping")  # Windows id -> IANA zone ("001" rows)
# Windows ids in tzlocal's table that CLDR 47 (Babel 2.18) does not list, and the IANA zones tzlocal
# maps to them. Graph takes Windows ids only (the emulator, reading CLDR, refuses these as Graph
# documents), so the product sends CLDR's id for those zones instead (event_time._NOT_WINDOWS_IDS).
ONLY_IN_TZLOCAL = {
    "Alberta Standard Time": "America/Edmonton",
    "British Columbia Standard Time": "America/Vancouver",
    "Manitoba Standard Time": "America/Winnipeg",
}


def same_rules(a: str, b: str) -> bool:
    """Two IANA zones with the same UTC offset at every 6 hours from 1990 to 2040."""
    if a == b:
        return True
    za, zb = zoneinfo.ZoneInfo(a), zoneinfo.ZoneInfo(b)
    moment, end = datetime(1990, 1, 1, tzinfo=UTC), datetime(2040, 1, 1, tzinfo=UTC)
    while moment < end:
        if moment.astimezone(za).utcoffset() != moment.astimezone(zb).utcoffset():
            return False
        moment += timedelta(hours=6)
    return True


def test_the_emulator_reads_times_through_cldr_not_the_products_table() -> None:
    assert emulator_zones.WINDOWS_TO_IANA == CLDR
    for windows, iana in CLDR.items():
        assert emulator_zones.resolve(windows).key == iana
    # A mailbox named from an IANA zone gets a CLDR Windows id, never one only tzlocal knows.
    for iana in ("Europe/Madrid", "America/Bogota", "Asia/Kolkata", "Asia/Calcutta", "Australia/Sydney"):
        assert emulator_zones.windows_name(iana) in CLDR, iana


def test_every_windows_zone_the_product_knows_maps_as_cldr_says() -> None:
    for windows in win_tz:
        if windows in ONLY_IN_TZLOCAL:
            continue
        assert windows in CLDR, windows
        assert windows_to_iana(windows) == CLDR[windows], windows
        assert zone_for(windows).key == CLDR[windows], windows
        assert emulator_zones.resolve(windows).key == CLDR[windows], windows


def test_every_cldr_windows_zone_is_known_to_the_product_and_maps_back() -> None:
    for windows, iana in CLDR.items():
        assert windows_to_iana(windows) == iana, windows
        assert mailbox_zone(windows) == windows, windows
        back = iana_to_windows(iana)
        assert back is not None and same_rules(CLDR[back], iana), (iana, back)
        assert emulator_zones.windows_name(iana) in CLDR, iana


def test_the_tables_differ_only_on_three_canadian_ids() -> None:
    assert set(win_tz) - set(CLDR) == set(ONLY_IN_TZLOCAL)
    assert set(CLDR) - set(win_tz) == set()
    for windows, iana in ONLY_IN_TZLOCAL.items():
        assert win_tz[windows] == iana
        sent = iana_to_windows(iana)  # what the product sends for a mailbox in that zone
        assert sent in CLDR and emulator_zones.is_supported(sent), (iana, sent)
        assert same_rules(CLDR[sent], iana), (iana, sent)
        assert mailbox_zone(iana) == sent and mailbox_zone(windows) == sent
        assert not emulator_zones.is_supported(windows)  # not a CLDR (Windows) id: refused
        # The same rules as the CLDR zone of that region, so times would be right where accepted.
        cldr_id = emulator_zones.windows_name(iana) if iana in emulator_zones.IANA_TO_WINDOWS else None
        assert cldr_id is None or same_rules(CLDR[cldr_id], iana)
