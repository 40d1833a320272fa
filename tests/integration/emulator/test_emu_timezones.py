"""Start/end are wall-clock in their timeZone; answers in UTC unless Prefer: outlook.timezone."""

from __future__ import annotations

import pytest

from .conftest import event_body

pytestmark = pytest.mark.integration

# (zone name as sent, local wall-clock start, expected UTC start) on both sides of DST transitions.
CASES = [
    # Europe/Madrid (Windows "Romance Standard Time"): CET->CEST on 2030-03-31 02:00 local.
    ("Romance Standard Time", "2030-03-30T10:00:00", "2030-03-30T09:00:00.0000000"),
    ("Romance Standard Time", "2030-03-31T10:00:00", "2030-03-31T08:00:00.0000000"),
    # New York: EST->EDT on 2030-03-10.
    ("America/New_York", "2030-03-09T09:00:00", "2030-03-09T14:00:00.0000000"),
    ("Eastern Standard Time", "2030-03-11T09:00:00", "2030-03-11T13:00:00.0000000"),
    # Sydney (southern hemisphere): AEDT->AEST on 2030-04-07.
    ("AUS Eastern Standard Time", "2030-04-06T09:00:00", "2030-04-05T22:00:00.0000000"),
    ("Australia/Sydney", "2030-04-08T09:00:00", "2030-04-07T23:00:00.0000000"),
    # Lord Howe: +11 -> +10:30 (a 30-minute shift) on 2030-04-07.
    ("Lord Howe Standard Time", "2030-04-06T09:00:00", "2030-04-05T22:00:00.0000000"),
    ("Lord Howe Standard Time", "2030-04-08T09:00:00", "2030-04-07T22:30:00.0000000"),
    # Chatham has no Windows-documented IANA alias but a Windows name; +13:45 -> +12:45 on 2030-04-07.
    ("Chatham Islands Standard Time", "2030-04-08T09:00:00", "2030-04-07T20:15:00.0000000"),
    # Fractional offset without DST.
    ("India Standard Time", "2030-07-01T09:00:00", "2030-07-01T03:30:00.0000000"),
]


@pytest.mark.parametrize(("tz", "local", "utc"), CASES)
def test_wall_clock_is_read_in_the_given_zone(graph, tz, local, utc):
    r = graph("POST", "/me/events", json=event_body(start=local, end=local.replace("T09", "T10").replace(
        "T10:00", "T11:00"), tz=tz))
    assert r.status_code == 201, r.text
    assert r.json()["start"] == {"dateTime": utc, "timeZone": "UTC"}
    assert r.json()["originalStartTimeZone"] == tz
    again = graph("GET", f"/me/events/{r.json()['id']}", headers={"Prefer": f'outlook.timezone="{tz}"'})
    assert again.json()["start"]["dateTime"] == local + ".0000000"
    assert again.headers["Preference-Applied"] == f'outlook.timezone="{tz}"'


def test_offsets_in_the_string_are_ignored(graph):
    r = graph("POST", "/me/events", json=event_body(start="2030-06-01T10:00:00+05:00", end="2030-06-01T11:00:00Z",
                                                    tz="Pacific Standard Time"))
    assert r.json()["start"]["dateTime"] == "2030-06-01T17:00:00.0000000"
    assert r.json()["end"]["dateTime"] == "2030-06-01T18:00:00.0000000"


def test_unsupported_time_zones_are_rejected(graph):
    for tz in ("Greenwich Mean Time", "Mars/Olympus_Mons", "Europe/Madrid", "Australia/Lord_Howe"):
        r = graph("POST", "/me/events", json=event_body(tz=tz))
        assert r.status_code == 400, tz
        assert r.json()["error"]["code"] == "TimeZoneNotSupportedException"
        assert f"'{tz}'" in r.json()["error"]["message"]


