"""Issue 18: the calendar our events live in - the default one, a dedicated "CRM" calendar, or one the
user picks - through the dev host, Azurite and the Graph emulator. Every "only"/"none" assertion comes
after ``stack.wait_until_idle()``; every activity date is computed from the clock."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

from shared.rules.calendars import CALENDAR_PROPERTY_ID
from tests.conftest import Stack, wait_until
from tests.e2e.push.conftest import RETURN_URL, CrmUser, ours, status, synced, upsert, user_path
from tests.e2e.push.openapi_contract import check, check_callback
from tests.support.sign_in import sign_in

pytestmark = pytest.mark.e2e
CONNECT = "/api/tenants/{tenant}/users/{user}/connect"


def connect(
    stack: Stack,
    calendar: Any = None,
    *,
    tenant: str | None = None,
    upn: str | None = None,
    user: str | None = None,
    expect: str = "connected",
) -> CrmUser:
    """A CRM user connected through the real flow, choosing ``calendar`` (left out when None)."""
    tenant = tenant or f"tenant-{uuid.uuid4().hex[:8]}"
    user = user or f"user/{uuid.uuid4().hex[:8]}"
    if upn is None:
        upn = f"u{uuid.uuid4().hex[:10]}@contoso.example"
        stack.control.add_user(upn, display_name="Ana Pérez", time_zone="UTC", locale="es-ES")
    body: dict[str, Any] = {"return_url": RETURN_URL, "time_zone": "UTC", "locale": "es", "login_hint": upn}
    if calendar is not None:
        body["calendar"] = calendar
    started = stack.crm.post(user_path(tenant, user, "connect"), body)
    assert started.status_code == 200, started.text
    check("POST", CONNECT, started, body)
    landed = sign_in(started.json()["start_url"], stack.emulator.ca_path)
    assert landed.status_code == 302, landed.text
    back = parse_qs(urlsplit(landed.headers["Location"]).query)
    assert back["calendar_sync"] == [expect if expect == "connected" else "error"], back
    if expect != "connected":
        assert back["reason"] == [expect]
    mailbox = next(m for m in _users(stack) if m["upn"] == upn)
    return CrmUser(tenant, user, mailbox["id"], upn)


def _users(stack: Stack) -> list[dict[str, Any]]:
    return stack.control._call("GET", "/users")["value"]


def at(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def push(stack: Stack, who: CrmUser, count: int, *, prefix: str = "act") -> list[str]:
    """``count`` activities in the coming days (inside the sync window), each waited for."""
    base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    ids = []
    for n in range(count):
        starts = base + timedelta(hours=n)
        activity_id = f"{prefix}-{n}"
        upsert(stack, who, id=activity_id, start=at(starts), end=at(starts + timedelta(minutes=30)), time_zone="UTC")
        ids.append(activity_id)
    for activity_id in ids:
        synced(stack, who, activity_id, 1)
    return ids


def dedicated(stack: Stack, who: CrmUser) -> list[dict[str, Any]]:
    """The user's calendars carrying our mark."""
    return [c for c in stack.control.calendars(who.oid) if CALENDAR_PROPERTY_ID in c["ext"]]


def default_id(stack: Stack, who: CrmUser) -> str:
    return next(c["id"] for c in stack.control.calendars(who.oid) if c["is_default"])


def callbacks(stack: Stack, who: CrmUser, kind: str) -> list[dict[str, Any]]:
    found = [c for c in stack.callbacks.of_type(kind) if c["user_id"] == who.user]
    for callback in found:
        check_callback(callback)
    return found


def test_connect_with_dedicated_puts_every_event_in_one_new_calendar_and_none_in_the_default(stack: Stack) -> None:
    who = connect(stack, "dedicated")
    made = dedicated(stack, who)
    assert [c["name"] for c in made] == ["CRM"]
    state = status(stack, who)
    assert state["calendar"] == {"choice": "dedicated", "id": made[0]["id"], "move": None}

    push(stack, who, 3)
    stack.wait_until_idle()
    events = ours(stack, who)
    assert len(events) == 3 and {e["calendarId"] for e in events} == {made[0]["id"]}
    assert not [e for e in events if e["calendarId"] == default_id(stack, who)]
    subscriptions = stack.control.subscriptions(who.oid)
    assert [unquote(s["resource"]) for s in subscriptions] == [f"me/calendars/{made[0]['id']}/events"]

    # Renamed by the user, then a new sign-in: found again by its mark, not created twice.
    stack.control.user_update_calendar(who.oid, made[0]["id"], name="Mis reuniones CRM")
    connect(stack, "dedicated", tenant=who.tenant, user=who.user, upn=who.upn)
    stack.wait_until_idle()
    assert [c["id"] for c in dedicated(stack, who)] == [made[0]["id"]]


