from __future__ import annotations

import functools
import zoneinfo
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tzlocal.windows_tz import win_tz

from shared.rules.event_time import (
    graph_all_day_dates,
    graph_to_utc,
    iana_to_windows,
    mailbox_zone,
    parse_graph_wall_clock,
    resolve_wall_clock,
    to_graph_times,
    windows_to_iana,
    zone_for,
)
from shared.rules.model import Activity
from tests.unit.activity_builders import activity

PROPERTY = settings(max_examples=400, deadline=None)

ACTIVITY_ZONES = [
    "America/New_York", "Europe/Madrid", "Australia/Lord_Howe", "Asia/Kathmandu", "America/Bogota",
    "Australia/Sydney", "America/Santiago", "Pacific/Auckland", "Pacific/Chatham", "America/St_Johns",
    "Asia/Tehran", "America/Havana", "Africa/Casablanca", "Europe/London", "America/Sao_Paulo",
    "Pacific/Apia", "Pacific/Kiritimati", "America/Asuncion", "Europe/Dublin", "UTC",
]
MAILBOX_ZONES = [
    "Romance Standard Time", "Eastern Standard Time", "Lord Howe Standard Time", "Nepal Standard Time",
    "SA Pacific Standard Time", "AUS Eastern Standard Time", "Pacific SA Standard Time",
    "New Zealand Standard Time", "Chatham Islands Standard Time", "Newfoundland Standard Time",
    "Iran Standard Time", "Cuba Standard Time", "Morocco Standard Time", "GMT Standard Time",
    "E. South America Standard Time", "Samoa Standard Time", "Paraguay Standard Time", "UTC",
    "W. Europe Standard Time", "Pacific Standard Time", "Cen. Australia Standard Time",
]


@functools.cache
def transitions(zone_name: str, first_year: int = 1985, last_year: int = 2037) -> tuple[datetime, ...]:
    """UTC instants (to the second) where ``zone_name``'s offset changes."""
    zone = zoneinfo.ZoneInfo(zone_name)
    found = []
    t, end, step = datetime(first_year, 1, 1, tzinfo=UTC), datetime(last_year, 1, 1, tzinfo=UTC), timedelta(days=3)
    before = t.astimezone(zone).utcoffset()
    while t < end:
        after = (t + step).astimezone(zone).utcoffset()
        if after != before:
            lo, hi = t, t + step
            while hi - lo > timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                lo, hi = (mid, hi) if mid.astimezone(zone).utcoffset() == before else (lo, mid)
            found.append(hi.replace(microsecond=0))
        t, before = t + step, after
    return tuple(found)


ZONES_WITH_TRANSITIONS = sorted({*ACTIVITY_ZONES, *(win_tz[w] for w in MAILBOX_ZONES)})
ALL_TRANSITIONS = sorted({t for z in ZONES_WITH_TRANSITIONS for t in transitions(z)})

near_transition = st.builds(lambda t, s: t + timedelta(seconds=s),
                            st.sampled_from(ALL_TRANSITIONS), st.integers(-4 * 3600, 4 * 3600))
anywhen = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC))
instants = st.one_of(near_transition, near_transition, anywhen)
mailboxes = st.one_of(st.sampled_from(MAILBOX_ZONES), st.sampled_from(sorted(win_tz)))
durations = st.sampled_from([0, 60, 1800, 3600, 5400, 7200, 86400, 3 * 86400]).map(lambda s: timedelta(seconds=s))

BASE: Activity = activity()


def timed(start: datetime, end: datetime, zone: str = "Europe/Madrid") -> Activity:
    return replace(BASE, start=start, end=end, time_zone=zone, all_day=False)


# --- mapping ---------------------------------------------------------------------------------------

def test_windows_iana_mapping_is_cldr() -> None:
    assert windows_to_iana("Romance Standard Time") == "Europe/Paris"
    assert windows_to_iana("SA Pacific Standard Time") == "America/Bogota"
    assert windows_to_iana("Nepal Standard Time") in ("Asia/Kathmandu", "Asia/Katmandu")
    assert iana_to_windows("Europe/Madrid") == "Romance Standard Time"
    assert iana_to_windows("Asia/Kathmandu") == "Nepal Standard Time"
    assert iana_to_windows("Australia/Lord_Howe") == "Lord Howe Standard Time"
    assert iana_to_windows("Etc/UTC") == "UTC" and iana_to_windows("GMT") == "UTC"
    assert windows_to_iana("tzone://Microsoft/Custom") is None and windows_to_iana(None) is None
    assert iana_to_windows("Mars/Olympus") is None


