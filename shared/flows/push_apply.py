"""Plan, apply, store: one activity's change carried into one mailbox, exactly once (design §4).

``sync`` loads the link, asks a planner (``shared.rules.sync_plan``) what to do, and applies it:
Create (write-ahead: the link is marked "creating", with the version, before the POST; a retry that
finds the mark first looks the event up by our extended property and adopts it, so a create whose
answer was lost never makes a duplicate; else POST with the deterministic ``transactionId``; an
older version that finds a newer version's mark stops there, since that worker writes the link), Update (PATCH only
when the content hash changed), Delete (write-ahead too: the link is marked "deleting" before the DELETE, so a reconcile that reads
the event gone before the link is stored does not report our own deletion as the user's; 404 =
already gone). The link is stored ETag-guarded; a
concurrent write makes it plan again. An Update that finds the event deleted in Outlook creates it
again (a new CRM change is the newest intent; the reconcile has already told the CRM about the
deletion). Then ``activity.synced`` tells the CRM what Outlook now shows.

**Conflicts** (design §4 "Two-way content"): an Update is sent with ``If-Match`` on the changeKey
the link holds (our last write, or the user's edit the reconcile last read). Graph answers 412
when the event changed since: the user edited it in Outlook and no reconcile has read that yet.
Then the event is read once, the user's edit is reported like the reconcile would report it
(``activity.changed_in_outlook``, only ``two_way`` fields, ``conflict: true`` when the CRM's new
version changes one of the same fields to something else), the link takes the event's changeKey
and view, and the CRM's version is written over it: **the CRM's change, applied after the user's
edit, wins in Outlook; the user's text still reaches the CRM**, which decides (its own version is
newer than the callback's ``version``). A 412 with nothing to report (Exchange bumps changeKeys
by itself) just retries the write with the new changeKey. Neither does a 412 caused by our own
write whose link is not stored yet (another worker's, or this message's, whose answer was lost):
the event's ``crmVersion`` property (``shared.rules.event_render``) is newer than the link's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from shared.flows import callbacks
from shared.outlook.mailbox_client import MailboxClient
from shared.ports import MailboxGraph, Services
from shared.rules.backfill_plan import CREATING
from shared.rules.calendars import event_path, graph_path
from shared.rules.errors import ConflictError, PermanentError, SyncError
from shared.rules.event_render import ONLINE_UNAVAILABLE, VERSION_EXPAND, lookup_params, written_version
from shared.rules.event_time import graph_to_utc, iso
from shared.rules.sync_plan import (
    ADOPTED,
    ALREADY_SHOWN,
    OUTLOOK_EVENT_NOT_FOUND,
    UNCHANGED,
    Adopt,
    Create,
    Decision,
    Delete,
    Link,
    Nothing,
    Unlink,
    Update,
    after,
    after_lookup,
    join_url_of,
)
from shared.store import connections, links
from shared.store.connections import Connection

log = logging.getLogger(__name__)

LAST_SYNC_EVERY = timedelta(seconds=60)  # last_sync_at is written at most this often per user

_activity_locks: dict[tuple[str, str, str], threading.Lock] = {}
_activity_locks_guard = threading.Lock()


@contextmanager
def _one_at_a_time(tenant: str, user: str, activity_id: str) -> Iterator[None]:
    """Messages about one activity run one after another in this process (versions out of order
    arrive together); across processes the ETag on the link keeps them honest."""
    key = (tenant, user, activity_id)
    with _activity_locks_guard:
        lock = _activity_locks.setdefault(key, threading.Lock())
    with lock:
        yield


def sync(
    services: Services,
    connection: Connection,
    activity_id: str,
    now: datetime,
    plan: Callable[[Link | None], Decision | None],
) -> None:
    """Bring one activity's event in line with what ``plan`` decides from its current link."""
    tenant, user = connection.tenant, connection.user
    client = MailboxClient(services, tenant, user, connection.calendar_id, connection=connection)
    with _one_at_a_time(tenant, user, activity_id):
        gone: Link | None = None  # our event turned out deleted in Outlook: plan as if unlinked
        gone_etag: str | None = None  # ... while the stored link is still the one read before that
        created: str | None = None  # an event we created whose link another worker wrote over
        for _ in range(5):
            stored = links.get(services.storage, tenant, user, activity_id)
            if gone is not None and (stored.etag if stored else None) != gone_etag:
                # Another worker stored the link since (a deletion's tombstone, a newer version):
                # the deleted event may be its doing, so plan from its link, not from ours.
                gone = None
            if created and not (stored and stored.link.outlook_event_id == created):
                _delete_quietly(client, created)  # the link names another event: ours is a duplicate
            created = None
            decision = plan(gone or (stored.link if stored else None))
            if decision is None:
                return
            if decision.link is not None and decision.link.version < _creating_version(stored):
                # Another worker is creating a newer version's event (or died doing so, and that
                # message comes back): this older version has nothing to add, and must not take
                # that event for a lost create of its own.
                return
            if (
                stored
                and stored.extra.get(CREATING)
                and isinstance(decision.action, Nothing)
                and decision.link is not None
                and decision.link.version > stored.link.version
                and not decision.link.outlook_event_id
            ):
                # A create of an older version may have reached Outlook while its answer (or the
                # process) was lost; this newer version wants no event, so that one must go.
                _delete_ours(client, tenant, activity_id)
            if isinstance(decision.action, Nothing) and decision.link == (stored.link if stored else None):
                return  # nothing to write anywhere
            if isinstance(decision.action, Delete) and stored is not None:
                try:  # write-ahead, like a create: the reconcile must not report our own deletion
                    stored = _mark(services, tenant, user, stored, links.DELETING, decision.link)
                except ConflictError:
                    continue
            lookup_first = True
            if isinstance(decision.action, Create) and not (stored and stored.extra.get(CREATING)):
                try:
                    stored = _record_intent(services, tenant, user, activity_id, stored, decision.link)
                except ConflictError:
                    continue
                lookup_first = False  # never sent before: no event of ours can exist yet
            try:
                applied = apply(client, decision, lookup_first=lookup_first)
            except OutlookChanged as changed:
                absorb_outlook_edit(services, connection, activity_id, changed.event, decision, now)
                continue  # plan again from the link that now holds the user's changeKey
            except EventGone:
                gone = replace(
                    decision.link or Link(activity_id, 0),
                    outlook_event_id=None,
                    content_hash=None,
                    change_key=None,
                )
                gone = replace(gone, version=(stored.link.version if stored else 0))
                gone_etag = stored.etag if stored else None
                continue
            if applied.link is None:
                return
            saved = links.StoredLink(applied.link, stored.etag if stored else None, _extra(stored, applied))
            try:
                links.save(services.storage, tenant, user, saved)
            except ConflictError:
                gone = None
                if isinstance(applied.action, Create):
                    created = applied.link.outlook_event_id
                continue  # someone else stored this link meanwhile: decide again from theirs
            _report(services, tenant, user, decision, applied, saved.extra)
            if client.wrote:
                _touch_last_sync(services, connection, now)
            return
    raise ConflictError("the link kept changing while being synced")


