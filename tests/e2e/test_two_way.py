"""Issue 16 through the dev host, Azurite and the Graph emulator acting as the user in Outlook:
per-tenant field directions, Outlook content edits reported once with their net change, the CRM's
echo of an accepted edit written nowhere, the conflict rule, and the settings endpoint itself.

Every "only", "no" and "nothing else" is asserted after ``stack.wait_until_idle()``; every date is
computed from the clock (tests/support/clock.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import quote

import pytest

from shared.store import links
from tests.conftest import Stack, wait_until
from tests.e2e.push.conftest import CrmUser, activity, connect_user, ours, synced, upsert, user_path, writes
from tests.e2e.push.openapi_contract import check, check_callback
from tests.support import clock

pytestmark = pytest.mark.e2e
CHANGED = "activity.changed_in_outlook"
SETTINGS = "/api/tenants/{tenant}/settings"
DAY = clock.winter_day()  # a future day with standard time in Bogotá's and Madrid's zones alike
TIMES = {"start": f"{DAY}T10:00:00", "end": f"{DAY}T11:00:00"}  # America/Bogota: 15:00-16:00 UTC
NOTES = "Llevar la lista de precios.\nConfirmar descuentos."  # BASE_ACTIVITY's description


@pytest.fixture()
def ana(stack: Stack) -> CrmUser:
    return connect_user(stack)


def settings_path(tenant: str) -> str:
    return f"/api/tenants/{quote(tenant, safe='')}/settings"


def put_directions(stack: Stack, tenant: str, **directions: str) -> dict[str, Any]:
    body = {"field_directions": directions}
    answer = stack.crm.request("PUT", settings_path(tenant), body)
    assert answer.status_code == 200, answer.text
    check("PUT", SETTINGS, answer, body)
    return answer.json()


def received(stack: Stack, who: CrmUser) -> list[dict[str, Any]]:
    """Every callback about this user, checked against the contract."""
    found = [c for c in stack.callbacks.received if c.get("user_id") == who.user]
    for callback in found:
        check_callback(callback)
    return found


def event_of(stack: Stack, who: CrmUser, activity_id: str = "act-1") -> dict[str, Any]:
    stored = links.get(stack.storage, who.tenant, who.user, activity_id)
    return next(e for e in ours(stack, who) if e["id"] == stored.link.outlook_event_id)


def pushed(stack: Stack, who: CrmUser, **overrides: Any) -> dict[str, Any]:
    """act-1 v1 in Outlook, our own write's notification read, everything quiet."""
    upsert(stack, who, **{**TIMES, **overrides})
    synced(stack, who, "act-1", overrides.get("version", 1))
    stack.wait_until_idle()
    return event_of(stack, who)


def read_by_reconcile(stack: Stack, who: CrmUser, event_id: str) -> None:
    """Wait until the reconcile has read the event's current state (its changeKey is on the link)."""
    def done() -> bool:
        current = next(e for e in ours(stack, who) if e["id"] == event_id)["changeKey"]
        return links.get(stack.storage, who.tenant, who.user, "act-1").link.change_key == current

    wait_until(done, what="the reconcile to read the edit")
    stack.wait_until_idle()


def with_note(event: dict[str, Any], note: str) -> dict[str, Any]:
    """The body as the user leaves it after typing a line under the description in Outlook."""
    content = event["body"]["content"]
    marker = content.index("──────── CRM")
    paragraph = content.rindex("<p", 0, marker)
    return {"contentType": "html", "content": f"{content[:paragraph]}<div>{note}</div>{content[paragraph:]}"}