def test_mailbox_zone_accepts_windows_ids_and_maps_iana_names() -> None:
    assert mailbox_zone("Romance Standard Time") == "Romance Standard Time"
    assert mailbox_zone("Europe/Madrid") == "Romance Standard Time"
    assert mailbox_zone("Greenwich Mean Time") is None  # not a Windows id (graph-facts §3.4)
    assert mailbox_zone("") is None


def test_every_windows_zone_maps_to_a_zone_zoneinfo_knows() -> None:
    for name in win_tz:
        assert zone_for(name).key == win_tz[name]


# --- reading date-times without offset (RFC 5545 §3.3.5) ----------------------------------------

def test_gap_reads_with_the_offset_before_the_gap() -> None:
    ny = zoneinfo.ZoneInfo("America/New_York")
    instant, kind = resolve_wall_clock(datetime(2025, 3, 9, 2, 30), ny)
    assert (instant, kind) == (datetime(2025, 3, 9, 7, 30, tzinfo=UTC), "dst_gap")
    assert instant.astimezone(ny).replace(tzinfo=None) == datetime(2025, 3, 9, 3, 30)


def test_fold_reads_the_first_occurrence() -> None:
    ny = zoneinfo.ZoneInfo("America/New_York")
    assert resolve_wall_clock(datetime(2025, 11, 2, 1, 30), ny) == (datetime(2025, 11, 2, 5, 30, tzinfo=UTC),
                                                                     "dst_fold")
    assert resolve_wall_clock(datetime(2025, 11, 2, 3, 0), ny) == (datetime(2025, 11, 2, 8, tzinfo=UTC), None)


def test_lord_howe_half_hour_gap_and_fold() -> None:
    lh = zoneinfo.ZoneInfo("Australia/Lord_Howe")
    # 2025-10-05 02:00 -> 02:30 (+10:30 -> +11)
    assert resolve_wall_clock(datetime(2025, 10, 5, 2, 15), lh) == (
        datetime(2025, 10, 4, 15, 45, tzinfo=UTC), "dst_gap")
    # 2025-04-06 02:00 -> 01:30 (+11 -> +10:30): 01:45 happens twice, the first is +11
    assert resolve_wall_clock(datetime(2025, 4, 6, 1, 45), lh) == (
        datetime(2025, 4, 5, 14, 45, tzinfo=UTC), "dst_fold")


def test_notes_name_the_field_and_the_rule() -> None:
    times = to_graph_times(timed(datetime(2025, 3, 9, 2, 30), datetime(2025, 11, 2, 1, 30), "America/New_York"),
                           "Romance Standard Time")
    assert [(n.field, n.kind) for n in times.adjusted] == [("start", "dst_gap"), ("end", "dst_fold")]
    assert "read as 2025-03-09T03:30:00-04:00" in times.adjusted[0].message
    assert "read as the first, 2025-11-02T01:30:00-04:00" in times.adjusted[1].message
    assert times.start == {"dateTime": "2025-03-09T08:30:00", "timeZone": "Romance Standard Time"}
    assert times.end == {"dateTime": "2025-11-02T06:30:00", "timeZone": "Romance Standard Time"}


def test_a_naive_time_sent_back_to_its_own_zone_avoids_the_repeated_hour() -> None:
    times = to_graph_times(timed(datetime(2025, 11, 2, 1, 30), datetime(2025, 11, 2, 2, 30), "America/New_York"),
                           "Eastern Standard Time")
    assert [n.kind for n in times.adjusted] == ["dst_fold", "ambiguous_in_mailbox_zone"]
    assert times.start == {"dateTime": "2025-11-02T05:30:00", "timeZone": "UTC"}


# --- instants into the mailbox's zone -------------------------------------------------------------

def test_instant_is_sent_as_wall_clock_in_the_mailbox_zone() -> None:
    a = timed(datetime(2025, 7, 1, 9, tzinfo=UTC), datetime(2025, 7, 1, 9, 45, tzinfo=UTC), "America/Bogota")
    times = to_graph_times(a, "Romance Standard Time")
    assert times.start == {"dateTime": "2025-07-01T11:00:00", "timeZone": "Romance Standard Time"}
    assert times.end == {"dateTime": "2025-07-01T11:45:00", "timeZone": "Romance Standard Time"}
    assert times.is_all_day is False and times.adjusted == ()


