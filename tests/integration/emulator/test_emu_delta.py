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
