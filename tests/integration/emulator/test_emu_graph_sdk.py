"""The emulator driven by Microsoft's own Graph SDK (msgraph-sdk: Kiota request builders and models).

Our client sends only the forms our own tests send; the SDK sends Graph's (``calendarView/delta()``, per-calendar
paths, OData-typed bodies). Each test drives one part of the surface the service uses and asserts what the SDK
parsed into its models. Where the SDK and Graph's docs disagree (batch URLs), the docs decide; see the emulator
README, "Documented choices"."""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.request
from datetime import datetime, timedelta
from urllib.parse import quote

import httpx
import pytest
from kiota_abstractions.authentication import (
    AccessTokenProvider,
    AllowedHostsValidator,
    BaseBearerTokenAuthenticationProvider,
)
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_serialization_json.json_parse_node_factory import JsonParseNodeFactory
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.generated.models.automatic_replies_status import AutomaticRepliesStatus
from msgraph.generated.models.body_type import BodyType
from msgraph.generated.models.calendar import Calendar
from msgraph.generated.models.date_time_time_zone import DateTimeTimeZone
from msgraph.generated.models.event import Event
from msgraph.generated.models.item_body import ItemBody
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.single_value_legacy_extended_property import SingleValueLegacyExtendedProperty
from msgraph.generated.models.subscription import Subscription
from msgraph.generated.users.item.calendar_view.calendar_view_request_builder import (
    CalendarViewRequestBuilder,
)
from msgraph.generated.users.item.calendar_view.delta.delta_request_builder import DeltaRequestBuilder
from msgraph.generated.users.item.events.events_request_builder import EventsRequestBuilder
from msgraph.generated.users.item.mailbox_settings.mailbox_settings_request_builder import (
    MailboxSettingsRequestBuilder,
)
from msgraph.graph_request_adapter import options as SDK_OPTIONS  # the SDK's own middleware options (/me)
from msgraph_core import GraphClientFactory
from msgraph_core.requests.batch_request_content import BatchRequestContent
from msgraph_core.requests.batch_request_item import BatchRequestItem
from msgraph_core.requests.batch_response_content import BatchResponseContent

from .conftest import raw_token

pytestmark = pytest.mark.integration

PROP = "String {66f5a359-4659-4830-9070-00047ec6ac6e} Name CrmActivityId"  # the service's property shape
START, END = "2030-03-01T00:00:00Z", "2030-04-01T00:00:00Z"


class _StaticToken(AccessTokenProvider):
    """The emulator's access token, for the emulator's host only."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def get_authorization_token(self, uri: str, additional_authentication_context=None) -> str:
        return self.token

    def get_allowed_hosts_validator(self) -> AllowedHostsValidator:
        return AllowedHostsValidator(["127.0.0.1"])


@pytest.fixture
def sdk(emu, app, user):
    """Run `fn(client)` (an async function) with a GraphServiceClient on the emulator: the SDK's own middleware
    over an httpx client that trusts the emulator's throwaway CA."""
    token = raw_token(emu, app, user)["access_token"]

    def run(fn):
        async def main():
            http = GraphClientFactory.create_with_default_middleware(
                client=httpx.AsyncClient(verify=ssl.create_default_context(cafile=str(emu.ca_path)), timeout=15), options=SDK_OPTIONS)
            adapter = GraphRequestAdapter(BaseBearerTokenAuthenticationProvider(_StaticToken(token)), client=http)
            adapter.base_url = emu.graph_base
            try:
                return await fn(GraphServiceClient(request_adapter=adapter))
            finally:
                await http.aclose()

        return asyncio.run(main())

    return run


def when(date_time: str, zone: str = "UTC") -> DateTimeTimeZone:
    return DateTimeTimeZone(date_time=date_time, time_zone=zone)


def new_event(subject: str, start: str, end: str, zone: str = "UTC", **extra) -> Event:
    return Event(subject=subject, start=when(start, zone), end=when(end, zone), **extra)


def config(query=None, prefer: str | None = None) -> RequestConfiguration:
    cfg = RequestConfiguration(query_parameters=query)
    if prefer:
        cfg.headers.add("Prefer", prefer)
    return cfg


def delta_window() -> RequestConfiguration:
    return config(DeltaRequestBuilder.DeltaRequestBuilderGetQueryParameters(start_date_time=START,
                                                                            end_date_time=END),
                  prefer="odata.maxpagesize=2")