def test_prefer_timezone_on_create_and_lists(graph):
    r = graph("POST", "/me/events", json=event_body(start="2030-01-15T09:00:00", end="2030-01-15T10:00:00",
                                                    tz="UTC"), headers={"Prefer": 'outlook.timezone="Tokyo Standard Time"'})
    assert r.json()["start"] == {"dateTime": "2030-01-15T18:00:00.0000000", "timeZone": "Tokyo Standard Time"}
    listed = graph("GET", "/me/events", headers={"Prefer": 'outlook.timezone="Europe/Paris"'}).json()["value"]
    assert listed[0]["start"]["dateTime"] == "2030-01-15T10:00:00.0000000"


def test_dst_gap_and_fold_rules(graph):
    # 02:30 does not exist in Madrid on 2030-03-31: read with the pre-transition offset (lands at 03:30 CEST).
    gap = graph("POST", "/me/events", json=event_body(start="2030-03-31T02:30:00", end="2030-03-31T04:00:00",
                                                      tz="Romance Standard Time")).json()
    assert gap["start"]["dateTime"] == "2030-03-31T01:30:00.0000000"
    # 02:30 happens twice on 2030-10-27: the first occurrence (CEST) is used.
    fold = graph("POST", "/me/events", json=event_body(start="2030-10-27T02:30:00", end="2030-10-27T04:00:00",
                                                       tz="Romance Standard Time")).json()
    assert fold["start"]["dateTime"] == "2030-10-27T00:30:00.0000000"


def test_all_day_rules(graph):
    ok = graph("POST", "/me/events", json=event_body(start="2030-05-01T00:00:00", end="2030-05-03T00:00:00",
                                                     tz="Romance Standard Time", isAllDay=True))
    assert ok.status_code == 201
    assert ok.json()["start"] == {"dateTime": "2030-05-01T00:00:00.0000000", "timeZone": "UTC"}
    assert ok.json()["end"]["dateTime"] == "2030-05-03T00:00:00.0000000"
    date_only = graph("POST", "/me/events", json=event_body(start="2030-05-01", end="2030-05-02", isAllDay=True))
    assert date_only.status_code == 201
    not_midnight = graph("POST", "/me/events", json=event_body(start="2030-05-01T09:00:00",
                                                               end="2030-05-02T00:00:00", isAllDay=True))
    assert not_midnight.status_code == 400
    mixed = event_body(start="2030-05-01T00:00:00", end="2030-05-02T00:00:00", isAllDay=True)
    mixed["end"]["timeZone"] = "Romance Standard Time"
    assert graph("POST", "/me/events", json=mixed).status_code == 400
    zero = graph("POST", "/me/events", json=event_body(start="2030-05-01T00:00:00", end="2030-05-01T00:00:00",
                                                       isAllDay=True))
    assert zero.status_code == 400
    backwards = graph("POST", "/me/events", json=event_body(start="2030-05-01T10:00:00", end="2030-05-01T09:00:00"))
    assert backwards.status_code == 400


def test_patch_start_only_keeps_end_and_new_zone_is_honoured(graph):
    ev = graph("POST", "/me/events", json=event_body(start="2030-03-04T10:00:00", end="2030-03-04T12:00:00")).json()
    r = graph("PATCH", f"/me/events/{ev['id']}", json={"start": {"dateTime": "2030-03-04T10:30:00",
                                                                 "timeZone": "W. Europe Standard Time"}})
    assert r.status_code == 200
    assert r.json()["start"]["dateTime"] == "2030-03-04T09:30:00.0000000"
    assert r.json()["end"]["dateTime"] == "2030-03-04T12:00:00.0000000"
    assert r.json()["originalStartTimeZone"] == "W. Europe Standard Time"
    bad = graph("PATCH", f"/me/events/{ev['id']}", json={"end": {"dateTime": "2030-03-04T11:00:00",
                                                                 "timeZone": "Nowhere/Land"}})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "TimeZoneNotSupportedException"


def test_mailbox_time_zone_set_through_the_control_api(graph, ctl, user):
    ctl.set_time_zone(user["id"], "Australia/Sydney")
    assert graph("GET", "/me/mailboxSettings").json()["timeZone"] == "AUS Eastern Standard Time"
    ctl.set_time_zone(user["id"], "Lord Howe Standard Time")
    assert graph("GET", f"/users/{user['id']}/mailboxSettings/timeZone").json()["value"] == \
        "Lord Howe Standard Time"