def test_naive_crm_time_in_bogota_for_a_madrid_mailbox() -> None:
    # The help-centre limitation this product removes: CRM in Bogota, Outlook in Madrid.
    a = timed(datetime(2025, 1, 15, 9), datetime(2025, 1, 15, 10), "America/Bogota")
    times = to_graph_times(a, "Romance Standard Time")
    assert times.start["dateTime"] == "2025-01-15T15:00:00"
    assert graph_to_utc(times.start) == datetime(2025, 1, 15, 14, tzinfo=UTC)


def test_kathmandu_quarter_hour_offset() -> None:
    a = timed(datetime(2025, 5, 1, 0, 0, tzinfo=UTC), datetime(2025, 5, 1, 1, tzinfo=UTC))
    assert to_graph_times(a, "Nepal Standard Time").start["dateTime"] == "2025-05-01T05:45:00"


@pytest.mark.parametrize("mailbox", [None, "", "Mars Standard Time", "tzone://Microsoft/Custom"])
def test_unknown_mailbox_zone_sends_utc_and_says_so(mailbox: str | None) -> None:
    a = timed(datetime(2025, 7, 1, 9, tzinfo=UTC), datetime(2025, 7, 1, 10, tzinfo=UTC))
    times = to_graph_times(a, mailbox)
    assert times.start == {"dateTime": "2025-07-01T09:00:00", "timeZone": "UTC"}
    assert [n.kind for n in times.adjusted] == ["mailbox_zone_unknown"]


def test_instant_in_the_mailbox_repeated_hour_is_sent_in_utc() -> None:
    # 05:30Z is 01:30 EDT, and 01:30 happens twice that night in New York.
    a = timed(datetime(2025, 11, 2, 5, 30, tzinfo=UTC), datetime(2025, 11, 2, 7, tzinfo=UTC))
    times = to_graph_times(a, "Eastern Standard Time")
    assert times.start == {"dateTime": "2025-11-02T05:30:00", "timeZone": "UTC"}
    assert times.end == {"dateTime": "2025-11-02T07:00:00", "timeZone": "UTC"}
    assert [n.kind for n in times.adjusted] == ["ambiguous_in_mailbox_zone"]


def test_sub_second_times_are_kept() -> None:
    a = timed(datetime(2025, 7, 1, 9, 0, 0, 500000, tzinfo=UTC), datetime(2025, 7, 1, 10, tzinfo=UTC))
    times = to_graph_times(a, "UTC")
    assert times.start["dateTime"] == "2025-07-01T09:00:00.500000"
    assert graph_to_utc(times.start) == a.start


# --- all-day ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mailbox", ["Romance Standard Time", "Line Islands Standard Time",
                                     "Dateline Standard Time", None])
def test_all_day_dates_never_move(mailbox: str | None) -> None:
    a = replace(BASE, all_day=True, start=date(2025, 3, 30), end=date(2025, 3, 31))
    times = to_graph_times(a, mailbox)
    zone = mailbox or "UTC"
    assert times.start == {"dateTime": "2025-03-30T00:00:00", "timeZone": zone}
    assert times.end == {"dateTime": "2025-03-31T00:00:00", "timeZone": zone}
    assert times.is_all_day is True
    assert graph_all_day_dates(times.start, times.end) == (date(2025, 3, 30), date(2025, 3, 31))


# --- reading Graph's times back ----------------------------------------------------------------------

def test_graph_times_with_seven_fractional_digits() -> None:
    assert parse_graph_wall_clock("2017-04-15T11:00:00.1234567") == datetime(2017, 4, 15, 11, 0, 0, 123456)
    assert graph_to_utc({"dateTime": "2017-04-15T11:00:00.0000000", "timeZone": "UTC"}) == datetime(
        2017, 4, 15, 11, tzinfo=UTC)
    assert graph_to_utc({"dateTime": "2025-07-01T11:00:00", "timeZone": "Europe/Madrid"}) == datetime(
        2025, 7, 1, 9, tzinfo=UTC)
    assert graph_to_utc({"dateTime": "2025-07-01T11:00:00", "timeZone": "Pacific Standard Time"}) == datetime(
        2025, 7, 1, 18, tzinfo=UTC)


@pytest.mark.parametrize("bad", [{"dateTime": "yesterday", "timeZone": "UTC"},
                                 {"dateTime": "2025-07-01T11:00:00", "timeZone": "Mars Standard Time"}])