async def delta_round(builder, first_config=None) -> tuple[list[Event], str, int]:
    """One delta round as the SDK's users write it: get(), then with_url(nextLink) until the deltaLink."""
    page = await builder.get(request_configuration=first_config)
    items, pages = [], 0
    while True:
        pages += 1
        items += page.value or []
        assert not (page.odata_next_link and page.odata_delta_link), "a page has one link, never both"
        if page.odata_delta_link:
            return items, page.odata_delta_link, pages
        assert page.odata_next_link
        page = await builder.with_url(page.odata_next_link).get(
            request_configuration=config(prefer="odata.maxpagesize=2"))


async def graph_error(coro) -> ODataError:
    with pytest.raises(ODataError) as caught:
        await coro
    return caught.value


# ---- mailbox settings -------------------------------------------------------------------------------------
def test_mailbox_settings_parse_into_the_sdk_model(sdk, user):
    async def go(client):
        full = await client.me.mailbox_settings.get()
        select = MailboxSettingsRequestBuilder.MailboxSettingsRequestBuilderGetQueryParameters(select=["timeZone"])
        only_zone = await client.users.by_user_id(user["upn"]).mailbox_settings.get(
            request_configuration=config(select))
        return full, only_zone

    full, only_zone = sdk(go)
    assert full.time_zone == "Romance Standard Time"
    assert full.working_hours.time_zone.name == "Romance Standard Time"
    assert full.language.locale == "es-ES"
    assert full.automatic_replies_setting.status == AutomaticRepliesStatus.Disabled
    assert only_zone.time_zone == "Romance Standard Time"  # what connect reads, by UPN here
    assert only_zone.working_hours is None and only_zone.language is None  # $select honoured


# ---- events CRUD, extended property, transactionId, $filter/$expand -------------------------------------
def test_event_crud_with_extended_property_and_transaction_id(sdk, user, ctl):
    async def go(client):
        events = client.users.by_user_id(user["id"]).events
        body = new_event("Visita Contoso", "2030-03-04T10:00:00", "2030-03-04T11:00:00", "Romance Standard Time",
                         transaction_id="crm-42-v1",
                         body=ItemBody(content_type=BodyType.Text, content="Agenda"),
                         single_value_extended_properties=[SingleValueLegacyExtendedProperty(id=PROP,
                                                                                             value="crm-42")])
        created = await events.post(body)
        again = await events.post(body)  # a retry of the same create
        query = EventsRequestBuilder.EventsRequestBuilderGetQueryParameters(
            filter=f"singleValueExtendedProperties/Any(ep: ep/id eq '{PROP}' and ep/value eq 'CRM-42')",
            expand=[f"singleValueExtendedProperties($filter=id eq '{PROP}')"])
        found = await events.get(request_configuration=config(query))
        patched = await events.by_event_id(created.id).patch(
            new_event("Visita Contoso (moved)", "2030-03-05T10:00:00", "2030-03-05T11:00:00"))
        bad_patch = await graph_error(events.by_event_id(created.id).patch(Event(transaction_id="other")))
        read = await events.by_event_id(created.id).get()
        await events.by_event_id(created.id).delete()
        gone = await graph_error(events.by_event_id(created.id).get())
        return created, again, found, patched, bad_patch, read, gone

    created, again, found, patched, bad_patch, read, gone = sdk(go)
    assert created.subject == "Visita Contoso" and created.transaction_id == "crm-42-v1"
    assert (created.start.date_time, created.start.time_zone) == ("2030-03-04T09:00:00.0000000", "UTC")
    assert created.original_start_time_zone == "Romance Standard Time"
    assert created.body.content_type == BodyType.Html  # text bodies come back as HTML
    assert created.single_value_extended_properties is None  # never in a POST answer
    assert created.i_cal_u_id and created.change_key
    assert isinstance(created.created_date_time, datetime) and created.created_date_time.tzinfo is not None
    assert again.id == created.id  # same transactionId and body: the existing event, no twin
    assert [e.id for e in found.value] == [created.id]
    [prop] = found.value[0].single_value_extended_properties
    assert (prop.id, prop.value) == (PROP, "crm-42")
    assert patched.subject == "Visita Contoso (moved)" and patched.change_key != created.change_key
    assert patched.start.date_time == "2030-03-05T10:00:00.0000000"
    assert bad_patch.response_status_code == 400
    assert read.subject == "Visita Contoso (moved)" and read.transaction_id == "crm-42-v1"
    assert gone.response_status_code == 404 and gone.error.code == "ErrorItemNotFound"
    assert ctl.events(user["id"]) == []