def sweep_lost_creates(services: Services, tenant: str, user: str, activity_id: str) -> int:
    """After a message whose holder died: delete our events for this activity that its link does
    not name (a create that reached Outlook after a newer version was applied elsewhere).

    Never while a create may be in flight (the write-ahead mark is set, or the link changes while
    we look), never for an activity without a link (events kept by "Remove sync" are the user's
    now). Returns how many events went."""
    connection = connections.get(services.storage, tenant, user)
    if connection.state != connections.CONNECTED:
        return 0
    with _one_at_a_time(tenant, user, activity_id):
        stored = links.get(services.storage, tenant, user, activity_id)
        if stored is None or stored.extra.get(CREATING):
            return 0
        client = MailboxClient(services, tenant, user, connection.calendar_id, connection=connection)

        etag = stored.etag

        def link_unchanged() -> bool:
            again = links.get(services.storage, tenant, user, activity_id)
            return again is not None and again.etag == etag  # else its own write decides

        removed = _delete_ours(client, tenant, activity_id, keep=stored.link.outlook_event_id, if_still=link_unchanged)
        if removed:
            log.info("Removed %d event(s) a worker that died had created", removed)
        return removed


def _delete_ours(
    client: MailboxGraph,
    tenant: str,
    activity_id: str,
    keep: str | None = None,
    if_still: Callable[[], bool] = lambda: True,
) -> int:
    """Delete this activity's events (found by our property) but ``keep``, if ``if_still()``
    allows it once they are found. Returns how many went."""
    from shared.rules.event_render import property_value

    doomed = [e["id"] for e in lookup(client, property_value(tenant, activity_id)) if e.get("id") != keep]
    if not doomed or not if_still():
        return 0
    for event_id in doomed:
        _delete_quietly(client, event_id)
    return len(doomed)


