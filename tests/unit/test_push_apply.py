"""The apply step of the push worker against a fake Graph: create, adopt, patch, delete."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import pytest

from shared.flows import activity_queue, push_apply
from shared.outlook.graph import GraphResponse, NotFoundError
from shared.rules.errors import PermanentError, ThrottledError
from shared.rules.event_render import PROPERTY_ID, property_value
from shared.rules.model import ActivityDeleted, CrmEvent
from shared.rules.sync_plan import Delete, Link, Update, UserContext, plan_deletion, plan_upsert
from shared.store import tables
from tests.unit.activity_builders import activity, activity_json, envelope

USER = UserContext(
    "tenant-1", "user-1", connected=True, mailbox_time_zone="Romance Standard Time", locale="es"
)


class FakeGraph:
    """Events by id, each remembering its extended property value; records every call."""

    def __init__(self, calendar_id: str | None = None, mailbox_path: str = "me") -> None:
        self.calendar_id = calendar_id
        self.mailbox_path = mailbox_path
        self.events: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail: list[Exception] = []  # raised by the next calls, in order
        self.lose_next_create = False

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        prefer: str | None = None,
        if_match: str | None = None,
    ) -> GraphResponse:
        self.calls.append((method, path))
        self.if_match = if_match
        if self.fail:
            raise self.fail.pop(0)
        if method == "GET" and "$filter" in (params or {}):
            value = params["$filter"].split("ep/value eq '")[1].rstrip("')")
            assert PROPERTY_ID in params["$filter"]
            found = [{"id": i, **e} for i, e in self.events.items() if e["property"].lower() == value.lower()]
            return GraphResponse(200, {}, {"value": found})
        if method == "POST":
            event_id = f"ev-{len(self.events) + 1}"
            self.events[event_id] = {
                "property": json["singleValueExtendedProperties"][0]["value"],
                **json,
                "changeKey": "ck1",
                "webLink": f"https://outlook/{event_id}",
                "end": {"dateTime": "2025-03-10T08:30:00.0000000", "timeZone": "UTC"},
            }
            if self.lose_next_create:
                self.lose_next_create = False
                from shared.rules.errors import TransientError

                raise TransientError("connection dropped")
            return GraphResponse(201, {}, {"id": event_id, **self.events[event_id]})
        event_id = path.rsplit("/", 1)[1]
        if event_id not in self.events:
            raise NotFoundError("gone", code="ErrorItemNotFound", status=404)
        if method == "GET":
            return GraphResponse(200, {}, {"id": event_id, **self.events[event_id]})
        if if_match and if_match != self.events[event_id]["changeKey"]:
            raise PermanentError("changed", code="ErrorIrresolvableConflict", status=412)
        if method == "PATCH":
            self.events[event_id].update(json, changeKey="ck2")
            return GraphResponse(200, {}, {"id": event_id, **self.events[event_id]})
        del self.events[event_id]
        return GraphResponse(204, {}, None)


def test_create_posts_once_and_links_the_event() -> None:
    graph = FakeGraph()
    applied = push_apply.apply(graph, plan_upsert(activity(), None, USER))
    assert [m for m, _ in graph.calls] == ["GET", "POST"]
    assert applied.link.outlook_event_id == "ev-1" and applied.link.change_key == "ck1"
    assert applied.event["webLink"] == "https://outlook/ev-1"


def test_a_create_never_sent_before_costs_one_request() -> None:
    graph = FakeGraph()
    applied = push_apply.apply(graph, plan_upsert(activity(), None, USER), lookup_first=False)
    assert [m for m, _ in graph.calls] == ["POST"]
    assert applied.link.outlook_event_id == "ev-1"


def test_a_create_whose_answer_was_lost_is_found_by_our_property_and_adopted() -> None:
    graph = FakeGraph()
    graph.lose_next_create = True
    decision = plan_upsert(activity(), None, USER)
    with pytest.raises(Exception, match="connection dropped"):
        push_apply.apply(graph, decision)
    applied = push_apply.apply(graph, decision)  # the retry plans the same Create
    assert [m for m, _ in graph.calls] == ["GET", "POST", "GET", "PATCH"]
    assert list(graph.events) == ["ev-1"] and applied.link.outlook_event_id == "ev-1"


def test_duplicates_of_our_own_event_are_removed_when_adopting() -> None:
    graph = FakeGraph()
    value = property_value("tenant-1", "act-1")
    graph.events = {"ev-a": {"property": value}, "ev-b": {"property": value.upper()}}
    applied = push_apply.apply(graph, plan_upsert(activity(), None, USER))
    assert applied.link.outlook_event_id == "ev-a" and list(graph.events) == ["ev-a"]


def test_duplicate_transaction_id_without_our_event_is_permanent() -> None:
    graph = FakeGraph()
    graph.fail = [PermanentError("used", code="ErrorDuplicateTransactionId", status=400)]
    graph.call = _skip_first_get(graph)
    with pytest.raises(PermanentError):
        push_apply.apply(graph, plan_upsert(activity(), None, USER))


def _skip_first_get(graph: FakeGraph):
    original = FakeGraph.call

    def call(method, path, **kw):
        if method == "GET":
            return GraphResponse(200, {}, {"value": []})
        return original(graph, method, path, **kw)

    return call


def test_update_patches_and_a_vanished_event_is_reported_gone() -> None:
    graph = FakeGraph()
    created = push_apply.apply(graph, plan_upsert(activity(), None, USER)).link
    decision = plan_upsert(activity(version=2, subject="Moved"), created, USER)
    assert isinstance(decision.action, Update)
    applied = push_apply.apply(graph, decision)
    assert graph.events["ev-1"]["subject"] == "Moved" and applied.link.change_key == "ck2"
    assert graph.if_match == "ck1"  # only over the event we last wrote

    del graph.events["ev-1"]
    with pytest.raises(push_apply.EventGone):
        push_apply.apply(graph, plan_upsert(activity(version=3, subject="Again"), applied.link, USER))


def test_an_update_over_an_edit_made_in_outlook_reads_the_event_instead_of_overwriting_it() -> None:
    graph = FakeGraph()
    created = push_apply.apply(graph, plan_upsert(activity(), None, USER)).link
    graph.events["ev-1"].update(subject="Typed in Outlook", changeKey="ck-user")  # not yet reconciled
    with pytest.raises(push_apply.OutlookChanged) as changed:
        push_apply.apply(graph, plan_upsert(activity(version=2, subject="From the CRM"), created, USER))
    assert changed.value.event["subject"] == "Typed in Outlook" and changed.value.event["changeKey"] == "ck-user"
    assert graph.events["ev-1"]["subject"] == "Typed in Outlook"  # nothing written over it yet
    assert [m for m, _ in graph.calls][-2:] == ["PATCH", "GET"]


def test_delete_treats_404_as_done() -> None:
    graph = FakeGraph()
    link = Link("act-1", 1, outlook_event_id="ev-9", content_hash="h")
    decision = plan_deletion(ActivityDeleted("act-1", "user-1", 2), link, USER)
    assert isinstance(decision.action, Delete)
    applied = push_apply.apply(graph, decision)
    assert applied.link.tombstone and applied.link.outlook_event_id is None


def test_throttling_propagates_without_writing() -> None:
    graph = FakeGraph()
    graph.fail = [ThrottledError("slow down", retry_after=3, status=429)]
    with pytest.raises(ThrottledError):
        push_apply.apply(graph, plan_upsert(activity(), None, USER))
    assert graph.events == {}


def test_a_no_op_applies_nothing() -> None:
    graph = FakeGraph()
    created = push_apply.apply(graph, plan_upsert(activity(), None, USER)).link
    same = plan_upsert(activity(version=2), created, USER)
    applied = push_apply.apply(graph, same)
    assert [m for m, _ in graph.calls] == ["GET", "POST"] and applied.link.version == 2


def test_messages_route_to_the_owner_and_big_events_are_packed() -> None:
    from shared.rules.contract import parse_crm_event

    raw = envelope("activity.upserted", activity_json(owner_user_id="user-7"))
    event: CrmEvent = parse_crm_event(raw)
    message = activity_queue.message_for(event, raw)
    assert (message["tenant"], message["user"], message["attempt"]) == ("tenant-1", "user-7", 0)
    typed = parse_crm_event(
        envelope("activity_type.updated", {"id": "t", "name": "T", "show_in_calendar": False})
    )
    assert activity_queue.message_for(typed, {})["user"] is None

    big = {"description": "ñ" * 30000, "nested": [1, 2, 3]}
    packed = tables.pack(big)
    assert all(isinstance(v, bytes) and len(v) <= tables.PAYLOAD_PART_BYTES for v in packed.values())
    assert tables.unpack(packed) == big
    noise = {"d": __import__("os").urandom(200_000).hex()}
    assert len(tables.pack(noise)) > 1 and tables.unpack(tables.pack(noise)) == noise


def test_extras_follow_the_event() -> None:
    stored = None
    applied = push_apply.Applied(
        Link("a", 1, outlook_event_id="e"),
        {"webLink": "https://x", "end": {"dateTime": "2027-01-15T16:00:00.0000000", "timeZone": "UTC"}},
    )
    extra = push_apply._extra(stored, applied)
    assert extra == {"state": "synced", "web_link": "https://x", "end_utc": "2027-01-15T16:00:00Z"}
    gone = push_apply._extra(
        type("S", (), {"extra": {**extra, "last_error": "x", "failed_version": 1}})(),
        push_apply.Applied(replace(applied.link, outlook_event_id=None)),
    )
    assert gone == {"state": "synced"}


def _use_graph(monkeypatch, graph: FakeGraph) -> None:
    """Every MailboxClient the flow builds talks to ``graph``."""
    monkeypatch.setattr(
        push_apply,
        "MailboxClient",
        lambda services, tenant, user, calendar_id, connection: SimpleNamespace(
            call=graph.call, wrote=False, calendar_id=calendar_id, mailbox_path="me"
        ),
    )


def test_an_event_we_created_is_removed_when_another_worker_linked_a_different_one(monkeypatch) -> None:
    """Two workers created at once (a race around the intent); the one whose link write lost
    deletes its own event instead of leaving a duplicate."""
    from types import SimpleNamespace

    from shared.store import links

    graph = FakeGraph()
    saved: dict[str, links.StoredLink] = {}
    raced: list[bool] = []

    def fake_save(storage, tenant, user, stored):
        if stored.link.outlook_event_id and not raced:  # the other worker wins the first link write
            raced.append(True)
            other = graph.call(
                "POST", "me/events", json=plan_upsert(activity(), None, USER).action.event
            ).body
            saved["link"] = links.StoredLink(replace(stored.link, outlook_event_id=other["id"]), "etag-2", {})
            from shared.rules.errors import ConflictError

            raise ConflictError("someone else wrote first")
        saved["link"] = stored
        return stored

    monkeypatch.setattr(links, "save", fake_save)
    monkeypatch.setattr(links, "get", lambda storage, tenant, user, activity_id: saved.get("link"))
    _use_graph(monkeypatch, graph)
    monkeypatch.setattr(push_apply, "_report", lambda *args, **kwargs: None)
    connection = SimpleNamespace(tenant="tenant-1", user="user-1", calendar_id=None)
    services = SimpleNamespace(storage=None)

    push_apply.sync(services, connection, "act-1", None, lambda link: plan_upsert(activity(), link, USER))

    assert raced and len(graph.calls) >= 3  # both created; the loser then deleted its own
    assert list(graph.events) == [saved["link"].link.outlook_event_id]  # one event: the linked one


def test_a_user_with_their_own_calendar_gets_events_there_and_lookups_there() -> None:
    graph = FakeGraph(calendar_id="AAMk=cal/1")
    created = push_apply.apply(graph, plan_upsert(activity(), None, USER)).link
    assert graph.calls == [("GET", "me/calendars/AAMk%3Dcal%2F1/events"), ("POST", "me/calendars/AAMk%3Dcal%2F1/events")]
    push_apply.apply(graph, plan_upsert(activity(version=2, subject="Moved"), created, USER))
    assert graph.calls[-1] == ("PATCH", "me/events/ev-1")  # by id: whatever calendar holds it


def test_an_app_only_user_gets_every_request_under_users_id_never_me() -> None:
    graph = FakeGraph(mailbox_path="users/oid-7")
    created = push_apply.apply(graph, plan_upsert(activity(), None, USER)).link
    push_apply.apply(graph, plan_upsert(activity(version=2, subject="Moved"), created, USER))
    push_apply.apply(graph, plan_deletion(ActivityDeleted("act-1", "user-1", 3), created, USER))
    assert graph.calls == [
        ("GET", "users/oid-7/events"),
        ("POST", "users/oid-7/events"),
        ("PATCH", "users/oid-7/events/ev-1"),
        ("DELETE", "users/oid-7/events/ev-1"),
    ]


def _sweep_world(monkeypatch, stored_links: list[Any]) -> FakeGraph:
    """A connected user whose link reads, in turn, as ``stored_links`` (the last one repeats)."""
    from types import SimpleNamespace

    from shared.store import connections, links

    graph = FakeGraph()
    reads = list(stored_links)
    monkeypatch.setattr(links, "get", lambda *a: reads.pop(0) if len(reads) > 1 else reads[0])
    monkeypatch.setattr(
        connections,
        "get",
        lambda *a: SimpleNamespace(state=connections.CONNECTED, calendar_id=None),
    )
    _use_graph(monkeypatch, graph)
    for event_id in ("ev-kept", "ev-stray"):
        graph.events[event_id] = {"property": property_value("tenant-1", "act-1"), "changeKey": "ck"}
    return graph


def test_a_redelivered_message_sweeps_the_events_its_link_does_not_name(monkeypatch) -> None:
    from shared.store.links import StoredLink

    linked = StoredLink(Link("act-1", 2, outlook_event_id="ev-kept"), "etag-1", {})
    graph = _sweep_world(monkeypatch, [linked])
    assert push_apply.sweep_lost_creates(SimpleNamespace(storage=None), "tenant-1", "user-1", "act-1") == 1
    assert list(graph.events) == ["ev-kept"]


@pytest.mark.parametrize(
    "reads",
    [
        "a create in flight",  # the write-ahead mark is set: its worker (or its retry) decides
        "no link",  # events kept by "Remove sync" belong to the user now
        "link changed while looking",  # another worker wrote meanwhile: its write decides
    ],
)
def test_the_sweep_leaves_events_alone_when_it_cannot_be_sure_they_are_strays(monkeypatch, reads) -> None:
    from shared.store.links import StoredLink

    base = Link("act-1", 2, outlook_event_id="ev-kept")
    stored = {
        "a create in flight": [StoredLink(base, "etag-1", {push_apply.CREATING: True})],
        "no link": [None],
        "link changed while looking": [StoredLink(base, "etag-1", {}), StoredLink(base, "etag-2", {})],
    }[reads]
    graph = _sweep_world(monkeypatch, stored)
    assert push_apply.sweep_lost_creates(SimpleNamespace(storage=None), "tenant-1", "user-1", "act-1") == 0
    assert sorted(graph.events) == ["ev-kept", "ev-stray"]


@pytest.mark.parametrize("older", ["cancelled", "planned"])
def test_an_older_version_leaves_a_newer_versions_create_in_flight_alone(monkeypatch, older) -> None:
    """Found by the two-host chaos run: B's create of v3 is in Graph, its answer not yet stored;
    A's v2 must neither take that event for a lost create (and delete it) nor write its link."""
    from shared.store import links
    from shared.store.links import StoredLink

    graph = FakeGraph()
    in_flight = graph.call("POST", "me/events", json=plan_upsert(activity(version=3), None, USER).action.event)
    marked = StoredLink(Link("act-1", -1), "etag-1", {push_apply.CREATING: "v3"})
    saves: list[Any] = []
    monkeypatch.setattr(links, "get", lambda *a: marked)
    monkeypatch.setattr(links, "save", lambda storage, tenant, user, stored: saves.append(stored) or stored)
    _use_graph(monkeypatch, graph)
    connection = SimpleNamespace(tenant="tenant-1", user="user-1", calendar_id=None)

    push_apply.sync(
        SimpleNamespace(storage=None),
        connection,
        "act-1",
        None,
        lambda link: plan_upsert(activity(version=2, status=older), link, USER),
    )

    assert list(graph.events) == [in_flight.body["id"]] and saves == []
    assert graph.calls == [("POST", "me/events")]  # not even a lookup


