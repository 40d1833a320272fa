"""Calendars with extended properties, deleting a calendar, per-calendar events, and online meetings
(`allowedOnlineMeetingProviders` per account kind, `onlineMeeting.joinUrl`), as graph-facts-2 §5-6 describe."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from .conftest import Graph, event_body, raw_token

pytestmark = pytest.mark.integration
MARK = "String {835ac582-803a-4cbe-8e1f-6eb316b033d1} Name crmCalendar"
FILTER = f"singleValueExtendedProperties/Any(ep: ep/id eq '{MARK}' and ep/value eq 'ours')"


def test_a_calendar_is_found_by_its_extended_property_never_by_name(graph) -> None:
    made = graph("POST", "/me/calendars", json={"name": "CRM", "singleValueExtendedProperties": [
        {"id": MARK, "value": "ours"}]})
    assert made.status_code == 201 and "singleValueExtendedProperties" not in made.json()
    assert graph("POST", "/me/calendars", json={"name": "crm"}).json()["error"]["code"] == "ErrorFolderExists"
    cid = made.json()["id"]
    assert graph("PATCH", f"/me/calendars/{cid}", json={"name": "Renamed"}).status_code == 200

    found = graph("GET", "/me/calendars", params={"$filter": FILTER}).json()["value"]

    assert [(c["id"], c["name"]) for c in found] == [(cid, "Renamed")]
    expanded = graph("GET", f"/me/calendars/{cid}",
                     params={"$expand": f"singleValueExtendedProperties($filter=id eq '{MARK}')"}).json()
    assert expanded["singleValueExtendedProperties"] == [{"id": MARK, "value": "ours"}]


def test_deleting_a_calendar_deletes_its_events_but_the_default_cannot_be_deleted(graph) -> None:
    cid = graph("POST", "/me/calendars", json={"name": "CRM"}).json()["id"]
    inside = graph("POST", f"/me/calendars/{quote(cid, safe='')}/events", json=event_body()).json()["id"]
    outside = graph("POST", "/me/events", json=event_body()).json()["id"]
    assert [e["id"] for e in graph("GET", f"/me/calendars/{cid}/events").json()["value"]] == [inside]
    assert [e["id"] for e in graph("GET", "/me/events").json()["value"]] == [outside]

    assert graph("DELETE", f"/me/calendars/{cid}").status_code == 204

    assert graph("GET", f"/me/events/{inside}").status_code == 404
    assert graph("GET", f"/me/events/{outside}").status_code == 200
    assert graph("GET", f"/me/calendars/{cid}/calendarView/delta",
                 params={"startDateTime": "2030-01-01T00:00:00Z", "endDateTime": "2031-01-01T00:00:00Z"}
                 ).status_code == 404
    default = graph("GET", "/me/calendar").json()
    assert default["isRemovable"] is False
    assert graph("DELETE", f"/me/calendars/{default['id']}").status_code == 400


def test_a_work_account_gets_a_teams_link_that_survives_a_time_change(graph) -> None:
    calendar = graph("GET", "/me/calendar").json()
    assert calendar["allowedOnlineMeetingProviders"] == ["teamsForBusiness"]
    body = event_body(isOnlineMeeting=True, onlineMeetingProvider="teamsForBusiness",
                      body={"contentType": "text", "content": "Agenda"})
    made = graph("POST", "/me/events", json=body).json()
    join = made["onlineMeeting"]["joinUrl"]
    assert join.startswith("https://teams.microsoft.com/l/meetup-join/") and made["isOnlineMeeting"] is True
    assert join in made["body"]["content"] and "Agenda" in made["body"]["content"]

    moved = graph("PATCH", f"/me/events/{made['id']}", json={
        "start": {"dateTime": "2030-03-05T10:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2030-03-05T11:00:00", "timeZone": "UTC"},
        "isOnlineMeeting": False,  # ignored: an online meeting stays one
    }).json()

    assert moved["onlineMeeting"]["joinUrl"] == join and moved["isOnlineMeeting"] is True


def test_a_personal_account_allows_no_provider_and_gets_no_link(emu, ctl, app) -> None:
    personal = ctl.add_user("pat@outlook.example", time_zone="UTC", account_kind="personal")
    graph = Graph(emu, raw_token(emu, app, personal)["access_token"])
    assert graph("GET", "/me/calendar").json()["allowedOnlineMeetingProviders"] == []

    made = graph("POST", "/me/events", json=event_body(isOnlineMeeting=True,
                                                         onlineMeetingProvider="teamsForBusiness")).json()

    assert made["isOnlineMeeting"] is False and made["onlineMeeting"] is None