def test_prefer_outlook_timezone_reaches_the_models(sdk, user):
    async def go(client):
        created = await client.me.events.post(new_event("Tokyo", "2030-03-04T10:00:00", "2030-03-04T11:00:00"))
        prefer = 'outlook.timezone="Tokyo Standard Time"'
        read = await client.me.events.by_event_id(created.id).get(request_configuration=config(prefer=prefer))
        view = await client.me.calendar_view.get(request_configuration=config(
            CalendarViewRequestBuilder.CalendarViewRequestBuilderGetQueryParameters(start_date_time=START,
                                                                                    end_date_time=END),
            prefer=prefer))
        return read, view

    read, view = sdk(go)
    assert (read.start.date_time, read.start.time_zone) == ("2030-03-04T19:00:00.0000000", "Tokyo Standard Time")
    assert [(e.subject, e.end.date_time, e.end.time_zone) for e in view.value] == [
        ("Tokyo", "2030-03-04T20:00:00.0000000", "Tokyo Standard Time")]


# ---- calendarView and its delta ---------------------------------------------------------------------------
def test_calendar_view_and_delta_with_paging_to_the_delta_link(sdk, user, ctl):
    ids = [ctl.user_create_event(user["id"], {"subject": f"E{i}",
                                              "start": {"dateTime": f"2030-03-1{i}T10:00:00", "timeZone": "UTC"},
                                              "end": {"dateTime": f"2030-03-1{i}T11:00:00", "timeZone": "UTC"}})["id"]
           for i in range(5)]
    ctl.user_create_event(user["id"], {"subject": "outside", "start": {"dateTime": "2030-06-01T10:00:00",
                                                                       "timeZone": "UTC"},
                                       "end": {"dateTime": "2030-06-01T11:00:00", "timeZone": "UTC"}})

    async def go(client):
        me = client.users.by_user_id(user["id"])
        view_query = CalendarViewRequestBuilder.CalendarViewRequestBuilderGetQueryParameters(
            start_date_time=START, end_date_time=END, top=2)
        page = await me.calendar_view.get(request_configuration=config(view_query))
        view = list(page.value)
        while page.odata_next_link:
            page = await me.calendar_view.with_url(page.odata_next_link).get()
            view += page.value
        first = await delta_round(me.calendar_view.delta, delta_window())  # sends `calendarView/delta()`
        await me.events.by_event_id(ids[0]).patch(Event(subject="renamed"))
        await me.events.by_event_id(ids[1]).delete()
        second = await delta_round(me.calendar_view.delta.with_url(first[1]))
        return view, first, second

    view, (items, delta_link, pages), (changes, _, _) = sdk(go)
    assert [e.subject for e in view] == ["E0", "E1", "E2", "E3", "E4"]
    assert [e.id for e in items] == ids and pages == 3
    assert all(isinstance(e, Event) and e.start.time_zone == "UTC" for e in items)
    assert "$deltatoken=" in delta_link
    by_id = {e.id: e for e in changes}
    assert set(by_id) == {ids[0], ids[1]}
    assert by_id[ids[0]].subject == "renamed" and "@removed" not in by_id[ids[0]].additional_data
    assert by_id[ids[1]].additional_data["@removed"] == {"reason": "deleted"}


@pytest.mark.parametrize("path", [
    "/users/{oid}/calendarView/delta()",  # the SDK's function-call form, by hand
    "/users/{oid}/calendarview/delta",  # segment names are case-insensitive on Graph
    "/USERS/{oid}/CALENDARVIEW/DELTA()",
    "/me/calendar/calendarView/delta",
    "/users('{upn}')/calendars/{cal}/calendarView/delta()",  # OData key syntax, by UPN, default calendar's id
])
def test_delta_path_forms_graph_accepts(sdk, user, ctl, emu, path):
    eid = ctl.user_create_event(user["id"], {"subject": "E", "start": {"dateTime": "2030-03-10T10:00:00",
                                                                       "timeZone": "UTC"},
                                             "end": {"dateTime": "2030-03-10T11:00:00", "timeZone": "UTC"}})["id"]
    default = next(c["id"] for c in user["calendars"] if c["is_default"])
    url = (emu.graph_base + path.format(oid=user["id"], upn=user["upn"], cal=default)
           + f"?startDateTime={START}&endDateTime={END}")

    items, delta_link, _ = sdk(lambda client: delta_round(client.me.calendar_view.delta.with_url(url)))
    assert [(e.id, e.subject) for e in items] == [(eid, "E")]
    assert "/calendarView/delta?$deltatoken=" in delta_link


