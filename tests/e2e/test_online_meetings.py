"""Issue 18: online meeting types become Teams meetings, through the dev host, Azurite and the Graph
emulator. The join URL reaches the CRM in ``activity.synced`` and stays the same when the meeting is
rescheduled; a personal account (no provider allowed) gets ``online_meeting: "unavailable"`` and no
link; a plain type has neither. Every "only"/"none" assertion comes after ``stack.wait_until_idle()``;
every activity date is computed from the clock."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import Stack
from tests.e2e.push.conftest import CrmUser, connect_user, envelope, ours, property_of, send, synced, upsert

pytestmark = pytest.mark.e2e
MEETING = {"id": "type-teams", "name": "Reunión", "show_in_calendar": True, "online_meeting": True}
CALL = {"id": "type-call", "name": "Llamada", "show_in_calendar": True}
TEAMS_URL = "https://teams.microsoft.com/l/meetup-join/"


def at(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def slot(hours: int) -> dict[str, str]:
    """Start and end of a 30-minute activity ``hours`` from the next full hour tomorrow (in the window)."""
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1, hours=hours)
    return {"start": at(start), "end": at(start + timedelta(minutes=30)), "time_zone": "UTC"}


def event_of(stack: Stack, who: CrmUser, activity_id: str) -> dict[str, Any]:
    found = [e for e in ours(stack, who) if property_of(e).endswith("|" + activity_id)]
    assert len(found) == 1, found
    return found[0]


def requests_of(stack: Stack, who: CrmUser) -> Counter[str]:
    """Graph requests the emulator counted for this mailbox, but the delta reads of the reconcile
    that the notifications of our own writes trigger (not part of a push)."""
    counted = stack.control.counters(who.oid)["mailboxes"].get(who.oid, {}).get("requests", {})
    return Counter({endpoint: n for endpoint, n in counted.items() if "calendarView/delta" not in endpoint})


def test_a_meeting_type_gets_a_teams_link_in_the_callback_and_the_event_and_keeps_it_when_rescheduled(
    stack: Stack,
) -> None:
    ana = connect_user(stack)
    upsert(stack, ana, id="meet-1", type=MEETING, **slot(2))
    first = synced(stack, ana, "meet-1", 1)["data"]

    url = first["online_meeting_url"]
    assert url.startswith(TEAMS_URL)
    assert "online_meeting" not in first
    event = event_of(stack, ana, "meet-1")
    assert event["isOnlineMeeting"] is True and event["onlineMeetingProvider"] == "teamsForBusiness"
    assert event["onlineMeeting"]["joinUrl"] == url
    assert event["body"]["content"].count(url) == 1  # Outlook's join block, once

    upsert(stack, ana, id="meet-1", version=2, type=MEETING, **slot(5))
    second = synced(stack, ana, "meet-1", 2)["data"]
    stack.wait_until_idle()
    moved = event_of(stack, ana, "meet-1")
    assert moved["id"] == event["id"] and moved["startUtc"] != event["startUtc"]
    assert second["online_meeting_url"] == url
    assert moved["onlineMeeting"]["joinUrl"] == url and moved["isOnlineMeeting"] is True
    assert moved["body"]["content"].count(url) == 1  # our PATCH carried the block back, not a second one
    assert len(ours(stack, ana)) == 1


def test_a_personal_account_gets_unavailable_and_no_link(stack: Stack) -> None:
    bea = connect_user(stack, account_kind="personal")
    upsert(stack, bea, id="meet-2", type=MEETING, **slot(3))
    data = synced(stack, bea, "meet-2", 1)["data"]
    stack.wait_until_idle()

    assert data["online_meeting"] == "unavailable"
    assert "online_meeting_url" not in data
    event = event_of(stack, bea, "meet-2")
    assert event["isOnlineMeeting"] is False and not event.get("onlineMeeting")
    assert TEAMS_URL not in event["body"]["content"]


def test_a_plain_type_has_neither_field_and_costs_no_extra_graph_request(stack: Stack) -> None:
    carl = connect_user(stack)
    stack.wait_until_idle()
    before = requests_of(stack, carl)
    upsert(stack, carl, id="call-1", type=CALL, **slot(4))
    data = synced(stack, carl, "call-1", 1)["data"]
    stack.wait_until_idle()

    assert "online_meeting" not in data and "online_meeting_url" not in data
    assert event_of(stack, carl, "call-1")["isOnlineMeeting"] is False
    assert requests_of(stack, carl) - before == Counter({"POST /events": 1})  # one create, nothing read

    # The first meeting reads the calendar's providers once; the next one does not read them again.
    upsert(stack, carl, id="meet-3", type=MEETING, **slot(6))
    synced(stack, carl, "meet-3", 1)
    stack.wait_until_idle()
    after_first = requests_of(stack, carl)
    assert after_first - before == Counter({"POST /events": 2, "GET /calendar": 1})
    upsert(stack, carl, id="meet-4", type=MEETING, **slot(7))
    assert synced(stack, carl, "meet-4", 1)["data"]["online_meeting_url"].startswith(TEAMS_URL)
    stack.wait_until_idle()
    assert requests_of(stack, carl) - after_first == Counter({"POST /events": 1})


def test_a_type_turned_into_meetings_makes_its_events_online_meetings(stack: Stack) -> None:
    dana = connect_user(stack)
    upsert(stack, dana, id="call-2", type=CALL, **slot(8))
    synced(stack, dana, "call-2", 1)
    plain = event_of(stack, dana, "call-2")

    send(stack, envelope(dana.tenant, "activity_type.updated", {**CALL, "online_meeting": True}))
    stack.wait_until_idle()

    now = event_of(stack, dana, "call-2")
    assert now["id"] == plain["id"] and now["isOnlineMeeting"] is True
    assert now["onlineMeeting"]["joinUrl"].startswith(TEAMS_URL)
    replayed = [c["data"] for c in stack.callbacks.of_type("activity.synced")
                if c["user_id"] == dana.user and c["data"]["activity_id"] == "call-2"]
    assert replayed[-1]["online_meeting_url"] == now["onlineMeeting"]["joinUrl"]


def test_a_meeting_moved_by_a_calendar_switch_is_a_meeting_there_with_one_new_link(stack: Stack) -> None:
    """Graph cannot move an event: the switch copies it, so the meeting gets a new link, written over the
    copy's body once (not next to the old Teams block) and reported to the CRM."""
    from tests.e2e.test_calendars import changed, switch

    eva = connect_user(stack)
    upsert(stack, eva, id="meet-5", type=MEETING, **slot(9))
    old_url = synced(stack, eva, "meet-5", 1)["data"]["online_meeting_url"]
    stack.wait_until_idle()

    switch(stack, eva, "dedicated")
    changed(stack, eva)
    stack.wait_until_idle()

    moved = event_of(stack, eva, "meet-5")
    new_url = moved["onlineMeeting"]["joinUrl"]
    assert moved["isOnlineMeeting"] is True and new_url.startswith(TEAMS_URL) and new_url != old_url
    assert moved["calendarId"] != next(c["id"] for c in stack.control.calendars(eva.oid) if c["is_default"])
    assert old_url not in moved["body"]["content"] and moved["body"]["content"].count(new_url) == 1
    reported = [c["data"] for c in stack.callbacks.of_type("activity.synced")
                if c["user_id"] == eva.user and c["data"]["activity_id"] == "meet-5"]
    assert reported[-1]["online_meeting_url"] == new_url