def _delete_quietly(client: MailboxGraph, event_id: str) -> None:
    """Delete one of our events; a 404 means it is already gone."""
    from shared.outlook.graph import NotFoundError

    try:
        client.call("DELETE", event_path(event_id, mailbox=client.mailbox_path))
    except NotFoundError:
        pass


class EventGone(Exception):
    """PATCH found no event: the user deleted ours in Outlook."""


class OutlookChanged(Exception):
    """PATCH with If-Match answered 412: the event changed in Outlook since the link's changeKey."""

    def __init__(self, event: dict[str, Any]) -> None:
        super().__init__("the event changed in Outlook")
        self.event = event


EDIT_SELECT = (
    "id,changeKey,lastModifiedDateTime,start,end,isAllDay,subject,body,location,"
    "isReminderOn,reminderMinutesBeforeStart,categories,showAs"
)


def absorb_outlook_edit(
    services: Services,
    connection: Connection,
    activity_id: str,
    event: dict[str, Any],
    decision: Decision,
    now: datetime,
) -> None:
    """Report the user's edit found by a 412 (see the module doc) and make the link hold the
    event's changeKey and view, so the next plan writes over it with the right If-Match."""
    from shared.flows.reconcile import tracked_of
    from shared.rules.field_diff import parse_shown
    from shared.rules.reconcile_plan import callback_data, edit_before_write, report_of, seen_of
    from shared.store import tenant_settings

    tenant, user = connection.tenant, connection.user
    stored = links.get(services.storage, tenant, user, activity_id)
    if stored is None or stored.link.outlook_event_id != event.get("id"):
        return
    if stored.link.change_key == event.get("changeKey"):
        return  # the reconcile read (and reported) this edit meanwhile
    seen = seen_of(event)
    written = written_version(event)
    edit = None
    if written is None or written <= stored.link.version:  # else another worker's newer write, its link not stored yet
        directions = tenant_settings.get(services.storage, tenant).field_directions
        crm_next = parse_shown(decision.link.shown) if decision.link else None
        edit = edit_before_write(tracked_of(stored), seen, crm_next, directions)
    if edit is not None:  # the reconcile may report this edit too: the same id (report_of) makes it one
        kind, report = report_of(tenant, user, edit)
        callbacks.enqueue(services.storage, kind, tenant, user, callback_data(edit, now), callback_id=report)
    assert seen.view is not None
    link = replace(stored.link, change_key=seen.change_key, shown=seen.view.to_json())
    try:
        links.save(services.storage, tenant, user, links.StoredLink(link, stored.etag, stored.extra))
    except ConflictError:
        pass  # someone else wrote the link: the next plan starts from theirs


@dataclass(frozen=True)
class Applied:
    link: Link | None
    event: dict[str, Any] | None = None  # Graph's answer for the event written (id, webLink, end ...)
    action: Any = None


def _record_intent(
    services: Services,
    tenant: str,
    user: str,
    activity_id: str,
    stored: links.StoredLink | None,
    creating: Link | None,
) -> links.StoredLink:
    """Write-ahead: mark the link "creating" ("v<version>" being created) before the POST. A
    retry that finds the mark looks the event up by our property first (the answer may have been
    lost); a link without it was never sent, so its create needs no lookup and costs one Graph
    request. The link itself is kept as it was (version -1 when new), so the retry plans the very
    same create; the version in the mark tells an older message that a newer one is in flight."""
    return _mark(services, tenant, user, stored or links.StoredLink(Link(activity_id, -1), None, {}), CREATING, creating)