def test_the_create_intent_names_the_version_it_creates(monkeypatch) -> None:
    from shared.store import links

    saves: list[Any] = []
    monkeypatch.setattr(links, "save", lambda storage, tenant, user, stored: saves.append(stored) or stored)
    push_apply._record_intent(SimpleNamespace(storage=None), "tenant-1", "user-1", "act-1", None, Link("act-1", 7))
    assert saves[0].extra[push_apply.CREATING] == "v7" and saves[0].link.version == -1
    assert push_apply._creating_version(saves[0]) == 7
    assert push_apply._creating_version(replace(saves[0], extra={push_apply.CREATING: True})) == -1


def _sync_with_one_link(
    monkeypatch, graph: FakeGraph, first: Any, activity_version: Any, store: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Run ``sync`` for ``activity_version`` against one stored link kept in memory (each save
    gets a new ETag); returns the store, whose "link" is the last link saved (or written there
    by another worker, in a test that passes its own ``store``)."""
    from shared.store import links

    store = store if store is not None else {}
    store.update(link=first, saves=0)

    def save(storage, tenant, user, stored):
        store["saves"] += 1
        store["link"] = replace(stored, etag=f"etag-{store['saves'] + 1}")
        return store["link"]

    monkeypatch.setattr(links, "get", lambda *a: store["link"])
    monkeypatch.setattr(links, "save", save)
    monkeypatch.setattr(push_apply, "_report", lambda *a, **k: None)
    _use_graph(monkeypatch, graph)
    connection = SimpleNamespace(tenant="tenant-1", user="user-1", calendar_id=None)
    push_apply.sync(SimpleNamespace(storage=None), connection, "act-1", None,
                    lambda link: plan_upsert(activity_version, link, USER))
    return store


@pytest.mark.parametrize(("written", "reported"), [(3, False), (2, True)])
def test_a_412_caused_by_our_own_newer_write_is_not_reported_as_the_users_edit(monkeypatch, written, reported) -> None:
    """Found by the wider chaos run: two workers PATCH one event with If-Match; the loser's 412
    reads the winner's write before the winner stored its link. The event's crmVersion (3, newer
    than the link's 2) says it is ours: nothing is reported, and the write still lands. The same
    change under the link's own version (2) is the user's edit, and is reported."""
    from shared.flows import callbacks
    from shared.rules.event_render import VERSION_PROPERTY_ID
    from shared.store import tenant_settings
    from shared.store.links import StoredLink
    from shared.store.tenant_settings import TenantSettings

    graph = FakeGraph()
    v2 = push_apply.apply(graph, plan_upsert(activity(version=2), None, USER)).link
    v3 = activity(version=3, start="2025-03-10T10:00:00+01:00", end="2025-03-10T10:30:00+01:00")  # moved
    # The other worker's PATCH of v3 went through (or our own, whose answer was lost); no link yet.
    graph.events[v2.outlook_event_id].update(plan_upsert(v3, v2, USER).action.patch, changeKey="ck-other")
    graph.events[v2.outlook_event_id]["singleValueExtendedProperties"] = [
        {"id": VERSION_PROPERTY_ID, "value": str(written)}]
    sent: list[str] = []
    monkeypatch.setattr(tenant_settings, "get", lambda *a: TenantSettings())
    monkeypatch.setattr(callbacks, "enqueue", lambda storage, kind, *a, **_: sent.append(kind))

    store = _sync_with_one_link(monkeypatch, graph, StoredLink(v2, "etag-1", {}), v3)

    assert (callbacks.CHANGED_IN_OUTLOOK in sent) is reported
    assert store["link"].link.version == 3 and store["link"].link.change_key == graph.events[v2.outlook_event_id]["changeKey"]


def test_a_delete_is_marked_before_it_is_sent_and_the_stored_link_drops_the_mark(monkeypatch) -> None:
    """Write-ahead for deletions: a reconcile that reads the event gone before the link is stored
    sees "deleting" and does not report the push's own deletion as the user's."""
    from shared.store import links
    from shared.store.links import StoredLink

    graph = FakeGraph()
    v1 = push_apply.apply(graph, plan_upsert(activity(), None, USER)).link
    first = StoredLink(v1, "etag-1", {})
    seen_at_delete: list[Any] = []
    original = graph.call

    def call(method, path, **kwargs):
        if method == "DELETE":
            seen_at_delete.append(dict(links.get().extra))
        return original(method, path, **kwargs)

    graph.call = call  # type: ignore[method-assign]
    store = _sync_with_one_link(monkeypatch, graph, first, activity(version=2, status="cancelled"))

    assert seen_at_delete == [{links.DELETING: "v2"}] and graph.events == {}
    assert store["link"].link.outlook_event_id is None and links.DELETING not in store["link"].extra


def test_an_update_that_finds_the_event_deleted_by_a_newer_cancel_does_not_bring_it_back(monkeypatch) -> None:
    """Found by the wider chaos run (race 9): worker A PATCHes v2 while worker B deletes the event
    for v3 (a cancel) and stores its tombstone. A's 404 must not re-create the event from the link
    A read before the PATCH: the stored link changed, so A plans from B's tombstone (stale: nothing)."""
    from shared.store.links import StoredLink

    graph = FakeGraph()
    v1 = push_apply.apply(graph, plan_upsert(activity(), None, USER)).link
    tombstone = StoredLink(plan_deletion(ActivityDeleted("act-1", "user-1", 3), v1, USER).link, "etag-B", {})
    store: dict[str, Any] = {}
    original = graph.call

    def call(method, path, **kwargs):
        if method == "PATCH":  # B's cancel lands between A's read of the link and A's PATCH
            graph.events.clear()
            store["link"] = tombstone
        return original(method, path, **kwargs)

    graph.call = call  # type: ignore[method-assign]
    _sync_with_one_link(monkeypatch, graph, StoredLink(v1, "etag-1", {}), activity(version=2, subject="Renamed"), store)

    assert graph.events == {} and graph.calls.count(("POST", "me/events")) == 1  # v1's only
    assert store["link"] is tombstone and store["link"].link.tombstone


def test_an_update_that_finds_the_event_deleted_in_outlook_creates_it_again(monkeypatch) -> None:
    """The same 404 with the link unchanged is the user's deletion: the CRM's newer version is
    the newest intent and is shown again (design §4)."""
    from shared.store.links import StoredLink

    graph = FakeGraph()
    v1 = push_apply.apply(graph, plan_upsert(activity(), None, USER)).link
    graph.events.clear()  # deleted in Outlook, not yet reconciled
    store = _sync_with_one_link(monkeypatch, graph, StoredLink(v1, "etag-1", {}), activity(version=2, subject="Renamed"))

    assert [e["subject"] for e in graph.events.values()] == ["Renamed"]
    assert store["link"].link.version == 2 and store["link"].link.outlook_event_id in graph.events


def test_a_retried_create_that_finds_its_event_never_writes_an_older_version_over_a_newer_one(monkeypatch) -> None:
    """Found by the wider chaos run (the event showed v1 while the link said v2, and the reconcile
    reported that as the user's move): A's create of v1 reached Graph but its answer was lost; A's
    retry looks the event up and PATCHes it, while B, planning v2 from the same "creating" link,
    looks it up too and writes v2 first. A's PATCH is conditional on what its lookup saw, so it
    gets a 412 and A plans again from B's link: v1 is stale, nothing is written or reported."""
    from shared.flows import callbacks
    from shared.store import tenant_settings
    from shared.store.links import StoredLink
    from shared.store.tenant_settings import TenantSettings

    graph = FakeGraph()
    first = plan_upsert(activity(), None, USER)
    created = graph.call("POST", "me/events", json=first.action.event).body  # A's create; answer lost
    v2 = plan_upsert(activity(version=2, subject="Moved by the CRM"), Link("act-1", -1), USER)
    store: dict[str, Any] = {}
    original = graph.call
    sent: list[str] = []

    def call(method, path, **kwargs):
        if method == "PATCH" and not sent:  # B's PATCH of v2 lands between A's lookup and A's PATCH
            sent.append("B")
            graph.events[created["id"]].update(v2.action.event, changeKey="ck-B")
            link = replace(v2.link, outlook_event_id=created["id"], change_key="ck-B")
            store["link"] = StoredLink(link, "etag-B", {})
        return original(method, path, **kwargs)

    graph.call = call  # type: ignore[method-assign]
    monkeypatch.setattr(tenant_settings, "get", lambda *a: TenantSettings())
    monkeypatch.setattr(callbacks, "enqueue", lambda storage, kind, *a, **_: sent.append(kind))
    intent = StoredLink(Link("act-1", -1), "etag-1", {push_apply.CREATING: "v1"})
    _sync_with_one_link(monkeypatch, graph, intent, activity(), store)

    assert graph.events[created["id"]]["subject"] == "Moved by the CRM"
    assert store["link"].link.version == 2 and sent == ["B"]  # no callback: nothing was the user's


@pytest.mark.parametrize(
    ("tried", "sweeps"),
    [
        ({}, False),
        ({"attempt": 1}, True),
        ({"throttled": 2}, False),  # 429s and a closed gate: nothing reached Outlook
        ({"throttled": 1, "maybe_written": True}, True),  # a 503 with Retry-After may have
        ({"redelivered": True}, True),
    ],
)
def test_a_message_tried_before_sweeps_the_events_its_link_does_not_name_once_done(monkeypatch, tried, sweeps) -> None:
    """Found by the wider chaos run (a duplicate): a try created an event, lost the race for the
    link, and its deletion of that event failed (Graph down); the failure re-queued the message,
    and only the retry can still remove the stray, so a message tried before sweeps once done."""
    import json

    from shared.flows import push

    swept: list[str] = []
    monkeypatch.setattr(push, "_dispatch", lambda services, message, now: push.DONE)
    monkeypatch.setattr(push, "_subject_of", lambda services, message: ("act-1", 2, None))
    monkeypatch.setattr(push_apply, "sweep_lost_creates", lambda services, tenant, user, aid: swept.append(aid))
    raw = json.dumps({"v": activity_queue.MESSAGE_VERSION, "tenant": "t", "user": "u", "kind": "event", **tried})

    assert push.process(SimpleNamespace(storage=None), raw.encode()) == push.DONE
    assert swept == (["act-1"] if sweeps else [])


@pytest.mark.parametrize(("status", "marked"), [(503, True), (429, False)])
def test_a_throttle_that_may_have_been_carried_out_marks_the_retry_to_sweep(monkeypatch, status, marked) -> None:
    import json

    from shared.flows import push
    from shared.rules.errors import ThrottledError

    def throttled(services: Any, message: Any, now: Any) -> str:
        raise ThrottledError("slow down", retry_after=5, status=status)

    requeued: list[dict[str, Any]] = []
    monkeypatch.setattr(push, "_dispatch", throttled)
    monkeypatch.setattr(push, "_requeue", lambda services, message, *a: requeued.append(message) or push.REQUEUED)
    raw = json.dumps({"v": activity_queue.MESSAGE_VERSION, "tenant": "t", "user": "u", "kind": "event"})

    assert push.process(SimpleNamespace(storage=None), raw.encode()) == push.REQUEUED
    assert bool(requeued[0].get(push.MAYBE_WRITTEN)) is marked


def test_a_retried_create_that_finds_a_newer_versions_event_leaves_it_alone(monkeypatch) -> None:
    """Found by the wider chaos run (the event showed v1 while its link said v2, reported as the
    user's move): A retries v1's create (its mark is on the link) and its lookup finds the event B
    has just created for v2, whose link B has not stored yet. The event's crmVersion (2) says it
    is a newer version's: A neither adopts it (a PATCH of v1 over v2) nor deletes it."""
    from shared.store.links import StoredLink

    graph = FakeGraph()
    newer = graph.call("POST", "me/events", json=plan_upsert(activity(version=2, subject="v2"), None, USER).action.event).body
    intent = StoredLink(Link("act-1", -1), "etag-1", {push_apply.CREATING: "v1"})
    store = _sync_with_one_link(monkeypatch, graph, intent, activity())

    assert graph.events[newer["id"]]["subject"] == "v2" and len(graph.events) == 1
    assert [m for m, _ in graph.calls] == ["POST", "GET"] and store["saves"] == 0