def test_the_tenant_names_the_dedicated_calendar_and_a_taken_name_gets_a_number(stack: Stack) -> None:
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    body = {"dedicated_calendar_name": "Ventas"}
    answer = stack.crm.request("PUT", f"/api/tenants/{quote(tenant, safe='')}/settings", body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["dedicated_calendar_name"] == "Ventas"
    upn = f"u{uuid.uuid4().hex[:10]}@contoso.example"
    mailbox = stack.control.add_user(upn, time_zone="UTC")
    stack.control.user_create_calendar(mailbox["id"], "Ventas")  # the user's own, not ours

    who = connect(stack, "dedicated", tenant=tenant, upn=upn)

    assert [c["name"] for c in dedicated(stack, who)] == ["Ventas (2)"]
    assert len(stack.control.calendars(who.oid)) == 3


def test_a_calendar_the_user_picks_by_id_gets_the_events_and_a_missing_one_is_refused(stack: Stack) -> None:
    upn = f"u{uuid.uuid4().hex[:10]}@contoso.example"
    mailbox = stack.control.add_user(upn, time_zone="UTC")
    work = stack.control.user_create_calendar(mailbox["id"], "Trabajo")
    connect(stack, {"id": "AAMkAGI2-no-such-calendar"}, upn=upn, expect="calendar_not_found")

    who = connect(stack, {"id": work["id"]}, upn=upn)

    assert status(stack, who)["calendar"] == {"choice": {"id": work["id"]}, "id": work["id"], "move": None}
    push(stack, who, 2)
    stack.wait_until_idle()
    assert {e["calendarId"] for e in ours(stack, who)} == {work["id"]}
    assert dedicated(stack, who) == []


def test_a_deleted_dedicated_calendar_is_recreated_with_the_events_by_the_next_reconcile(stack: Stack) -> None:
    who = connect(stack, "dedicated")
    first = dedicated(stack, who)[0]["id"]
    push(stack, who, 3)
    stack.wait_until_idle()

    stack.control.user_delete_calendar(who.oid, first)
    answer = stack.crm.post(user_path(who.tenant, who.user, "reconcile"), {})
    assert answer.status_code == 202, answer.text

    recreated = wait_until(lambda: callbacks(stack, who, "calendar.recreated"), 30, "calendar.recreated")
    stack.wait_until_idle()
    again = dedicated(stack, who)
    assert len(again) == 1 and again[0]["id"] != first and again[0]["name"] == "CRM"
    assert recreated[0]["data"] == {
        "calendar": "dedicated",
        "events_lost": 3,
        "activities_replayed": 3,
    }
    events = ours(stack, who)
    assert len(events) == 3 and {e["calendarId"] for e in events} == {again[0]["id"]}
    assert callbacks(stack, who, "activity.deleted_in_outlook") == []  # the CRM's activities stay
    assert len(callbacks(stack, who, "calendar.recreated")) == 1
    assert status(stack, who)["calendar"]["id"] == again[0]["id"]
    assert [unquote(s["resource"]) for s in stack.control.subscriptions(who.oid)] == [
        f"me/calendars/{again[0]['id']}/events"
    ]


def test_an_event_the_user_moves_to_another_calendar_is_followed_not_reported_deleted(stack: Stack) -> None:
    """Outlook keeps an event's immutable id when the user moves it to another calendar: the delta of our
    calendar reports it removed, the reconcile finds it by id, and the CRM's next change reaches it there."""
    who = connect(stack, "dedicated")
    ours_id = dedicated(stack, who)[0]["id"]
    push(stack, who, 1, prefix="moved")
    stack.wait_until_idle()
    [event] = ours(stack, who)
    assert event["calendarId"] == ours_id

    personal = stack.control.user_create_calendar(who.oid, "Personal")
    stack.control.user_update_event(who.oid, event["id"], calendar_id=personal["id"])
    answer = stack.crm.post(user_path(who.tenant, who.user, "reconcile"), {})
    assert answer.status_code == 202, answer.text
    stack.wait_until_idle()
    assert callbacks(stack, who, "activity.deleted_in_outlook") == []

    starts = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=2)
    upsert(stack, who, id="moved-0", version=2, subject="Movida por la usuaria", start=at(starts),
           end=at(starts + timedelta(minutes=45)), time_zone="UTC")
    data = synced(stack, who, "moved-0", 2)["data"]
    stack.wait_until_idle()
    [after] = ours(stack, who)  # one event: updated where the user put it, no duplicate in ours
    assert data["outlook_event_id"] == event["id"] == after["id"]
    assert after["calendarId"] == personal["id"] and after["subject"] == "Movida por la usuaria"
    assert callbacks(stack, who, "activity.deleted_in_outlook") == []