def _mark(
    services: Services, tenant: str, user: str, stored: links.StoredLink, name: str, link: Link | None
) -> links.StoredLink:
    """Write-ahead mark ``name`` ("v<version>" of ``link``) on the stored link, kept as it was."""
    value = f"v{link.version}" if link else True
    return links.save(services.storage, tenant, user, links.StoredLink(stored.link, stored.etag, {**stored.extra, name: value}))


def _creating_version(stored: links.StoredLink | None) -> int:
    """The version a push create in flight is writing (-1: none, or a mark that does not say)."""
    mark = stored.extra.get(CREATING) if stored else None
    if isinstance(mark, str) and mark.startswith("v") and mark[1:].isdigit():
        return int(mark[1:])
    return -1  # True (marks written before versions were) and backfill tokens (hex) say nothing


def apply(client: MailboxGraph, decision: Decision, *, lookup_first: bool = True) -> Applied:
    """Carry out one decision against Graph (``client.call(method, path, json=, params=)``) and
    return the link to store. Pure of storage, so tests drive it with a fake Graph.
    ``lookup_first=False`` only when the create was provably never sent (see ``_record_intent``)."""
    from shared.outlook.graph import NotFoundError

    action = decision.action
    if isinstance(action, Adopt):
        return _adopt(client, decision, action)
    if isinstance(action, Create):
        planned, duplicates = after_lookup(decision, lookup(client, action.lookup_value) if lookup_first else [])
        if planned is not None and isinstance(planned.action, Create):
            try:
                answer = client.call("POST", graph_path(client.calendar_id, "events", mailbox=client.mailbox_path), json=action.event)
            except PermanentError as error:
                if error.code != "ErrorDuplicateTransactionId":
                    raise
                # A create of ours went through after all: look again.
                planned, duplicates = after_lookup(decision, lookup(client, action.lookup_value))
                if planned is not None and isinstance(planned.action, Create):
                    raise
            else:
                body = answer.body or {}
                return Applied(
                    after(decision, event_id=body["id"], change_key=body.get("changeKey"), join_url=join_url_of(body)),
                    body,
                    action,
                )
        if planned is None:
            return Applied(None, None, action)  # a newer version's event, its worker's answer on its way
        for duplicate in duplicates:  # ours too (same property): a create that was retried elsewhere
            _delete_quietly(client, duplicate)
        decision, action = planned, planned.action
    if isinstance(action, Update):
        known = decision.link.change_key if decision.link else None
        try:
            if known:
                answer = client.call("PATCH", event_path(action.event_id, mailbox=client.mailbox_path), json=action.patch, if_match=known)
            else:
                answer = client.call("PATCH", event_path(action.event_id, mailbox=client.mailbox_path), json=action.patch)
        except NotFoundError:
            raise EventGone() from None
        except PermanentError as error:
            if error.status != 412:
                raise
            try:
                event = client.call(
                    "GET",
                    event_path(action.event_id, mailbox=client.mailbox_path),
                    params={"$select": EDIT_SELECT, "$expand": VERSION_EXPAND},
                )
            except NotFoundError:
                raise EventGone() from None
            raise OutlookChanged(event.body or {}) from None
        body = answer.body or {}
        return Applied(after(decision, change_key=body.get("changeKey"), join_url=join_url_of(body)), body, action)
    if isinstance(action, Delete):
        _delete_quietly(client, action.event_id)
        return Applied(decision.link, None, action)
    return Applied(decision.link, None, action)


