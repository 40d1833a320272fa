"""calendarView/delta: paging, deltaLink, changes, deletions, leaving the window, invalidation."""

from __future__ import annotations

import pytest

from .conftest import event_body

pytestmark = pytest.mark.integration

WINDOW = {"startDateTime": "2030-03-01T00:00:00Z", "endDateTime": "2030-04-01T00:00:00Z"}


def run_round(graph, url=None, params=None, page_size=2):
    """Follow nextLinks to the deltaLink; returns (items, deltaLink, pages)."""
    headers = {"Prefer": f"odata.maxpagesize={page_size}"}
    resp = graph("GET", url or "/me/calendarView/delta", params=params, headers=headers)
    assert resp.status_code == 200, resp.text
    items, pages = [], 0
    while True:
        body = resp.json()
        pages += 1
        items += body["value"]
        assert not ("@odata.nextLink" in body and "@odata.deltaLink" in body)
        if "@odata.deltaLink" in body:
            return items, body["@odata.deltaLink"], pages
        resp = graph("GET", body["@odata.nextLink"], headers=headers)
        assert resp.status_code == 200


def test_delta_across_changes_and_deletions(graph, ctl, user):
    ids = [graph("POST", "/me/events", json=event_body(f"E{i}", start=f"2030-03-1{i}T10:00:00",
                                                       end=f"2030-03-1{i}T11:00:00")).json()["id"]
           for i in range(5)]
    graph("POST", "/me/events", json=event_body("outside", start="2030-05-01T10:00:00", end="2030-05-01T11:00:00"))
    items, delta_link, pages = run_round(graph, params=WINDOW)
    assert sorted(i["id"] for i in items) == sorted(ids) and pages == 3
    assert all("@removed" not in i for i in items)
    assert "$deltatoken=" in delta_link

    items, delta_link, _ = run_round(graph, delta_link)
    assert items == []  # nothing changed

    graph("PATCH", f"/me/events/{ids[0]}", json={"subject": "renamed"})
    graph("DELETE", f"/me/events/{ids[1]}")
    ctl.user_move_event(user["id"], ids[2], {"dateTime": "2030-06-01T10:00:00", "timeZone": "UTC"},
                        {"dateTime": "2030-06-01T11:00:00", "timeZone": "UTC"})  # leaves the window
    new = graph("POST", "/me/events", json=event_body("new", start="2030-03-20T10:00:00",
                                                      end="2030-03-20T11:00:00")).json()["id"]
    items, delta_link, _ = run_round(graph, delta_link)
    by_id = {i["id"]: i for i in items}
    assert by_id[ids[0]]["subject"] == "renamed"
    assert by_id[ids[1]]["@removed"] == {"reason": "deleted"}
    assert by_id[ids[2]]["@removed"] == {"reason": "deleted"}
    assert by_id[new]["subject"] == "new" and by_id[new]["start"]["timeZone"] == "UTC"
    assert set(by_id) == {ids[0], ids[1], ids[2], new}


def test_delta_rejects_query_options_and_requires_a_window(graph):
    assert graph("GET", "/me/calendarView/delta").status_code == 400
    r = graph("GET", "/me/calendarView/delta", params={**WINDOW, "$select": "subject"})
    assert r.status_code == 400


def test_invalidated_delta_tokens_answer_410_sync_state_not_found(graph, ctl, user):
    graph("POST", "/me/events", json=event_body("E", start="2030-03-10T10:00:00", end="2030-03-10T11:00:00"))
    _, delta_link, _ = run_round(graph, params=WINDOW)
    ctl.invalidate_delta_tokens(user["id"])
    r = graph("GET", delta_link)
    assert r.status_code == 410
    assert r.json()["error"]["code"] == "syncStateNotFound"
    assert "startDateTime=" in r.headers["Location"]
    items, _, _ = run_round(graph, params=WINDOW)  # a fresh full sync works
    assert len(items) == 1


def test_calendar_view_lists_events_in_window(graph):
    graph("POST", "/me/events", json=event_body("in", start="2030-03-10T10:00:00", end="2030-03-10T11:00:00"))
    graph("POST", "/me/events", json=event_body("out", start="2030-05-10T10:00:00", end="2030-05-10T11:00:00"))
    got = graph("GET", "/me/calendarView", params=WINDOW).json()["value"]
    assert [e["subject"] for e in got] == ["in"]


def test_a_series_is_listed_as_its_occurrences_and_removed_by_their_ids(graph, ctl, user):
    recurrence = {"pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday", "wednesday"]},
                  "range": {"type": "endDate", "startDate": "2030-03-04", "endDate": "2030-03-13"}}
    master = graph("POST", "/me/events", json=event_body("Serie", start="2030-03-04T10:00:00",
                                                         end="2030-03-04T10:30:00", recurrence=recurrence)).json()
    items, delta_link, _ = run_round(graph, params=WINDOW)
    assert [i["start"]["dateTime"][:10] for i in items] == ["2030-03-04", "2030-03-06", "2030-03-11", "2030-03-13"]
    assert {(i["type"], i["seriesMasterId"]) for i in items} == {("occurrence", master["id"])}
    assert len({i["id"] for i in items} | {master["id"]}) == 5 and len({i["iCalUId"] for i in items}) == 4

    ctl.user_delete_event(user["id"], master["id"])
    removed, _, _ = run_round(graph, delta_link)
    assert sorted(i["id"] for i in removed) == sorted(i["id"] for i in items)
    assert all(set(i) == {"@odata.type", "id", "@removed"} for i in removed)


def test_cancel_is_for_the_organizer_and_an_invitation_is_cancelled_in_place(graph, ctl, user):
    own = graph("POST", "/me/events", json=event_body("Mía")).json()
    invited = ctl.user_create_event(user["id"], {**event_body("Invitación", start="2030-03-05T10:00:00",
                                                              end="2030-03-05T11:00:00"),
                                                 "organizer": {"emailAddress": {"address": "luisa@acme.test"}}})
    _, delta_link, _ = run_round(graph, params=WINDOW)
    refused = graph("POST", f"/me/events/{invited['id']}/cancel", json={"comment": "no"})
    assert refused.status_code == 400 and "organizer" in refused.json()["error"]["message"]
    assert graph("POST", f"/me/events/{own['id']}/cancel", json={"comment": "Lo siento"}).status_code == 202
    assert graph("GET", f"/me/events/{own['id']}").status_code == 404

    copy = ctl.organizer_cancel_event(user["id"], invited["id"])
    assert copy["isCancelled"] is True and copy["subject"] == "Canceled: Invitación"
    assert copy["changeKey"] != invited["changeKey"]
    items, _, _ = run_round(graph, delta_link)
    by_id = {i["id"]: i for i in items}
    assert by_id[own["id"]]["@removed"] == {"reason": "deleted"}
    assert by_id[invited["id"]]["isCancelled"] is True