# ---- per-calendar routes ----------------------------------------------------------------------------------
def test_per_calendar_routes(sdk, user):
    async def go(client):
        me = client.me
        default = await me.calendar.get()
        crm = await me.calendars.post(Calendar(name="CRM"))
        in_default = await me.calendar.events.post(new_event("default", "2030-03-10T10:00:00",
                                                             "2030-03-10T11:00:00"))
        crm_cal = me.calendars.by_calendar_id(crm.id)
        in_crm = await crm_cal.events.post(new_event("crm", "2030-03-11T10:00:00", "2030-03-11T11:00:00"))
        out = {
            "default_by_id": await me.calendars.by_calendar_id(default.id).events.get(),
            "crm_events": await crm_cal.events.get(),
            "crm_view": await crm_cal.calendar_view.get(request_configuration=config(
                CalendarViewRequestBuilder.CalendarViewRequestBuilderGetQueryParameters(start_date_time=START,
                                                                                        end_date_time=END))),
            "default_delta": await delta_round(me.calendar.calendar_view.delta, delta_window()),
            "default_delta_by_id": await delta_round(
                me.calendars.by_calendar_id(default.id).calendar_view.delta, delta_window()),
            "crm_delta": await delta_round(crm_cal.calendar_view.delta, delta_window()),
            "crm_patched": await crm_cal.events.by_event_id(in_crm.id).patch(Event(subject="crm 2")),
            "crm_read": await crm_cal.events.by_event_id(in_crm.id).get(),
            "crm_via_default": await me.calendar.events.by_event_id(in_crm.id).get(),
            "unknown_calendar_event": await graph_error(
                me.calendars.by_calendar_id("AAMkAGI2TG93AAA=").events.by_event_id(in_crm.id).get()),
            "unknown_calendar": await graph_error(me.calendars.by_calendar_id("AAMkAGI2TG93AAA=").events.get()),
            "unknown_calendar_delta": await graph_error(
                me.calendars.by_calendar_id("AAMkAGI2TG93AAA=").calendar_view.delta.get(
                    request_configuration=delta_window())),
        }
        await crm_cal.events.by_event_id(in_crm.id).delete()
        out["crm_after_delete"] = await crm_cal.events.get()
        return default, crm, in_default, in_crm, out

    default, crm, in_default, in_crm, out = sdk(go)
    assert default.is_default_calendar and not crm.is_default_calendar and crm.name == "CRM"
    assert [e.id for e in out["default_by_id"].value] == [in_default.id]
    assert [e.id for e in out["crm_events"].value] == [in_crm.id]
    assert [e.subject for e in out["crm_view"].value] == ["crm"]
    assert [e.id for e in out["default_delta"][0]] == [in_default.id]
    assert [e.id for e in out["default_delta_by_id"][0]] == [in_default.id]
    assert [e.id for e in out["crm_delta"][0]] == [in_crm.id]
    assert out["crm_patched"].subject == "crm 2" and out["crm_read"].subject == "crm 2"
    assert out["crm_via_default"].id == in_crm.id  # ids are mailbox-wide; the path's calendar is not checked
    for key in ("unknown_calendar", "unknown_calendar_event", "unknown_calendar_delta"):
        assert out[key].response_status_code == 404 and out[key].error.code == "ErrorItemNotFound", key
    assert out["crm_after_delete"].value == []


# ---- subscriptions ----------------------------------------------------------------------------------------
def test_subscription_create_renew_delete(sdk, user, ctl, receiver):
    now = ctl.clock()

    async def go(client):
        created = await client.subscriptions.post(Subscription(
            change_type="created,updated,deleted", notification_url=receiver.url,
            lifecycle_notification_url=receiver.url, resource="/me/events",
            expiration_date_time=now + timedelta(days=2), client_state="state-1"))
        renewed = await client.subscriptions.by_subscription_id(created.id).patch(
            Subscription(expiration_date_time=now + timedelta(days=6)))
        too_far = await graph_error(client.subscriptions.by_subscription_id(created.id).patch(
            Subscription(expiration_date_time=now + timedelta(days=8))))
        await client.subscriptions.by_subscription_id(created.id).delete()
        gone = await graph_error(client.subscriptions.by_subscription_id(created.id).get())
        return created, renewed, too_far, gone

    created, renewed, too_far, gone = sdk(go)
    assert created.id and created.resource == "/me/events" and created.client_state == "state-1"
    assert created.change_type == "created,updated,deleted" and created.notification_url == receiver.url
    assert isinstance(created.expiration_date_time, datetime)
    assert abs(created.expiration_date_time - (now + timedelta(days=2))) < timedelta(seconds=1)
    assert abs(renewed.expiration_date_time - (now + timedelta(days=6))) < timedelta(seconds=1)
    assert too_far.response_status_code == 400
    assert gone.response_status_code == 404
    assert ctl.subscriptions(user["id"]) == []