def test_graph_times_that_cannot_be_read(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        graph_to_utc(bad)


# --- properties --------------------------------------------------------------------------------------

def graph_reads(value: dict[str, str], fold: int) -> datetime:
    """An independent model of Graph: wall-clock in the named zone, either occurrence."""
    zone = zoneinfo.ZoneInfo(win_tz.get(value["timeZone"], value["timeZone"]))
    return parse_graph_wall_clock(value["dateTime"]).replace(tzinfo=zone, fold=fold).astimezone(UTC)


@st.composite
def mailbox_and_instant(draw: st.DrawFn) -> tuple[str, datetime]:
    """A mailbox zone and an instant, often near one of that zone's own transitions."""
    mailbox = draw(mailboxes)
    own = transitions(win_tz[mailbox], 2000, 2037)
    if own and draw(st.booleans()):
        return mailbox, draw(st.sampled_from(own)) + timedelta(seconds=draw(st.integers(-3 * 3600, 3 * 3600)))
    return mailbox, draw(instants)


@PROPERTY
@given(mi=mailbox_and_instant(), length=durations, zone=st.sampled_from(ACTIVITY_ZONES))
def test_instants_round_trip_exactly_through_the_mailbox_zone(mi: tuple[str, datetime], length: timedelta,
                                                              zone: str) -> None:
    mailbox, start = mi
    a = timed(start, start + length, zone)
    times = to_graph_times(a, mailbox)
    assert times.start["timeZone"] in (mailbox_zone(mailbox), "UTC") and times.end["timeZone"] == times.start["timeZone"]
    for sent, instant in ((times.start, start), (times.end, start + length)):
        # whichever occurrence Graph picks, and whether or not the wall-clock exists: same instant
        assert graph_reads(sent, 0) == instant == graph_reads(sent, 1)
        assert graph_to_utc(sent) == instant
    assert all(n.kind == "ambiguous_in_mailbox_zone" for n in times.adjusted)


def rfc5545_oracle(naive: datetime, zone: zoneinfo.ZoneInfo, transition: datetime) -> tuple[datetime, str | None]:
    """The rule from its definition, not via zoneinfo's fold: first occurrence, offset before a gap."""
    before = (transition - timedelta(seconds=1)).astimezone(zone).utcoffset()
    after = (transition + timedelta(seconds=1)).astimezone(zone).utcoffset()
    assert before is not None and after is not None
    candidates = sorted({naive.replace(tzinfo=UTC) - off for off in (before, after)
                         if (naive.replace(tzinfo=UTC) - off).astimezone(zone).replace(tzinfo=None) == naive})
    if not candidates:
        return naive.replace(tzinfo=UTC) - before, "dst_gap"
    return candidates[0], "dst_fold" if len(candidates) == 2 else None


zoned_transition = st.sampled_from([(z, t) for z in ACTIVITY_ZONES for t in transitions(z, 1990, 2037)])


@PROPERTY
@given(zt=zoned_transition, minutes=st.integers(-180, 180), seconds=st.sampled_from([0, 0, 0, 1, 59]),
       mailbox=mailboxes)
def test_naive_times_near_transitions_follow_the_documented_rule(zt: tuple[str, datetime], minutes: int,
                                                                 seconds: int, mailbox: str) -> None:
    zone_name, transition = zt
    zone = zoneinfo.ZoneInfo(zone_name)
    naive = (transition.astimezone(zone) + timedelta(minutes=minutes, seconds=seconds)).replace(tzinfo=None)
    expected, kind = rfc5545_oracle(naive, zone, transition)
    times = to_graph_times(timed(naive, naive, zone_name), mailbox)
    assert graph_reads(times.start, 0) == expected == graph_reads(times.start, 1)
    assert [n.kind for n in times.adjusted if n.field == "start"] == ([kind] if kind else [])


@PROPERTY
@given(first=st.dates(min_value=date(1950, 1, 1), max_value=date(2150, 12, 30)), days=st.integers(1, 400),
       mailbox=st.one_of(st.none(), mailboxes))
def test_all_day_dates_never_move_anywhere(first: date, days: int, mailbox: str | None) -> None:
    a = replace(BASE, all_day=True, start=first, end=first + timedelta(days=days))
    times = to_graph_times(a, mailbox)
    assert times.is_all_day
    assert times.start["dateTime"] == f"{first.isoformat()}T00:00:00"
    assert times.end["dateTime"] == f"{(first + timedelta(days=days)).isoformat()}T00:00:00"
    assert graph_all_day_dates(times.start, times.end) == (a.start, a.end)
