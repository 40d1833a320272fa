"""Issue 4: a signed CRM webhook becomes exactly one Outlook event at the exact time, through the
dev host, Azurite and the Graph emulator, over real HTTP."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from shared.rules import crm_signature
from shared.rules.event_notes import notes_of
from shared.rules.event_render import property_value, transaction_id
from shared.rules.settings import load
from shared.store import links, tables
from tests.conftest import Stack, wait_until
from tests.e2e.push.conftest import (
    DAY,
    EVENTS_PATH,
    CrmUser,
    activity,
    connect_user,
    envelope,
    ours,
    property_of,
    send,
    status,
    synced,
    upsert,
    utc,
    writes,
)
from tests.e2e.push.openapi_contract import check

pytestmark = pytest.mark.e2e


def one_event(stack: Stack, who: CrmUser, what: str = "one event") -> dict:
    events = wait_until(lambda: ours(stack, who), what=what)
    assert len(events) == 1, events
    return events[0]


def test_a_signed_webhook_yields_one_event_with_the_right_fields_at_the_exact_time(
    stack: Stack, ana: CrmUser
) -> None:
    upsert(stack, ana)  # DAY 10:00-11:00 in Bogota (UTC-5) = 16:00-17:00 in Madrid (UTC+1, winter)
    callback = synced(stack, ana, "act-1", 1)

    event = one_event(stack, ana)
    assert utc(event) == (f"{DAY}T15:00:00Z", f"{DAY}T16:00:00Z")
    assert event["start"] == {
        "dateTime": f"{DAY}T15:00:00.0000000",
        "timeZone": "UTC",
    }  # as Graph answers
    assert event["originalStartTimeZone"] == "Romance Standard Time"
    assert event["subject"] == "Revisar la renovación con Ana"
    assert event["isAllDay"] is False and event["showAs"] == "busy"
    assert event["location"]["displayName"] == "Oficina Bogotá"
    assert event["isReminderOn"] is True and event["reminderMinutesBeforeStart"] == 30
    assert event["categories"] == ["Reunión"]
    assert event["attendees"] == []  # never invite the customer
    body = event["body"]["content"]  # as Outlook keeps it: rewritten, so read as text where it matters
    assert notes_of(event["body"]).notes == "Llevar la lista de precios.\nConfirmar descuentos."
    for text in (
        "Ana Pérez",
        "ana@acme.example",
        "Acme S.A.S.",
        "Renovación 2027",
        "https://crm.example.com/activities/act-1",
        "Abrir en el CRM",
    ):
        assert text in body
    assert event["transactionId"] == transaction_id(ana.tenant, ana.user, "act-1", 1)
    assert property_of(event) == property_value(ana.tenant, "act-1")

    assert callback["data"]["outlook_event_id"] == event["id"]
    assert callback["data"]["web_link"] == event["webLink"]
    stored = links.get(stack.storage, ana.tenant, ana.user, "act-1")
    assert stored.link.outlook_event_id == event["id"] and stored.extra["state"] == "synced"
    assert stored.extra["end_utc"] == f"{DAY}T16:00:00Z"
    now = status(stack, ana)
    assert now["counts"] == {"synced": 1, "failed": 0}
    assert now["last_sync_at"] is not None and now["recent_errors"] == []


def test_other_zones_all_day_dates_and_offsets(stack: Stack) -> None:
    tokyo = connect_user(stack, time_zone="Tokyo Standard Time", locale="en")
    # An instant with an offset from a CRM in New York, the day clocks go forward there.
    upsert(
        stack,
        tokyo,
        id="a-offset",
        start="2027-03-14T01:30:00-05:00",
        end="2027-03-14T03:30:00-04:00",
        time_zone="America/New_York",
    )
    # Wall-clock time inside New York's DST gap: read with the offset before the gap (02:30 EST).
    upsert(
        stack,
        tokyo,
        id="a-gap",
        start="2027-03-14T02:30:00",
        end="2027-03-14T04:00:00",
        time_zone="America/New_York",
    )
    upsert(
        stack,
        tokyo,
        id="a-day",
        all_day=True,
        start="2027-03-28",
        end="2027-03-30",
        time_zone="Europe/Madrid",
    )
    for activity_id in ("a-offset", "a-gap", "a-day"):
        synced(stack, tokyo, activity_id, 1)
    by_activity = {property_of(e).split("|")[1]: e for e in ours(stack, tokyo)}

    assert utc(by_activity["a-offset"]) == (
        "2027-03-14T06:30:00Z",
        "2027-03-14T07:30:00Z",
    )
    assert utc(by_activity["a-gap"])[0] == "2027-03-14T07:30:00Z"
    gap = synced(stack, tokyo, "a-gap", 1)["data"]["time_notes"]
    assert [(n["field"], n["kind"]) for n in gap] == [("start", "dst_gap")]
    day = by_activity["a-day"]
    assert day["isAllDay"] is True
    assert day["start"]["dateTime"].startswith("2027-03-28T00:00:00")
    assert day["end"]["dateTime"].startswith("2027-03-30T00:00:00")
    assert day["originalStartTimeZone"] == "Tokyo Standard Time"
    assert "Open in CRM" in by_activity["a-offset"]["body"]["content"]  # the user's locale


def test_updates_patch_a_no_op_writes_nothing_and_cancel_deletes(stack: Stack, ana: CrmUser) -> None:
    upsert(stack, ana)
    created = synced(stack, ana, "act-1", 1)["data"]["outlook_event_id"]

    upsert(
        stack,
        ana,
        version=2,
        subject="Renovación: nueva fecha",
        start=f"{DAY}T12:00:00",
        end=f"{DAY}T12:45:00",
    )
    synced(stack, ana, "act-1", 2)
    event = one_event(stack, ana)
    assert event["id"] == created and event["subject"] == "Renovación: nueva fecha"
    assert utc(event) == (f"{DAY}T17:00:00Z", f"{DAY}T17:45:00Z")
    assert (writes(stack, ana, "POST"), writes(stack, ana, "PATCH")) == (1, 1)

    upsert(
        stack,
        ana,
        version=3,
        subject="Renovación: nueva fecha",
        start=f"{DAY}T12:00:00",
        end=f"{DAY}T12:45:00",
    )  # a CRM change that Outlook does not show
    synced(stack, ana, "act-1", 3)
    assert (writes(stack, ana, "POST"), writes(stack, ana, "PATCH")) == (1, 1)

    upsert(stack, ana, version=4, status="cancelled")
    removed = synced(stack, ana, "act-1", 4)["data"]
    assert removed["outlook_event_id"] is None and removed["web_link"] is None
    assert ours(stack, ana) == [] and writes(stack, ana, "DELETE") == 1
    assert status(stack, ana)["counts"] == {"synced": 0, "failed": 0}

    # Deleted in the CRM afterwards: a tombstone; a late, older upsert cannot bring the event back.
    send(
        stack,
        envelope(ana.tenant, "activity.deleted", {"id": "act-1", "owner_user_id": ana.user, "version": 5}),
    )
    wait_until(
        lambda: links.get(stack.storage, ana.tenant, ana.user, "act-1").link.tombstone, what="tombstone"
    )
    stack.wait_until_idle()
    reported = [c for c in stack.callbacks.received if c["data"].get("activity_id") == "act-1"]
    upsert(stack, ana, version=4, subject="stale")
    stack.wait_until_idle()  # the stale upsert handled (a later message is no barrier: 16 run at once)
    assert ours(stack, ana) == []
    assert [c for c in stack.callbacks.received if c["data"].get("activity_id") == "act-1"] == reported


def test_duplicates_and_versions_out_of_order_end_at_the_latest(stack: Stack, ana: CrmUser) -> None:
    first = envelope(ana.tenant, "activity.upserted", activity(ana, version=1, subject="v1"))
    assert send(stack, first).json() == {"id": first["id"], "status": "accepted"}
    assert send(stack, first).json() == {"id": first["id"], "status": "duplicate"}
    synced(stack, ana, "act-1", 1)

    for version in (4, 2, 3):  # sent together, out of order
        upsert(stack, ana, version=version, subject=f"v{version}")
    synced(stack, ana, "act-1", 4)
    stack.wait_until_idle()  # versions 2 and 3 handled too, and every callback delivered
    assert links.get(stack.storage, ana.tenant, ana.user, "act-1").link.version == 4
    event = one_event(stack, ana)
    assert event["subject"] == "v4"
    assert writes(stack, ana, "POST") == 1
    assert len([c for c in stack.callbacks.of_type("activity.synced") if c["data"]["version"] == 1]) == 1


def test_a_create_whose_answer_is_lost_still_yields_one_event(stack: Stack, ana: CrmUser) -> None:
    stack.control.add_fault("lost_response", count=1, method="POST", path_contains="/events", mailbox=ana.oid)
    upsert(stack, ana)
    synced(stack, ana, "act-1", 1)

    event = one_event(stack, ana)
    assert writes(stack, ana, "POST") == 1  # created once, then found by our property and adopted
    assert links.get(stack.storage, ana.tenant, ana.user, "act-1").link.outlook_event_id == event["id"]


def test_a_429_storm_ends_with_every_event_exactly_once(stack: Stack, ana: CrmUser) -> None:
    stack.control.add_fault("429", count=10, retry_after=1, path_contains="/events", mailbox=ana.oid)
    count = 12
    for n in range(count):
        upsert(
            stack,
            ana,
            id=f"storm-{n}",
            url=f"https://crm.example.com/activities/storm-{n}",
            subject=f"Llamada {n}",
        )
    for n in range(count):
        synced(stack, ana, f"storm-{n}", 1, timeout=60)

    events = ours(stack, ana)
    assert sorted(property_of(e) for e in events) == sorted(
        property_value(ana.tenant, f"storm-{n}") for n in range(count)
    )
    counters = stack.control.counters(ana.oid)["totals"][ana.oid]
    assert counters["throttled"] >= 10
    gate = stack.storage.table(tables.MAILBOX_GATES).get_entity(tables.key(ana.tenant, ana.user), "")
    assert gate["throttled_until"] is not None
    assert status(stack, ana)["counts"] == {"synced": count, "failed": 0}
    assert stack.poisoned("activity-sync") == []


def test_bad_inputs_get_the_documented_4xx_and_change_nothing(stack: Stack, ana: CrmUser) -> None:
    good = envelope(ana.tenant, "activity.upserted", activity(ana))
    raw = json.dumps(good).encode()

    def post(**kwargs):
        answer = stack.crm.post(EVENTS_PATH, raw=kwargs.pop("raw", raw), **kwargs)
        check("POST", EVENTS_PATH, answer)
        return answer

    assert post(signature="t=1,v2=" + "0" * 64).status_code == 401
    assert post(timestamp=time.time() - 301).status_code == 401  # stale
    rid = "tampered-0123456789"
    tampered = crm_signature.sign(stack.secrets["CRM_SHARED_SECRET"], "POST", EVENTS_PATH, b"{}", time.time(), rid)
    assert post(signature=tampered, request_id=rid).status_code == 401
    assert post(raw=b'{"id": ').status_code == 400
    assert post(raw=b" " * (1024 * 1024 + 1)).status_code == 413

    bad = envelope(
        ana.tenant,
        "activity.upserted",
        activity(ana, start="mañana", time_zone="Mars/Olympus", version=-1, url="ftp://x"),
    )
    bad.pop("occurred_at")
    answer = post(raw=json.dumps(bad).encode())
    assert answer.status_code == 400
    problem = answer.json()
    assert problem["error"] == "invalid_request"
    assert {f["field"] for f in problem["fields"]} >= {
        "occurred_at",
        "data.start",
        "data.time_zone",
        "data.version",
        "data.url",
    }

    # Nothing was recorded, queued or written: the same id is still new afterwards.
    assert (
        list(
            stack.storage.table(tables.DEDUP).query_entities(
                "PartitionKey eq @pk", parameters={"pk": tables.key(ana.tenant)}
            )
        )
        == []
    )
    assert send(stack, good).json()["status"] == "accepted"
    synced(stack, ana, "act-1", 1)
    assert len(ours(stack, ana)) == 1


def test_a_permanent_graph_400_is_reported_recorded_and_not_retried(stack: Stack, ana: CrmUser) -> None:
    # Something else already used our transactionId for a different event (Graph answers 400
    # ErrorDuplicateTransactionId), and that event does not carry our property.
    from shared.outlook.identity import Identity

    settings = load(stack.host.env)
    token = Identity(settings, stack.storage).access_token(ana.tenant, ana.user)
    import requests

    squatter = {
        "subject": "not ours",
        "transactionId": transaction_id(ana.tenant, ana.user, "act-1", 1),
        "start": {"dateTime": f"{DAY}T07:00:00", "timeZone": "UTC"},
        "end": {"dateTime": f"{DAY}T08:00:00", "timeZone": "UTC"},
    }
    made = requests.post(
        f"{stack.emulator.graph_base}/me/events",
        json=squatter,
        timeout=30,
        headers={"Authorization": f"Bearer {token}"},
        verify=stack.emulator.ca_path,
    )
    assert made.status_code == 201, made.text

    upsert(stack, ana)
    failed = wait_until(lambda: stack.callbacks.of_type("activity.sync_failed"), what="sync_failed")
    assert failed[0]["data"]["activity_id"] == "act-1" and failed[0]["data"]["version"] == 1
    assert failed[0]["data"]["error"]["code"] == "ErrorDuplicateTransactionId"

    now = status(stack, ana)
    assert now["counts"] == {"synced": 0, "failed": 1}
    assert now["recent_errors"][0]["kind"] == "sync" and "act-1" in now["recent_errors"][0]["message"]
    stored = links.get(stack.storage, ana.tenant, ana.user, "act-1")
    assert stored.extra["state"] == "failed" and "ErrorDuplicateTransactionId" in stored.extra["last_error"]
    assert writes(stack, ana, "POST") == 2  # the squatter and our one attempt: no retry loop
    assert stack.poisoned("activity-sync") == []

    # The next version is tried again, and a success clears the failure.
    upsert(stack, ana, version=2, id="act-1")
    assert len(stack.callbacks.wait_for("activity.sync_failed", 2)) == 2  # still the same squatter
    stack.control.user_delete_event(ana.oid, made.json()["id"])
    upsert(stack, ana, version=3)  # generation 1 again, and now its transactionId is free
    synced(stack, ana, "act-1", 3)
    assert status(stack, ana)["counts"] == {"synced": 1, "failed": 0}


def test_an_auth_failure_moves_the_user_to_reauth_required_once(stack: Stack) -> None:
    stack.control.set_identity(access_token_lifetime=120)  # MSAL refreshes tokens this short-lived
    try:
        bea = connect_user(stack)
    finally:
        stack.control.set_identity(access_token_lifetime=3600)
    stack.control.expire_refresh_tokens(bea.oid)

    for n in range(3):
        upsert(stack, bea, id=f"auth-{n}", url=f"https://crm.example.com/activities/auth-{n}")
    stack.callbacks.wait_for("connection.reauth_required")
    stack.wait_until_idle()  # the three messages handled and their callbacks delivered

    told = stack.callbacks.of_type("connection.reauth_required")
    assert [(c["tenant_id"], c["user_id"]) for c in told] == [(bea.tenant, bea.user)]
    now = status(stack, bea)
    assert now["state"] == "reauth_required"
    assert "auth" in {error["kind"] for error in now["recent_errors"]}  # other workers may add theirs after
    assert ours(stack, bea) == []


def test_type_flag_off_removes_its_events_for_every_user_and_on_brings_them_back(stack: Stack) -> None:
    ana = connect_user(stack)
    bruno = connect_user(stack, ana.tenant, time_zone="SA Pacific Standard Time")
    call_type = {"id": "type-call", "name": "Llamada", "show_in_calendar": True}
    for who in (ana, bruno):
        upsert(stack, who, id="meet", url="https://crm.example.com/activities/meet")
        upsert(stack, who, id=f"call-{who.oid}", type=call_type, url="https://crm.example.com/a/c")
    for who in (ana, bruno):
        synced(stack, who, "meet", 1)
        synced(stack, who, f"call-{who.oid}", 1)

    before = datetime.now(UTC)
    send(stack, envelope(ana.tenant, "activity_type.updated", {**call_type, "show_in_calendar": False}))
    for who in (ana, bruno):
        wait_until(lambda who=who: len(ours(stack, who)) == 1, what="the call removed")
        assert property_of(ours(stack, who)[0]) == property_value(ana.tenant, "meet")

    # A late upsert that still carries the old type copy does not bring it back.
    late = activity(ana, id="call-late", type=call_type, url="https://crm.example.com/a/late")
    send(stack, envelope(ana.tenant, "activity.upserted", late, occurred_at=before))
    stack.wait_until_idle()
    assert links.get(stack.storage, ana.tenant, ana.user, "call-late")  # seen, and not synced
    assert len(ours(stack, ana)) == 1

    send(stack, envelope(ana.tenant, "activity_type.updated", call_type))
    for who in (ana, bruno):
        wait_until(lambda who=who: len(ours(stack, who)) == (3 if who is ana else 2), what="calls back")
    subjects = {e["subject"] for e in ours(stack, bruno)}
    assert subjects == {"Revisar la renovación con Ana"}


def test_user_updated_changes_locale_and_crm_time_zone(stack: Stack, ana: CrmUser) -> None:
    send(
        stack,
        envelope(
            ana.tenant, "user.updated", {"user_id": ana.user, "time_zone": "Europe/Madrid", "locale": "en-GB"}
        ),
    )
    now = wait_until(lambda: (s := status(stack, ana))["locale"] == "en" and s, what="locale updated")
    assert now["crm_time_zone"] == "Europe/Madrid"

    upsert(stack, ana)
    synced(stack, ana, "act-1", 1)
    assert "Open in CRM" in ours(stack, ana)[0]["body"]["content"]