@pytest.mark.parametrize("choice", ["all", "none"])
def test_remove_sync_all_deletes_the_dedicated_calendar_in_one_request_and_none_keeps_it(
    stack: Stack, choice: str
) -> None:
    who = connect(stack, "dedicated")
    calendar_id = dedicated(stack, who)[0]["id"]
    push(stack, who, 3)
    stack.wait_until_idle()
    stack.control.reset_counters()

    answer = stack.crm.post(user_path(who.tenant, who.user, "disconnect"), {"remove_events": choice})

    assert answer.status_code == 200, answer.text
    stack.wait_until_idle()
    counted = stack.control.counters(who.oid)["mailboxes"].get(who.oid, {})
    deletes = {
        endpoint: n
        for kind in ("requests", "batch_inner")
        for endpoint, n in counted.get(kind, {}).items()
        if endpoint.startswith(("DELETE /events", "DELETE /calendars"))  # the subscription goes too
    }
    [done] = callbacks(stack, who, "connection.disconnected")
    if choice == "all":
        assert answer.json()["removal"]["total"] == 3  # a removal job (Remove sync answers at once)
        assert done["data"] == {"events_removed": 3}
        assert dedicated(stack, who) == [] and ours(stack, who) == []
        assert deletes == {"DELETE /calendars/{id}": 1}
        assert status(stack, who)["removal"]["state"] == "completed"
    else:
        assert answer.json()["removal"] is None and done["data"] == {"events_removed": 0}
        assert [c["id"] for c in dedicated(stack, who)] == [calendar_id]
        assert len(ours(stack, who)) == 3 and deletes == {}


# --- switching calendars (PUT .../calendar) ----------------------------------------------------------------


