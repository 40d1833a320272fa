"""Issue 17: meetings booked in Outlook captured for the CRM (settings, opt-out, capture plan)."""

from __future__ import annotations

import pytest

from shared.flows.connect import parse_connect_request
from shared.rules.contract import ValidationError

ORIGINS = frozenset({"https://crm.example.com"})


def test_the_connect_body_may_opt_out_of_capture() -> None:
    base = {"time_zone": "America/Bogota"}
    assert parse_connect_request(base, ORIGINS).capture is True
    assert parse_connect_request({**base, "capture": False}, ORIGINS).capture is False
    with pytest.raises(ValidationError) as error:
        parse_connect_request({**base, "capture": "no"}, ORIGINS)
    assert [path for path, _ in error.value.errors] == ["capture"]


# --- the capture plan -------------------------------------------------------------------------------

from datetime import UTC, datetime  # noqa: E402

from shared.rules import capture_plan as plan  # noqa: E402
from shared.rules.tenant_settings import TenantSettings  # noqa: E402

WINDOW = (datetime(2027, 1, 1, tzinfo=UTC), datetime(2028, 1, 1, tzinfo=UTC))


def scope(mode: str = "external", *, body: bool = False, internal: tuple[str, ...] = ()) -> plan.CaptureScope:
    found = plan.scope_of(
        TenantSettings(capture_meetings=mode, capture_body=body, internal_domains=internal),
        opted_in=True,
        account_addresses=("ana@Contoso.example", "ana.perez@contoso-mail.example"),
        window=WINDOW,
        mailbox_time_zone="Romance Standard Time",
    )
    assert found is not None
    return found


def person(address: str, response: str = "none") -> dict:
    return {"type": "required", "status": {"response": response, "time": "0001-01-01T00:00:00Z"},
            "emailAddress": {"name": address.split("@")[0], "address": address}}


def meeting(**overrides: object) -> dict:
    event = {
        "id": "ev-1", "changeKey": "ck-1", "iCalUId": "uid-1", "subject": "Demo  con Acme",
        "lastModifiedDateTime": "2027-01-10T08:00:00Z",
        "start": {"dateTime": "2027-03-02T09:00:00.0000000", "timeZone": "UTC"},
        "end": {"dateTime": "2027-03-02T10:00:00.0000000", "timeZone": "UTC"},
        "isAllDay": False, "isCancelled": False, "isOrganizer": True, "sensitivity": "normal",
        "location": {"displayName": "Sala 1"}, "webLink": "https://outlook.example/ev-1",
        "organizer": {"emailAddress": {"name": "Ana", "address": "ana@contoso.example"}},
        "attendees": [person("luisa@acme.test", "accepted")],
        "body": {"contentType": "html", "content": "<html><body><p>Agenda secreta</p></body></html>"},
        "onlineMeeting": {"joinUrl": "https://teams.example/join/1"},
    }
    event.update(overrides)
    return event


def test_off_and_opted_out_capture_nothing() -> None:
    for mode, opted_in in (("off", True), ("all", False)):
        assert plan.scope_of(TenantSettings(capture_meetings=mode), opted_in=opted_in,
                             account_addresses=("a@contoso.example",), window=WINDOW,
                             mailbox_time_zone=None) is None
    assert plan.scope_key(None) == "off" and plan.scope_key(scope()) != plan.scope_key(scope("all"))


def test_an_external_meeting_is_created_once_with_its_fields_and_never_its_body_unless_asked() -> None:
    decided = plan.decide(meeting(), None, scope())
    assert isinstance(decided, plan.Report) and decided.kind == plan.CREATED
    data = decided.data
    assert (data["start"], data["end"], data["all_day"]) == ("2027-03-02T09:00:00Z", "2027-03-02T10:00:00Z", False)
    assert (data["time_zone"], data["start_local"]) == ("Europe/Paris", "2027-03-02T10:00:00")
    assert data["attendees"] == [{"name": "luisa", "address": "luisa@acme.test", "type": "required",
                                  "response": "accepted"}]
    assert data["organizer"] == {"name": "Ana", "address": "ana@contoso.example"}
    assert data["subject"] == "Demo con Acme" and data["location"] == "Sala 1" and data["is_organizer"]
    assert data["online_meeting_url"] == "https://teams.example/join/1" and data["ical_uid"] == "uid-1"
    assert "body_text" not in data
    assert plan.decide(meeting(), None, scope(body=True)).data["body_text"] == "Agenda secreta"  # type: ignore[union-attr]
    # The same changeKey again (a replayed page, a new round): nothing.
    remembered = decided.remember
    assert remembered is not None
    assert isinstance(plan.decide(meeting(), remembered, scope()), plan.Skip)
    # A new changeKey with the same content (Exchange's own bump): remembered, not reported.
    assert isinstance(plan.decide(meeting(changeKey="ck-2"), remembered, scope()), plan.Remember)
    moved = plan.decide(meeting(changeKey="ck-3", start={"dateTime": "2027-03-02T11:00:00", "timeZone": "UTC"},
                                end={"dateTime": "2027-03-02T12:00:00", "timeZone": "UTC"}), remembered, scope())
    assert isinstance(moved, plan.Report) and moved.kind == plan.UPDATED and moved.data["start"] == "2027-03-02T11:00:00Z"


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"attendees": [person("pedro@contoso.example")]}, plan.INTERNAL),
    ({"attendees": [person("pedro@Contoso-Mail.example")]}, plan.INTERNAL),
    ({"sensitivity": "private"}, plan.PRIVATE),
    ({"sensitivity": "confidential"}, plan.PRIVATE),
    ({"attendees": []}, plan.NO_ATTENDEES),
    ({"start": {"dateTime": "2026-12-01T09:00:00", "timeZone": "UTC"},
      "end": {"dateTime": "2026-12-01T10:00:00", "timeZone": "UTC"}}, plan.OUTSIDE_WINDOW),
])
def test_what_is_never_captured(overrides: dict, reason: str) -> None:
    assert plan.decide(meeting(**overrides), None, scope()) == plan.Skip(reason)


