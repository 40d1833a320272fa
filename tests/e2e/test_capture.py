"""Issue 17 through the dev host, Azurite and the Graph emulator acting as the user in Outlook:
meetings booked in Outlook are reported to the CRM (``outlook_event.*``) once per real change,
within the tenant's capture setting, and never our own events, private ones or internal ones.

Every "nothing", "only" and "once" is asserted after ``stack.wait_until_idle()``; every date is
computed from the clock (tests/support/clock.py)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import Stack, wait_until
from tests.e2e.push.conftest import CrmUser, connect_user, ours, synced, upsert, writes
from tests.e2e.push.openapi_contract import check, check_callback
from tests.support import clock

pytestmark = pytest.mark.e2e
CREATED, UPDATED, DELETED = "outlook_event.created", "outlook_event.updated", "outlook_event.deleted"
CANCELLED = "outlook_event.cancelled"
CAPTURE_KINDS = (CREATED, UPDATED, CANCELLED, DELETED)
DAY = clock.winter_day()
OUTSIDER = "luisa@acme.test"


@pytest.fixture()
def ana(stack: Stack) -> CrmUser:
    return connect_user(stack)


def put_settings(stack: Stack, tenant: str, **settings: Any) -> dict[str, Any]:
    path = f"/api/tenants/{quote(tenant, safe='')}/settings"
    answer = stack.crm.request("PUT", path, settings)
    assert answer.status_code == 200, answer.text
    check("PUT", "/api/tenants/{tenant}/settings", answer, settings)
    return answer.json()


def captured(stack: Stack, who: CrmUser) -> list[dict[str, Any]]:
    found = [c for c in stack.callbacks.received if c.get("user_id") == who.user and c["type"] in CAPTURE_KINDS]
    for callback in found:
        check_callback(callback)
    return found


def attendee(address: str) -> dict[str, Any]:
    return {"type": "required", "emailAddress": {"name": address.split("@")[0].title(), "address": address}}


def book(stack: Stack, who: CrmUser, subject: str, *attendees: str, hour: int = 9, **extra: Any) -> dict[str, Any]:
    """The user books a meeting in Outlook (Pacific time) on DAY at ``hour``."""
    event = {
        "subject": subject,
        "start": {"dateTime": f"{DAY}T{hour:02d}:00:00", "timeZone": "Pacific Standard Time"},
        "end": {"dateTime": f"{DAY}T{hour:02d}:45:00", "timeZone": "Pacific Standard Time"},
        "attendees": [attendee(a) for a in attendees],
        **extra,
    }
    return stack.control.user_create_event(who.oid, event)


def test_external_meetings_are_reported_once_per_change_and_nothing_else(stack: Stack, ana: CrmUser) -> None:
    stored = put_settings(stack, ana.tenant, capture_meetings="external")
    assert (stored["capture_meetings"], stored["capture_body"], stored["internal_domains"]) == ("external", False, [])
    # Our own event (pushed from the CRM) in the same window.
    upsert(stack, ana, start=f"{DAY}T08:00:00", end=f"{DAY}T09:00:00")
    synced(stack, ana, "act-1", 1)
    stack.wait_until_idle()
    assert captured(stack, ana) == []

    meeting = book(stack, ana, "Demo con Acme", OUTSIDER, "pedro@contoso.example")
    book(stack, ana, "Reunión interna", "pedro@contoso.example", hour=11)
    book(stack, ana, "Médico", OUTSIDER, hour=13, sensitivity="private")
    stack.callbacks.wait_for(CREATED)
    stack.wait_until_idle()

    reported = captured(stack, ana)
    assert [c["type"] for c in reported] == [CREATED]
    data = reported[0]["data"]
    assert data["outlook_event_id"] == meeting["id"] and data["subject"] == "Demo con Acme"
    # 09:00 Pacific (UTC-8 in winter) is 17:00 UTC; the mailbox is in Madrid (UTC+1): 18:00 there.
    assert (data["start"], data["end"]) == (f"{DAY}T17:00:00Z", f"{DAY}T17:45:00Z")
    assert (data["time_zone"], data["start_local"]) == ("Europe/Paris", f"{DAY}T18:00:00")
    assert OUTSIDER in [a["address"] for a in data["attendees"]]
    assert data["organizer"]["address"] == ana.upn.lower() and data["is_organizer"] is True
    assert "body_text" not in data
    assert len(ours(stack, ana)) == 1  # nothing was written to Outlook for it

    # The user moves it: one update with the new times.
    stack.control.user_move_event(
        ana.oid,
        meeting["id"],
        start={"dateTime": f"{DAY}T10:00:00", "timeZone": "Pacific Standard Time"},
        end={"dateTime": f"{DAY}T10:30:00", "timeZone": "Pacific Standard Time"},
    )
    stack.callbacks.wait_for(UPDATED)
    stack.wait_until_idle()
    reported = captured(stack, ana)
    assert [c["type"] for c in reported] == [CREATED, UPDATED]
    assert (reported[1]["data"]["start"], reported[1]["data"]["end"]) == (f"{DAY}T18:00:00Z", f"{DAY}T18:30:00Z")

    # A full resync (expired delta token) reports nothing twice.
    stack.control.invalidate_delta_tokens(ana.oid)
    answer = stack.crm.post(f"/api/tenants/{quote(ana.tenant, safe='')}/users/{quote(ana.user, safe='')}/reconcile", {})
    assert answer.status_code == 202
    stack.wait_until_idle()
    assert len(captured(stack, ana)) == 2

    # The user deletes it: one deletion.
    stack.control.user_delete_event(ana.oid, meeting["id"])
    stack.callbacks.wait_for(DELETED)
    stack.wait_until_idle()
    reported = captured(stack, ana)
    assert [c["type"] for c in reported] == [CREATED, UPDATED, DELETED]
    assert reported[2]["data"] == {"outlook_event_id": meeting["id"], "reason": "deleted"}


def test_an_invitation_from_an_outsider_is_external_and_the_body_only_when_asked(
    stack: Stack, ana: CrmUser
) -> None:
    put_settings(stack, ana.tenant, capture_meetings="external", capture_body=True)
    invitation = book(
        stack, ana, "Propuesta", ana.upn, organizer={"emailAddress": {"name": "Luisa", "address": OUTSIDER}},
        body={"contentType": "text", "content": "Revisar la propuesta"},
    )
    stack.callbacks.wait_for(CREATED)
    stack.wait_until_idle()
    (only,) = captured(stack, ana)
    assert only["data"]["outlook_event_id"] == invitation["id"]
    assert only["data"]["organizer"]["address"] == OUTSIDER and only["data"]["is_organizer"] is False
    assert only["data"]["body_text"] == "Revisar la propuesta"


def reconcile_now(stack: Stack, who: CrmUser) -> None:
    path = f"/api/tenants/{quote(who.tenant, safe='')}/users/{quote(who.user, safe='')}/reconcile"
    assert stack.crm.post(path, {}).status_code == 202


def test_a_meeting_cancelled_by_its_outside_organizer_is_reported_cancelled_once(stack: Stack, ana: CrmUser) -> None:
    put_settings(stack, ana.tenant, capture_meetings="external")
    invitation = book(stack, ana, "Propuesta", ana.upn, organizer={"emailAddress": {"name": "Luisa", "address": OUTSIDER}})
    stack.callbacks.wait_for(CREATED)
    stack.wait_until_idle()

    # Luisa cancels it: Exchange marks Ana's copy cancelled, and it stays in her calendar.
    copy = stack.control.organizer_cancel_event(ana.oid, invitation["id"])
    assert copy["isCancelled"] is True and copy["changeKey"] != invitation["changeKey"]
    stack.callbacks.wait_for(CANCELLED)
    stack.wait_until_idle()
    reported = captured(stack, ana)
    assert [c["type"] for c in reported] == [CREATED, CANCELLED]
    data = reported[1]["data"]
    assert data["outlook_event_id"] == invitation["id"] and data["organizer"]["address"] == OUTSIDER
    assert (data["start"], data["end"]) == (f"{DAY}T17:00:00Z", f"{DAY}T17:45:00Z")
    assert [e["id"] for e in stack.control.events(ana.oid)] == [invitation["id"]]

    # A full resync finds the cancelled copy again: nothing new, and no deletion while it stays.
    stack.control.invalidate_delta_tokens(ana.oid)
    reconcile_now(stack, ana)
    stack.wait_until_idle()
    assert [c["type"] for c in captured(stack, ana)] == [CREATED, CANCELLED]

    # Ana removes it from her calendar: then, and only then, one deletion.
    stack.control.user_delete_event(ana.oid, invitation["id"])
    stack.callbacks.wait_for(DELETED)
    stack.wait_until_idle()
    reported = captured(stack, ana)
    assert [c["type"] for c in reported] == [CREATED, CANCELLED, DELETED]
    assert reported[2]["data"] == {"outlook_event_id": invitation["id"], "reason": "deleted"}


def test_a_meeting_the_user_organises_and_cancels_is_reported_deleted_once(stack: Stack, ana: CrmUser) -> None:
    put_settings(stack, ana.tenant, capture_meetings="external")
    meeting = book(stack, ana, "Demo con Acme", OUTSIDER)
    stack.callbacks.wait_for(CREATED)
    stack.wait_until_idle()
    stack.control.user_cancel_event(ana.oid, meeting["id"])  # Graph's POST /events/{id}/cancel: it leaves the calendar
    stack.callbacks.wait_for(DELETED)
    stack.wait_until_idle()
    reported = captured(stack, ana)
    assert [c["type"] for c in reported] == [CREATED, DELETED]
    assert reported[1]["data"] == {"outlook_event_id": meeting["id"], "reason": "deleted"}
    assert stack.control.events(ana.oid) == []


def test_a_recurring_series_is_reported_as_its_master_once_and_its_deletion_once(stack: Stack, ana: CrmUser) -> None:
    put_settings(stack, ana.tenant, capture_meetings="external")
    first = clock.days_from_today(2)
    recurrence = {
        "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": [first.strftime("%A").lower()]},
        "range": {"type": "numbered", "startDate": first.isoformat(), "numberOfOccurrences": 6},
    }
    series = stack.control.user_create_event(
        ana.oid,
        {
            "subject": "Seguimiento semanal con Acme",
            "start": {"dateTime": f"{first}T09:00:00", "timeZone": "UTC"},
            "end": {"dateTime": f"{first}T09:30:00", "timeZone": "UTC"},
            "attendees": [attendee(OUTSIDER)],
            "recurrence": recurrence,
        },
    )
    stack.callbacks.wait_for(CREATED)
    stack.wait_until_idle()
    # Delta listed six occurrences; the CRM hears of the series once, as its master with its pattern.
    (only,) = captured(stack, ana)
    assert only["type"] == CREATED and only["data"]["outlook_event_id"] == series["id"]
    assert only["data"]["recurrence"] == recurrence
    assert (only["data"]["start"], only["data"]["end"]) == (f"{first}T09:00:00Z", f"{first}T09:30:00Z")

    # The user deletes the series: delta removes its six occurrences by id; one deletion, for the master.
    stack.control.user_delete_event(ana.oid, series["id"])
    stack.callbacks.wait_for(DELETED)
    stack.wait_until_idle()
    reported = captured(stack, ana)
    assert [c["type"] for c in reported] == [CREATED, DELETED]
    assert reported[1]["data"] == {"outlook_event_id": series["id"], "reason": "deleted"}


def test_with_capture_off_nothing_at_all(stack: Stack, ana: CrmUser) -> None:
    put_settings(stack, ana.tenant, capture_meetings="off")
    meeting = book(stack, ana, "Demo con Acme", OUTSIDER)
    stack.control.user_move_event(
        ana.oid,
        meeting["id"],
        start={"dateTime": f"{DAY}T10:00:00", "timeZone": "UTC"},
        end={"dateTime": f"{DAY}T11:00:00", "timeZone": "UTC"},
    )
    stack.control.user_delete_event(ana.oid, meeting["id"])
    stack.wait_until_idle()
    assert captured(stack, ana) == []
    assert writes(stack, ana, "POST") == 0


def test_a_user_who_opted_out_at_connect_is_never_captured(stack: Stack) -> None:
    from tests.e2e.push.conftest import RETURN_URL, user_path
    from tests.support.sign_in import sign_in

    tenant, user, upn = "tenant-optout", "user/optout", "optout@contoso.example"
    mailbox = stack.control.add_user(upn, display_name="Beto", time_zone="Romance Standard Time")
    body = {"return_url": RETURN_URL, "time_zone": "America/Bogota", "login_hint": upn, "capture": False}
    started = stack.crm.post(user_path(tenant, user, "connect"), body)
    assert started.status_code == 200, started.text
    landed = sign_in(started.json()["start_url"], stack.emulator.ca_path)
    assert "calendar_sync=connected" in landed.headers["Location"]
    beto = CrmUser(tenant, user, mailbox["id"], upn)
    put_settings(stack, tenant, capture_meetings="all")
    book(stack, beto, "Demo con Acme", OUTSIDER)
    stack.wait_until_idle()
    assert captured(stack, beto) == []
    assert stack.crm.get(user_path(tenant, user, "status")).json()["capture"] is False


def test_turning_capture_on_reports_the_meetings_already_there_once(stack: Stack, ana: CrmUser) -> None:
    before = [book(stack, ana, f"Visita {n}", OUTSIDER, hour=8 + n) for n in range(3)]
    stack.wait_until_idle()
    assert captured(stack, ana) == []
    put_settings(stack, ana.tenant, capture_meetings="all")
    stack.wait_until_idle()
    reported = captured(stack, ana)
    assert sorted(c["data"]["outlook_event_id"] for c in reported) == sorted(e["id"] for e in before)
    assert {c["type"] for c in reported} == {CREATED}
    put_settings(stack, ana.tenant, capture_meetings="all")  # the same document again: no new round
    stack.wait_until_idle()
    assert len(captured(stack, ana)) == 3


def test_the_crm_adopts_a_captured_meeting_without_writing_to_it(stack: Stack, ana: CrmUser) -> None:
    put_settings(stack, ana.tenant, capture_meetings="external")
    meeting = book(stack, ana, "Demo con Acme", OUTSIDER)
    stack.callbacks.wait_for(CREATED)
    stack.wait_until_idle()
    before = {m: writes(stack, ana, m) for m in ("POST", "PATCH", "DELETE")}

    upsert(stack, ana, id="act-9", start=f"{DAY}T08:00:00", end=f"{DAY}T09:00:00", outlook_event_id=meeting["id"])
    answer = synced(stack, ana, "act-9", 1)
    stack.wait_until_idle()
    assert answer["data"]["outlook_event_id"] == meeting["id"]
    assert {m: writes(stack, ana, m) for m in before} == before  # no event created, nothing written
    assert len(stack.control.events(ana.oid)) == 1

    # The user moves it in Outlook: reported for the adopting activity, not as a captured meeting.
    stack.control.user_move_event(
        ana.oid,
        meeting["id"],
        start={"dateTime": f"{DAY}T12:00:00", "timeZone": "Pacific Standard Time"},
        end={"dateTime": f"{DAY}T12:45:00", "timeZone": "Pacific Standard Time"},
    )
    changed = stack.callbacks.wait_for("activity.changed_in_outlook")
    stack.wait_until_idle()
    mine = [c for c in changed if c["user_id"] == ana.user]
    assert [(c["data"]["activity_id"], c["data"]["start"]) for c in mine] == [("act-9", f"{DAY}T20:00:00Z")]
    assert set(mine[0]["data"]["changes"]) == {"start", "end"}
    assert [c["type"] for c in captured(stack, ana)] == [CREATED]

    # Cancelled in the CRM: only unlinked; the user's meeting stays in Outlook untouched.
    upsert(stack, ana, id="act-9", version=2, status="cancelled", outlook_event_id=meeting["id"])
    unlinked = synced(stack, ana, "act-9", 2)
    stack.wait_until_idle()
    assert unlinked["data"]["outlook_event_id"] is None
    assert {m: writes(stack, ana, m) for m in before} == before
    (still,) = stack.control.events(ana.oid)
    assert still["id"] == meeting["id"] and still["subject"] == "Demo con Acme"


def test_adopting_an_unknown_event_fails_and_creates_nothing(stack: Stack, ana: CrmUser) -> None:
    other = connect_user(stack)
    foreign = book(stack, other, "Otra agenda", OUTSIDER)  # an event of another mailbox
    for n, event_id in enumerate(("AAMkAGI2bm9leGlzdGU=", foreign["id"])):
        upsert(stack, ana, id=f"act-{n}", outlook_event_id=event_id)
    failed = stack.callbacks.wait_for("activity.sync_failed", count=2)
    stack.wait_until_idle()
    mine = [c["data"] for c in failed if c["user_id"] == ana.user]
    assert sorted(d["activity_id"] for d in mine) == ["act-0", "act-1"]
    assert {d["reason"] for d in mine} == {"outlook_event_not_found"}
    assert stack.control.events(ana.oid) == [] and writes(stack, ana, "POST") == 0


@pytest.mark.timeout(600)
def test_initial_capture_of_300_meetings_reports_each_once_across_a_host_restart(stack: Stack, ana: CrmUser) -> None:
    """The dev host is killed (``kill -9``) inside the initial capture pass, half of the meetings reported:
    the pass's message comes back and takes over the dead run's mailbox lease at once (not 10 minutes later),
    and every meeting is reported exactly once."""
    from collections import Counter

    from tests.support.chaos import restart_host

    fast = {"LOCAL_HOST_QUEUE_HOLD_SECONDS": "5"}  # a dead host's messages come back after 5 s, not 10 min
    restart_host(stack, kill=False, **fast)
    booked = set()
    for n in range(300):
        day = clock.days_from_today(1 + n % 60)
        event = {
            "subject": f"Visita {n}",
            "start": {"dateTime": f"{day}T{8 + n % 9:02d}:00:00", "timeZone": "UTC"},
            "end": {"dateTime": f"{day}T{8 + n % 9:02d}:30:00", "timeZone": "UTC"},
            "attendees": [attendee(f"cliente{n}@acme.test")],
        }
        booked.add(stack.control.user_create_event(ana.oid, event)["id"])
    # One booked by another app through Graph (a booking tool: it carries a transactionId), in the middle
    # of the window: the pass reads it by id before reporting it (is it one of ours?), after ~150 others.
    day = clock.days_from_today(31)
    middle = {
        "subject": "Reserva online",
        "start": {"dateTime": f"{day}T12:15:00", "timeZone": "UTC"},
        "end": {"dateTime": f"{day}T12:45:00", "timeZone": "UTC"},
        "attendees": [attendee("reservas@acme.test")],
        "transactionId": "booking-tool-7f3a",
    }
    middle_id = stack.control.user_create_event(ana.oid, middle, by_app=True)["id"]
    booked.add(middle_id)
    stack.wait_until_idle()
    assert captured(stack, ana) == []

    # That read is held in Graph until the host is dead: the pass stops there, mid-way, with the lease.
    rule = stack.control.add_fault("hold", count=1, method="GET", path_contains=middle_id, mailbox=ana.oid)
    put_settings(stack, ana.tenant, capture_meetings="external")
    wait_until(
        lambda: any(f["id"] == rule["id"] and f["hits"] == 1 for f in stack.control.faults()),
        120,
        "the capture pass held mid-way",
    )
    stack.callbacks.wait_for(CREATED)  # the pass has been reporting before it stopped
    restart_host(stack, kill=True, **fast)  # kill -9 inside the pass
    stack.control.release_holds()
    try:
        # No new request, no new round asked for: the killed pass's own message comes back and finishes it.
        stack.callbacks.wait_for(CREATED, count=len(booked), timeout=240)
        stack.wait_until_idle(timeout=300)
        # A callback delivered twice across the restart keeps its envelope id (the CRM dedupes on it).
        envelopes = {c["id"]: c for c in captured(stack, ana)}.values()
        reported = Counter(c["data"]["outlook_event_id"] for c in envelopes)
        assert set(reported) == booked
        assert [i for i, n in reported.items() if n > 1] == []  # none twice
        assert {c["type"] for c in envelopes} == {CREATED}
    finally:
        stack.host.stop()