def backfill(stack: Stack, who: CrmUser, count: int) -> None:
    """``count`` future activities through a backfill job, waited for."""
    from tests.e2e.push.conftest import activity

    base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=1)
    items = []
    for n in range(count):
        starts = base + timedelta(hours=n % 200, minutes=(n // 200) * 5)
        items.append(
            activity(
                who,
                id=f"bf-{n:04d}",
                subject=f"Actividad {n}",
                start=at(starts),
                end=at(starts + timedelta(minutes=30)),
                time_zone="UTC",
            )
        )
    answer = stack.crm.post(
        user_path(who.tenant, who.user, "backfill"), {"activities": items, "last_page": True, "dry_run": False}
    )
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]
    wait_until(
        lambda: [c for c in stack.callbacks.of_type("backfill.completed") if c["data"]["job_id"] == job_id],
        240,
        "backfill.completed",
    )


def switch(stack: Stack, who: CrmUser, calendar: Any, expect: int = 202) -> dict[str, Any]:
    body = {"calendar": calendar}
    answer = stack.crm.request("PUT", user_path(who.tenant, who.user, "calendar"), body)
    assert answer.status_code == expect, answer.text
    check("PUT", "/api/tenants/{tenant}/users/{user}/calendar", answer, body)
    return answer.json()


def changed(stack: Stack, who: CrmUser, timeout: float = 240) -> dict[str, Any]:
    return wait_until(lambda: callbacks(stack, who, "calendar.changed"), timeout, "calendar.changed")[0]


def test_the_calendars_a_user_can_write_to_are_listed_with_their_colour(stack: Stack) -> None:
    who = connect(stack, "dedicated")
    stack.control.user_create_calendar(who.oid, "Familia", color="lightGreen", hexColor="#87d28e")

    answer = stack.crm.get(user_path(who.tenant, who.user, "calendars"))

    assert answer.status_code == 200, answer.text
    check("GET", "/api/tenants/{tenant}/users/{user}/calendars", answer)
    listed = {c["name"]: c for c in answer.json()["calendars"]}
    assert set(listed) == {"Calendar", "CRM", "Familia"}
    assert listed["Familia"]["colour"] == "#87d28e" and listed["Familia"]["colour_name"] == "lightGreen"
    assert listed["Calendar"]["is_default"] and not listed["CRM"]["is_default"]
    assert listed["CRM"]["in_use"] and not listed["Calendar"]["in_use"]
    assert listed["CRM"]["owner"] == who.upn


def test_switching_calendars_leaves_a_meeting_the_user_adopted_where_it_is(stack: Stack) -> None:
    """An adopted meeting (issue 17) is the user's: the move never copies nor deletes it (a delete would
    send its attendees a cancellation); our own events move."""
    who = connect(stack)
    push(stack, who, 1, prefix="ours")
    starts = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(days=3)
    booked = stack.control.user_create_event(who.oid, {
        "subject": "Demo con Acme",
        "start": {"dateTime": at(starts)[:-1], "timeZone": "UTC"},
        "end": {"dateTime": at(starts + timedelta(hours=1))[:-1], "timeZone": "UTC"},
        "attendees": [{"type": "required", "emailAddress": {"name": "Luisa", "address": "luisa@fabrikam.example"}}],
    })
    upsert(stack, who, id="adopted-1", start=at(starts), end=at(starts + timedelta(hours=1)), time_zone="UTC",
           outlook_event_id=booked["id"])
    assert synced(stack, who, "adopted-1", 1)["data"]["outlook_event_id"] == booked["id"]
    stack.wait_until_idle()

    assert switch(stack, who, "dedicated")["move"]["total"] == 1
    assert changed(stack, who)["data"]["moved"] == 1
    stack.wait_until_idle()

    mine = [e for e in stack.control.events(who.oid) if e["id"] == booked["id"]]
    assert len(mine) == 1 and mine[0]["calendarId"] == default_id(stack, who)
    assert [e["subject"] for e in stack.control.events(who.oid) if e["subject"] == "Demo con Acme"] == ["Demo con Acme"]
    assert {e["calendarId"] for e in ours(stack, who)} == {dedicated(stack, who)[0]["id"]}
    assert len(ours(stack, who)) == 1


def test_switching_from_dedicated_to_default_moves_200_events_once_and_leaves_none(stack: Stack) -> None:
    who = connect(stack, "dedicated")
    crm_calendar = dedicated(stack, who)[0]["id"]
    stack.control.reset_counters()
    backfill(stack, who, 200)
    stack.wait_until_idle()
    inner = stack.control.counters(who.oid)["mailboxes"][who.oid].get("batch_inner", {})
    assert inner.get("POST /calendars/{id}/events") == 200 and "POST /events" not in inner  # into the CRM calendar
    assert {e["calendarId"] for e in ours(stack, who)} == {crm_calendar}

    switched = switch(stack, who, "default")

    assert switched["calendar"]["choice"] == "default" and switched["move"]["total"] == 200
    done = changed(stack, who)
    stack.wait_until_idle(180)  # the reconcile after a move reads the 200 events as a new round
    assert done["data"] == {"calendar": "default", "moved": 200}
    events = ours(stack, who)
    assert len(events) == 200  # none duplicated, none lost
    assert {e["calendarId"] for e in events} == {default_id(stack, who)}  # none left behind
    assert len({e["id"] for e in events}) == 200
    moved = status(stack, who)["calendar"]
    assert moved["choice"] == "default" and moved["move"]["state"] == "done" and moved["move"]["moved"] == 200
    assert len(callbacks(stack, who, "calendar.changed")) == 1
    assert callbacks(stack, who, "activity.deleted_in_outlook") == []


def test_a_switch_resumes_after_the_host_is_killed_mid_way_without_duplicates(stack: Stack) -> None:
    from tests.support.chaos import restart_host

    fast = {"LOCAL_HOST_QUEUE_HOLD_SECONDS": "5"}
    restart_host(stack, kill=False, **fast)
    who = connect(stack)
    work = stack.control.user_create_calendar(who.oid, "Trabajo")
    backfill(stack, who, 60)
    stack.wait_until_idle()
    # Creates into the new calendar are slowed, so the host can be killed with the move half done.
    stack.control.add_fault("latency", latency_ms=150, method="POST", path_contains="/calendars/", mailbox=who.oid)

    switch(stack, who, {"id": work["id"]})
    wait_until(lambda: (status(stack, who)["calendar"]["move"] or {}).get("moved", 0) >= 25, 120, "a page moved")
    stack.control.clear_faults()
    # The next create reaches Graph, which keeps it until the host is dead: its answer never arrives.
    rule = stack.control.add_fault("hold", count=1, method="POST", path_contains="/calendars/", mailbox=who.oid)
    wait_until(
        lambda: any(f["id"] == rule["id"] and f["hits"] == 1 for f in stack.control.faults()),
        60,
        "a create of the move held in Graph",
    )
    assert status(stack, who)["calendar"]["move"]["state"] == "moving"
    restart_host(stack, kill=True, **fast)  # kill -9 in the middle of the move
    stack.control.release_holds()

    done = changed(stack, who)
    stack.wait_until_idle()
    events = ours(stack, who)
    assert len(events) == 60 and len({e["id"] for e in events}) == 60  # no duplicates
    assert {e["calendarId"] for e in events} == {work["id"]}  # none left behind
    assert done["data"]["calendar"] == {"id": work["id"]}
    assert status(stack, who)["calendar"]["move"]["state"] == "done"