def test_internal_domains_and_organizers_and_all() -> None:
    internal = meeting(attendees=[person("pedro@fabrikam.example")])
    assert isinstance(plan.decide(internal, None, scope()), plan.Report)
    assert plan.decide(internal, None, scope(internal=("fabrikam.example",))) == plan.Skip(plan.INTERNAL)
    assert isinstance(plan.decide(meeting(attendees=[person("pedro@contoso.example")]), None, scope("all")), plan.Report)
    invited = meeting(isOrganizer=False, attendees=[person("ana@contoso.example")],
                      organizer={"emailAddress": {"name": "Luisa", "address": "luisa@acme.test"}})
    assert isinstance(plan.decide(invited, None, scope()), plan.Report)


def test_a_series_is_its_master_with_its_recurrence() -> None:
    recurrence = {"pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"]},
                  "range": {"type": "noEnd", "startDate": "2026-06-01"}}
    master = meeting(type="seriesMaster", recurrence=recurrence,
                     start={"dateTime": "2026-06-01T09:00:00", "timeZone": "UTC"},
                     end={"dateTime": "2026-06-01T10:00:00", "timeZone": "UTC"})
    decided = plan.decide(master, None, scope())
    assert isinstance(decided, plan.Report) and decided.data["recurrence"] == recurrence  # began before the window
    assert plan.master_id_of({"id": "occ", "type": "occurrence", "seriesMasterId": "ev-1"}) == "ev-1"
    assert plan.master_id_of(meeting()) is None


def test_cancel_delete_and_no_longer_captured() -> None:
    first = plan.decide(meeting(), None, scope())
    assert isinstance(first, plan.Report) and first.remember is not None
    known = first.remember
    cancelled = plan.decide(meeting(changeKey="ck-9", isCancelled=True), known, scope())
    assert isinstance(cancelled, plan.Report) and cancelled.kind == plan.CANCELLED
    assert cancelled.remember is not None and cancelled.remember.state == plan.CANCELLED_STATE
    assert isinstance(plan.decide(meeting(changeKey="ck-10", isCancelled=True), cancelled.remember, scope()),
                      plan.Skip)
    assert plan.decide({"id": "ev-1", "@removed": {"reason": "deleted"}}, known, scope()) == plan.VerifyRemoved("ev-1")
    assert plan.decide({"id": "ev-2", "@removed": {"reason": "deleted"}}, None, scope()) == plan.Skip("removed")
    gone = plan.after_read("ev-1", None, known, scope())
    assert isinstance(gone, plan.Report) and gone.kind == plan.DELETED and gone.remember is None
    assert gone.data == {"outlook_event_id": "ev-1", "reason": "deleted"}
    private = plan.decide(meeting(changeKey="ck-11", sensitivity="private"), known, scope())
    assert isinstance(private, plan.Report) and private.kind == plan.DELETED
    assert private.data["reason"] == "no_longer_captured" and private.remember is None


def test_an_event_created_by_an_app_is_checked_for_our_property_before_capture() -> None:
    assert plan.needs_ownership_check(meeting(transactionId="tx"), None)
    assert not plan.needs_ownership_check(meeting(), None)


# --- adoption ------------------------------------------------------------------------------------------

from dataclasses import replace as _replace  # noqa: E402

from shared.flows import push_apply  # noqa: E402
from shared.rules import sync_plan  # noqa: E402
from shared.rules.errors import PermanentError  # noqa: E402
from shared.rules.model import ActivityDeleted, ActivityTypeUpdated  # noqa: E402
from tests.unit.activity_builders import activity  # noqa: E402
from tests.unit.test_push_apply import USER, FakeGraph  # noqa: E402