def test_settings_are_validated_stored_and_default_to_times_two_way(stack: Stack) -> None:
    tenant = "tenant-settings/1"
    first = stack.crm.get(settings_path(tenant))
    assert first.status_code == 200
    check("GET", SETTINGS, first)
    assert first.json()["field_directions"] == {
        "subject": "crm_to_outlook", "description": "crm_to_outlook", "location": "crm_to_outlook",
        "times": "two_way", "reminder": "crm_to_outlook"}

    stored = put_directions(stack, tenant, subject="two_way", description="two_way")
    assert stored["field_directions"]["subject"] == "two_way" and stored["field_directions"]["times"] == "two_way"
    again = stack.crm.get(settings_path(tenant)).json()
    assert again == stored

    for body, field in (
        ({"field_directions": {"subject": "always"}}, "field_directions.subject"),
        ({"field_directions": {"colour": "two_way"}}, "field_directions.colour"),
        ({"capture_meetings": "always"}, "capture_meetings"),
        ({"dedicated_calendar": "CRM"}, "dedicated_calendar"),
    ):
        bad = stack.crm.request("PUT", settings_path(tenant), body)
        assert bad.status_code == 400, bad.text
        check("PUT", SETTINGS, bad)
        assert [f["field"] for f in bad.json()["fields"]] == [field]
    unsigned = stack.crm.request("PUT", settings_path(tenant), {}, signature="t=1,v1=00")
    assert unsigned.status_code == 401
    assert stack.crm.get(settings_path(tenant)).json() == stored  # nothing bad was stored


def test_a_two_way_subject_and_location_edit_is_one_callback_with_both_and_nothing_else(
    stack: Stack, ana: CrmUser
) -> None:
    put_directions(stack, ana.tenant, subject="two_way", location="two_way")
    event = pushed(stack, ana)
    before, patches = len(received(stack, ana)), writes(stack, ana, "PATCH")

    stack.control.user_update_event(ana.oid, event["id"], {"subject": "Renovación: cerrar precio"})
    stack.control.user_update_event(ana.oid, event["id"], {"location": {"displayName": "Sala 2"}})
    stack.callbacks.wait_for(CHANGED)
    stack.wait_until_idle()

    new = received(stack, ana)[before:]
    assert [c["type"] for c in new] == [CHANGED]
    data = new[0]["data"]
    assert data["changes"] == {
        "subject": {"from": "Revisar la renovación con Ana", "to": "Renovación: cerrar precio"},
        "location": {"from": "Oficina Bogotá", "to": "Sala 2"},
    }
    assert data["version"] == 1 and data["activity_id"] == "act-1"
    assert data["changed_at"] == event_of(stack, ana)["lastModifiedDateTime"]
    assert (data["start"], data["end"], data["all_day"]) == (f"{DAY}T15:00:00Z", f"{DAY}T16:00:00Z", False)
    assert writes(stack, ana, "PATCH") == patches  # nothing written back to Outlook


def test_with_the_default_directions_the_same_edit_is_not_reported(stack: Stack, ana: CrmUser) -> None:
    event = pushed(stack, ana)
    before = len(received(stack, ana))
    stack.control.user_update_event(
        ana.oid, event["id"], {"subject": "Renovación: cerrar precio", "location": {"displayName": "Sala 2"}}
    )
    read_by_reconcile(stack, ana, event["id"])
    assert received(stack, ana)[before:] == []


def test_a_time_move_still_gets_todays_callback(stack: Stack, ana: CrmUser) -> None:
    event = pushed(stack, ana)
    before = len(received(stack, ana))
    next_day = DAY + timedelta(days=1)
    stack.control.user_move_event(
        ana.oid,
        event["id"],
        start={"dateTime": f"{next_day}T07:30:00", "timeZone": "Pacific Standard Time"},
        end={"dateTime": f"{next_day}T08:15:00", "timeZone": "Pacific Standard Time"},
    )
    stack.callbacks.wait_for(CHANGED)
    stack.wait_until_idle()
    new = received(stack, ana)[before:]
    assert [c["type"] for c in new] == [CHANGED]
    data = new[0]["data"]
    # today's fields, as before issue 16 ...
    assert (data["activity_id"], data["start"], data["end"], data["all_day"]) == (
        "act-1", f"{next_day}T15:30:00Z", f"{next_day}T16:15:00Z", False)
    # ... and the same move as changes (times are two-way by default)
    assert data["changes"] == {
        "start": {"from": f"{DAY}T15:00:00Z", "to": f"{next_day}T15:30:00Z"},
        "end": {"from": f"{DAY}T16:00:00Z", "to": f"{next_day}T16:15:00Z"},
    }