def _adopt(client: MailboxGraph, decision: Decision, action: Adopt) -> Applied:
    """Link the activity to the user's own event (issue 17): read it (never write it). An id this
    mailbox does not know (deleted, another mailbox's, malformed) fails the activity."""
    from shared.outlook.graph import NotFoundError
    from shared.rules.field_diff import shown_of

    try:
        answer = client.call(
            "GET", event_path(action.event_id, mailbox=client.mailbox_path), params={"$select": EDIT_SELECT + ",webLink"}
        )
    except NotFoundError:
        answer = None
    except PermanentError as error:
        if error.status != 400:
            raise
        answer = None  # ErrorInvalidIdMalformed: not an id of this mailbox
    event = (answer.body or {}) if answer is not None else {}
    if not event.get("id"):
        raise PermanentError(
            "the Outlook event to adopt was not found in this user's mailbox", code=OUTLOOK_EVENT_NOT_FOUND
        )
    if action.replaces:
        _delete_quietly(client, action.replaces)  # the event we created before is now a duplicate
    assert decision.link is not None
    link = replace(
        decision.link,
        outlook_event_id=action.event_id,
        change_key=event.get("changeKey"),
        shown=shown_of(event).to_json(),
        content_hash=None,
        adopted=True,
    )
    return Applied(link, event, action)


def lookup(client: MailboxGraph, value: str) -> list[dict[str, Any]]:
    """Our events carrying this property value (normally none or one), with the version each
    was last written from (``written_version``)."""
    path = graph_path(client.calendar_id, "events", mailbox=client.mailbox_path)
    return list((client.call("GET", path, params=lookup_params(value)).body or {}).get("value", []))


def _extra(stored: links.StoredLink | None, applied: Applied) -> dict[str, Any]:
    extra = {
        k: v
        for k, v in (stored.extra if stored else {}).items()
        if k not in ("last_error", "failed_version", CREATING, links.DELETING)
    }
    extra["state"] = links.SYNCED
    link = applied.link
    if not (link and link.outlook_event_id):
        for name in ("web_link", "start_utc", "end_utc"):
            extra.pop(name, None)
        return extra
    event = applied.event or {}
    if event.get("webLink"):
        extra["web_link"] = event["webLink"]
    # What we wrote, so the reconcile can tell a user's move from our own write.
    for name in ("start", "end"):
        if isinstance(event.get(name), dict):
            extra[f"{name}_utc"] = iso(graph_to_utc(event[name]))
    return extra


def _report(
    services: Services, tenant: str, user: str, decision: Decision, applied: Applied, extra: dict[str, Any]
) -> None:
    """``activity.synced`` when Outlook now shows this version (or no longer shows the activity)."""
    action, link = applied.action, applied.link
    if link is None:
        return
    shows = isinstance(action, Create | Update | Adopt) or (
        isinstance(action, Nothing) and action.reason in (UNCHANGED, ALREADY_SHOWN, ADOPTED)
    )
    if not (shows or isinstance(action, Delete | Unlink)):
        return
    data: dict[str, Any] = {
        "activity_id": link.activity_id,
        "version": link.version,
        "outlook_event_id": link.outlook_event_id if shows else None,
        "web_link": extra.get("web_link") if shows else None,
    }
    if shows and decision.online_meeting == ONLINE_UNAVAILABLE:
        data["online_meeting"] = ONLINE_UNAVAILABLE  # the calendar allows no online meetings (personal account)
    elif shows and decision.online_meeting and link.online_meeting_url:
        data["online_meeting_url"] = link.online_meeting_url
    if decision.notes:
        data["time_notes"] = [
            {"field": n.field, "kind": n.kind, "message": n.message} for n in decision.notes
        ]
    callbacks.enqueue(services.storage, callbacks.ACTIVITY_SYNCED, tenant, user, data)


def _touch_last_sync(services: Services, connection: Connection, now: datetime) -> None:
    last = connection.last_sync_at
    if last and now - datetime.fromisoformat(last.replace("Z", "+00:00")) < LAST_SYNC_EVERY:
        return
    try:
        connections.update(
            services.storage, connection.tenant, connection.user, lambda c: replace(c, last_sync_at=iso(now))
        )
    except SyncError as error:  # cosmetic; never fail the sync for it
        log.info("last_sync_at not updated: %s", error.message)