USER_EVENT = {
    "subject": "Demo con Acme", "changeKey": "user-ck", "webLink": "https://outlook/user-ev",
    "start": {"dateTime": "2025-03-10T08:00:00.0000000", "timeZone": "UTC"},
    "end": {"dateTime": "2025-03-10T09:00:00.0000000", "timeZone": "UTC"},
    "isAllDay": False, "body": {"contentType": "html", "content": "<p>agenda</p>"}, "property": "",
}


def adopted(graph: FakeGraph) -> sync_plan.Link:
    graph.events["user-ev"] = dict(USER_EVENT)
    decision = sync_plan.plan_upsert(activity(outlook_event_id="user-ev"), None, USER)
    assert isinstance(decision.action, sync_plan.Adopt) and decision.action.replaces is None
    applied = push_apply.apply(graph, decision)
    assert applied.link is not None
    return applied.link


def test_adoption_links_the_users_event_and_never_writes_it() -> None:
    graph = FakeGraph()
    link = adopted(graph)
    assert (link.outlook_event_id, link.adopted, link.change_key) == ("user-ev", True, "user-ck")
    assert link.shown is not None  # so the reconcile reports later Outlook edits as changed_in_outlook
    newer = sync_plan.plan_upsert(activity(version=2, subject="Otro título", outlook_event_id="user-ev"), link, USER)
    assert newer.action == sync_plan.Nothing(sync_plan.ADOPTED) and newer.link is not None
    assert newer.link.outlook_event_id == "user-ev" and newer.link.version == 2
    assert sync_plan.plan_upsert(activity(version=2), link, USER).action == sync_plan.Nothing(sync_plan.ADOPTED)
    cancelled = sync_plan.plan_upsert(activity(version=3, status="cancelled"), link, USER)
    assert isinstance(cancelled.action, sync_plan.Unlink) and cancelled.link is not None
    assert cancelled.link.outlook_event_id is None and not cancelled.link.adopted
    offline = _replace(USER, connected=False)  # no Graph call is needed to unlink
    deleted = sync_plan.plan_deletion(ActivityDeleted("act-1", "user-1", 4), link, offline)
    assert isinstance(deleted.action, sync_plan.Unlink)
    hidden = sync_plan.plan_type_update(ActivityTypeUpdated("type-call", "Llamada", False), [link], USER)
    assert [type(d.action) for d in hidden] == [sync_plan.Unlink]
    assert sync_plan.pending_deletions([_replace(link, tombstone=True)], USER) == []
    for decision in (cancelled, deleted, hidden[0]):
        push_apply.apply(graph, decision)
    assert [m for m, _ in graph.calls] == ["GET"]  # only the adoption's read, ever
    assert "user-ev" in graph.events


def test_an_unknown_event_fails_the_activity_and_creates_nothing() -> None:
    graph = FakeGraph()
    decision = sync_plan.plan_upsert(activity(outlook_event_id="someone-elses"), None, USER)
    with pytest.raises(PermanentError) as error:
        push_apply.apply(graph, decision)
    assert error.value.code == sync_plan.OUTLOOK_EVENT_NOT_FOUND
    assert [m for m, _ in graph.calls] == ["GET"] and graph.events == {}


def test_adopting_replaces_an_event_we_created_for_the_activity() -> None:
    graph = FakeGraph()
    created = push_apply.apply(graph, sync_plan.plan_upsert(activity(), None, USER), lookup_first=False)
    assert created.link is not None and created.link.outlook_event_id == "ev-1"
    graph.events["user-ev"] = dict(USER_EVENT)
    decision = sync_plan.plan_upsert(activity(version=2, outlook_event_id="user-ev"), created.link, USER)
    assert decision.action == sync_plan.Adopt("user-ev", "ev-1")
    applied = push_apply.apply(graph, decision)
    assert applied.link is not None and applied.link.outlook_event_id == "user-ev"
    assert "ev-1" not in graph.events and "user-ev" in graph.events


def test_a_series_is_remembered_as_one_and_verified_when_bare_occurrence_ids_are_removed() -> None:
    master = meeting(id="m-1", type="seriesMaster", recurrence={"pattern": {"type": "daily"}, "range": {}})
    created = plan.decide(master, None, scope())
    assert isinstance(created, plan.Report) and created.remember is not None and created.remember.series
    known = {"m-1": created.remember, "e-2": plan.Reported("e-2", "ck", "h")}
    removed = {"occ-9": {"id": "occ-9", "@removed": {"reason": "deleted"}}}
    assert plan.masters_to_verify(removed, known, set()) == ["m-1"]  # never a single meeting
    assert plan.masters_to_verify({"e-2": {"id": "e-2", "@removed": {}}}, known, set()) == []  # a known id
    assert plan.masters_to_verify(removed, known, {"occ-9"}) == []  # one of ours
    assert plan.masters_to_verify({"x": meeting(id="x")}, known, set()) == []  # no removal at all