def test_the_crms_echo_of_an_accepted_edit_costs_no_graph_write(stack: Stack, ana: CrmUser) -> None:
    put_directions(stack, ana.tenant, subject="two_way", location="two_way", description="two_way")
    event = pushed(stack, ana)
    stack.control.user_update_event(ana.oid, event["id"], {
        "subject": "Renovación: cerrar precio",
        "location": {"displayName": "Sala 2"},
        "body": with_note(event, "Ana pidió el contrato firmado."),
    })
    changed = stack.callbacks.wait_for(CHANGED)[0]["data"]
    assert changed["changes"]["description"] == {"from": NOTES, "to": NOTES + "\nAna pidió el contrato firmado."}
    stack.wait_until_idle()
    counted = {m: writes(stack, ana, m) for m in ("POST", "PATCH", "DELETE")}
    before = len(received(stack, ana))

    # The CRM accepts the edit and sends the activity back with what Outlook shows.
    upsert(stack, ana, version=2, subject="Renovación: cerrar precio", location="Sala 2",
           description=changed["changes"]["description"]["to"], **TIMES)
    synced(stack, ana, "act-1", 2)
    stack.wait_until_idle()

    assert {m: writes(stack, ana, m) for m in ("POST", "PATCH", "DELETE")} == counted  # 0 Graph writes
    assert [c["type"] for c in received(stack, ana)[before:]] == ["activity.synced"]  # no ping-pong
    shown = event_of(stack, ana)
    assert shown["subject"] == "Renovación: cerrar precio" and shown["location"]["displayName"] == "Sala 2"

    # A real change afterwards is written again, and is not reported back.
    upsert(stack, ana, version=3, subject="Renovación firmada", location="Sala 2",
           description=changed["changes"]["description"]["to"], **TIMES)
    synced(stack, ana, "act-1", 3)
    stack.wait_until_idle()
    assert writes(stack, ana, "PATCH") == counted["PATCH"] + 1
    assert [c["type"] for c in received(stack, ana)[before:]] == ["activity.synced", "activity.synced"]


@pytest.mark.parametrize("crm_change", ["push", "sync"])
def test_a_conflict_the_crms_later_change_wins_in_outlook_and_the_users_text_is_reported(
    stack: Stack, ana: CrmUser, crm_change: str
) -> None:
    """The CRM's later change arrives by a push, or by "Sync" (a backfill, whose $batch PATCH
    carries If-Match too): either way the user's edit is read and reported first."""
    put_directions(stack, ana.tenant, subject="two_way")
    event = pushed(stack, ana)
    before = len(received(stack, ana))

    # The user renames the meeting; before any reconcile reads it, the CRM changes the subject too.
    stack.control.set_notifications(paused=True)
    stack.control.user_update_event(ana.oid, event["id"], {"subject": "Lo que escribió Ana en Outlook"})
    confirmation = change_in_crm(stack, ana, crm_change, version=2, subject="Lo que cambió el CRM", **TIMES)
    stack.control.set_notifications(paused=False)
    stack.wait_until_idle()

    new = received(stack, ana)[before:]
    assert sorted(c["type"] for c in new) == sorted([CHANGED, confirmation])
    data = next(c["data"] for c in new if c["type"] == CHANGED)
    assert data["conflict"] is True and data["version"] == 1
    assert data["changes"] == {
        "subject": {"from": "Revisar la renovación con Ana", "to": "Lo que escribió Ana en Outlook"}}
    assert event_of(stack, ana)["subject"] == "Lo que cambió el CRM"  # the CRM's later change wins in Outlook
    assert links.get(stack.storage, ana.tenant, ana.user, "act-1").link.version == 2


def change_in_crm(stack: Stack, who: CrmUser, how: str, **fields: Any) -> str:
    """act-1's new version sent by a push, or by a Sync page; once done, the callback type that confirmed it."""
    if how == "push":
        upsert(stack, who, **fields)
        synced(stack, who, "act-1", fields["version"])
        return "activity.synced"
    page = {"activities": [activity(who, **fields)], "last_page": True}
    answer = stack.crm.post(user_path(who.tenant, who.user, "backfill"), page)
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]
    done = wait_until(
        lambda: [c for c in stack.callbacks.of_type("backfill.completed") if c["data"]["job_id"] == job_id],
        what="the Sync to complete",
    )[0]["data"]
    assert (done["updated"], done["failed"]) == (1, 0)
    return "backfill.completed"
