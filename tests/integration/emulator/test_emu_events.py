"""Events CRUD, ids and change keys, transactionId, extended properties, $select/$top/paging, schema checks."""

from __future__ import annotations

import re

import pytest

from .conftest import event_body

pytestmark = pytest.mark.integration

PROP = "String {66f5a359-4659-4830-9070-00040ec6ac6e} Name CrmActivityId"


def test_create_get_update_delete(graph):
    r = graph("POST", "/me/events", json=event_body("Call ACME", body={"contentType": "text", "content": "a<b"}))
    assert r.status_code == 201, r.text
    ev = r.json()
    assert re.fullmatch(r"[A-Za-z0-9_\-]+=*", ev["id"]) and ev["iCalUId"] and ev["changeKey"]
    assert ev["@odata.etag"] == f'W/"{ev["changeKey"]}"'
    assert ev["start"] == {"dateTime": "2030-03-04T10:00:00.0000000", "timeZone": "UTC"}
    assert "transactionId" not in ev  # only returned when set
    assert ev["body"]["contentType"] == "html" and "a&lt;b" in ev["body"]["content"]
    got = graph("GET", f"/me/events/{ev['id']}").json()
    assert got["subject"] == "Call ACME" and got["changeKey"] == ev["changeKey"]

    p = graph("PATCH", f"/me/events/{ev['id']}", json={"subject": "Call ACME (moved)"})
    assert p.status_code == 200
    upd = p.json()
    assert upd["id"] == ev["id"] and upd["iCalUId"] == ev["iCalUId"]
    assert upd["changeKey"] != ev["changeKey"] and upd["@odata.etag"] != ev["@odata.etag"]
    again = graph("PATCH", f"/me/events/{ev['id']}", json={"showAs": "free"}).json()
    assert again["changeKey"] not in (ev["changeKey"], upd["changeKey"])

    assert graph("DELETE", f"/me/events/{ev['id']}").status_code == 204
    gone = graph("GET", f"/me/events/{ev['id']}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "ErrorItemNotFound"
    assert graph("DELETE", f"/me/events/{ev['id']}").status_code == 404
    assert graph("PATCH", f"/me/events/{ev['id']}", json={"subject": "x"}).status_code == 404


def test_users_path_calendars_and_dedicated_calendar(graph, user, ctl):
    cal = graph("POST", "/me/calendars", json={"name": "CRM"})
    assert cal.status_code == 201 and cal.json()["isDefaultCalendar"] is False
    assert graph("POST", "/me/calendars", json={"name": "crm"}).status_code == 409
    cid = cal.json()["id"]
    r = graph("POST", f"/users/{user['id']}/calendars/{cid}/events", json=event_body("In CRM calendar"))
    assert r.status_code == 201
    eid = r.json()["id"]
    assert graph("GET", f"/users/{user['upn']}/events/{eid}").status_code == 200
    assert graph("GET", f"/me/calendars/{cid}/events/{eid}").status_code == 200
    listed = graph("GET", f"/me/calendars/{cid}/events").json()["value"]
    assert [e["id"] for e in listed] == [eid]
    assert graph("GET", "/me/events").json()["value"] == []  # /me/events: the default calendar
    other = ctl.add_user("eve@contoso.example")
    denied = graph("GET", f"/users/{other['id']}/events")
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "ErrorAccessDenied"


def test_transaction_id_repeated_post_returns_the_same_event(graph, ctl, user):
    body = event_body("Retry me", transactionId="crm-42-v1")
    first = graph("POST", "/me/events", json=body)
    second = graph("POST", "/me/events", json=body)
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"] and first.json()["transactionId"] == "crm-42-v1"
    assert len(ctl.events(user["id"])) == 1
    clash = graph("POST", "/me/events", json=event_body("Other", transactionId="crm-42-v1"))
    assert clash.status_code == 400 and clash.json()["error"]["code"] == "ErrorDuplicateTransactionId"
    change = graph("PATCH", f"/me/events/{first.json()['id']}", json={"transactionId": "other"})
    assert change.status_code == 400
    # The twin switch makes the emulator create duplicates, like a retry outside Graph's dedupe window.
    ctl.update_settings(transaction_id_mode="duplicate")
    twin = graph("POST", "/me/events", json=body)
    assert twin.status_code == 201 and twin.json()["id"] != first.json()["id"]
    assert len(ctl.events(user["id"])) == 2


def test_extended_property_create_patch_filter_expand(graph, ctl, user):
    a = graph("POST", "/me/events", json=event_body("A", singleValueExtendedProperties=[
        {"id": PROP, "value": "tenant1:act-1"}])).json()
    assert "singleValueExtendedProperties" not in a  # responses omit extended properties
    b = graph("POST", "/me/events", json=event_body("B")).json()
    patched = graph("PATCH", f"/me/events/{b['id']}", json={"singleValueExtendedProperties": [
        {"id": PROP, "value": "tenant1:act-2"}]})
    assert patched.status_code == 200 and "singleValueExtendedProperties" not in patched.json()

    flt = f"singleValueExtendedProperties/Any(ep: ep/id eq '{PROP}' and ep/value eq 'TENANT1:ACT-2')"
    found = graph("GET", "/me/events", params={"$filter": flt}).json()["value"]
    assert [e["id"] for e in found] == [b["id"]]  # value comparison is case-insensitive
    wrong_name = PROP.replace("CrmActivityId", "crmactivityid")
    none = graph("GET", "/me/events", params={"$filter": flt.replace(PROP, wrong_name)}).json()["value"]
    assert none == []  # the name part of the id is case-sensitive

    exp = f"singleValueExtendedProperties($filter=id eq '{PROP}')"
    got = graph("GET", f"/me/events/{a['id']}", params={"$expand": exp}).json()
    assert got["singleValueExtendedProperties"] == [{"id": PROP, "value": "tenant1:act-1"}]
    assert graph("GET", f"/me/events/{a['id']}", params={"$expand": "singleValueExtendedProperties"}) \
        .status_code == 400
    stored = {e["id"]: e for e in ctl.events(user["id"])}
    assert stored[b["id"]]["singleValueExtendedProperties"][0]["value"] == "tenant1:act-2"


def test_select_top_and_paging(graph):
    ids = [graph("POST", "/me/events", json=event_body(f"E{i}")).json()["id"] for i in range(5)]
    page = graph("GET", "/me/events", params={"$select": "subject,start", "$top": "2"}).json()
    assert len(page["value"]) == 2
    assert set(page["value"][0]) == {"@odata.etag", "id", "subject", "start"}
    seen = [e["id"] for e in page["value"]]
    while "@odata.nextLink" in page:
        page = graph("GET", page["@odata.nextLink"]).json()
        seen += [e["id"] for e in page["value"]]
    assert seen == ids
    pref = graph("GET", "/me/events", headers={"Prefer": "odata.maxpagesize=3"}).json()
    assert len(pref["value"]) == 3 and "@odata.nextLink" in pref
    bad = graph("GET", "/me/events", params={"$select": "subject,nonsense"})
    assert bad.status_code == 400


def test_unknown_properties_and_bad_values_are_rejected(graph):
    r = graph("POST", "/me/events", json=event_body("x", colour="red"))
    assert r.status_code == 400 and "colour" in r.json()["error"]["message"]
    r = graph("POST", "/me/events", json=event_body("x", location={"displayName": "HQ", "floor": 3}))
    assert r.status_code == 400 and "floor" in r.json()["error"]["message"]
    r = graph("POST", "/me/events", json=event_body("x", showAs="sleeping"))
    assert r.status_code == 400
    r = graph("POST", "/me/events", json=event_body("x", isReminderOn="yes"))
    assert r.status_code == 400
    ok = graph("POST", "/me/events", json=event_body("x", showAs="Free", categories=["CRM"],
                                                      location={"displayName": "HQ"}))
    assert ok.status_code == 201 and ok.json()["showAs"] == "free"
    assert ok.json()["locations"][0]["displayName"] == "HQ"
    ev = ok.json()["id"]
    r = graph("PATCH", f"/me/events/{ev}", json={"reminder": 5})
    assert r.status_code == 400


def test_mailbox_settings_need_their_scope(emu, app, user):
    from .conftest import Graph, raw_token

    tok = raw_token(emu, app, user, scopes=("Calendars.ReadWrite", "User.Read"))["access_token"]
    r = Graph(emu, tok)("GET", "/me/mailboxSettings")
    assert r.status_code == 403
    assert Graph(emu, tok)("POST", "/me/events", json=event_body()).status_code == 201