# ---- $batch -----------------------------------------------------------------------------------------------
def parse(model, value) -> object:
    """An answer body parsed by the SDK's own JSON parse node into `model`."""
    node = JsonParseNodeFactory().get_root_parse_node("application/json", json.dumps(value).encode())
    return node.get_object_value(model)


def test_batch_through_the_sdk_with_relative_urls(sdk, user, ctl, emu):
    existing = ctl.user_create_event(user["id"], {"subject": "old", "start": {"dateTime": "2030-03-02T10:00:00",
                                                                              "timeZone": "UTC"},
                                                  "end": {"dateTime": "2030-03-02T11:00:00", "timeZone": "UTC"}})
    doomed = ctl.user_create_event(user["id"], {"subject": "doomed", "start": {"dateTime": "2030-03-03T10:00:00",
                                                                               "timeZone": "UTC"},
                                                "end": {"dateTime": "2030-03-03T11:00:00", "timeZone": "UTC"}})

    async def go(client):
        events = client.me.events
        post = events.to_post_request_information(new_event(
            "batched", "2030-03-04T10:00:00", "2030-03-04T11:00:00", transaction_id="crm-7-v1",
            single_value_extended_properties=[SingleValueLegacyExtendedProperty(id=PROP, value="crm-7")]))
        post.headers.add("Prefer", 'outlook.timezone="Pacific Standard Time"')
        patch = events.by_event_id(existing["id"]).to_patch_request_information(Event(subject="new"))
        delete = events.by_event_id(doomed["id"]).to_delete_request_information()
        content = BatchRequestContent({
            "1": BatchRequestItem(post, id="1"),
            "2": BatchRequestItem(patch, id="2"),
            "3": BatchRequestItem(delete, id="3"),
        })
        urls = [item.url for item in content.requests.values()]
        # The SDK's batch request, sent by the SDK's adapter. Its BatchResponseContent drops JSON-object item
        # bodies (microsoft/kiota-python#737), so the envelope is read raw and each body parsed by the SDK.
        request = await client.batch.to_post_request_information(content)
        raw = await client.request_adapter.send_primitive_async(request, "bytes", {})
        statuses = parse(BatchResponseContent, json.loads(raw)).get_response_status_codes()
        # The SDK's other way in, a urllib request, keeps the absolute URL (msgraph-sdk-python#1015).
        absolute = BatchRequestContent()
        absolute.add_urllib_request(urllib.request.Request(f"{emu.graph_base}/me/events"))  # noqa: S310 - https
        refused = await client.batch.post(batch_request_content=absolute)
        return urls, json.loads(raw)["responses"], statuses, refused

    urls, responses, statuses, refused = sdk(go)
    assert urls == ["/me/events", f"/me/events/{quote(existing['id'], safe='')}",
                    f"/me/events/{quote(doomed['id'], safe='')}"]  # relative, as Graph requires
    assert statuses == {"1": 201, "2": 200, "3": 204}
    bodies = {r["id"]: r.get("body") for r in responses}
    created = parse(Event, bodies["1"])
    assert created.subject == "batched" and created.transaction_id == "crm-7-v1"
    assert (created.start.date_time, created.start.time_zone) == ("2030-03-04T02:00:00.0000000",
                                                                  "Pacific Standard Time")
    assert parse(Event, bodies["2"]).subject == "new"
    stored = {e["subject"]: e for e in ctl.events(user["id"])}
    assert set(stored) == {"batched", "new"}
    assert stored["batched"]["transactionId"] == "crm-7-v1"
    # An absolute item URL: refused per item, as Graph does (json-batching: URLs are relative; the envelope is 200).
    assert list(refused.get_response_status_codes().values()) == [400]
