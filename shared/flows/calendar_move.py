"""Switching calendars (``PUT .../calendar``): every event of ours moves to the new calendar exactly once.

Graph cannot move an event (graph-facts-2 §6), so each one is created in the new calendar, then the old
one is deleted. The switch itself is quick: the target is resolved (the dedicated calendar found or
created), the connection points at it at once (new pushes create there; updates address events by id,
wherever they are), the delta position and the subscription move with it, and a job is queued on
``calendar-move``. The job walks the user's links in key order, a page per message, and for each event
not yet in the target:

1. look it up by our property in the target (a copy made by a run that crashed before step 3 is
   adopted, so a resumed job never creates a second one);
2. otherwise read the old event and create its copy in the target (a transactionId per activity and
   target makes a lost answer's retry a no-op);
3. point the link at the copy, guarded by the link's ETag read before step 2 (a push that changed the
   event meanwhile wins: the copy is deleted and the activity is done again);
4. delete the old event (a 404: already gone).

A crash anywhere re-runs the page from the message the queue redelivers; each step is idempotent, so
the result is one event per activity in the target and none left behind. Progress (moved / total)
is on the connection, shown by ``status``; the CRM hears ``calendar.changed`` when the job finishes.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any

from shared.flows import calendars, callbacks
from shared.outlook.mailbox_client import mailbox_token
from shared.outlook.throttle import MailboxGated, next_step
from shared.ports import MailboxGraph, Services
from shared.rules import queues
from shared.rules.calendars import CalendarChoice, choice_json, event_path, graph_path
from shared.rules.callback_messages import CALENDAR_CHANGED
from shared.rules.contract import ValidationError
from shared.rules.errors import ConflictError, ThrottledError, TransientError
from shared.rules.event_render import PROPERTY_ID, TRANSACTION_NAMESPACE, property_value
from shared.rules.sync_plan import Link, join_url_of
from shared.store import connections, links, mailbox_sync, work_queues
from shared.store.connections import CONNECTED, Connection, iso

log = logging.getLogger(__name__)
PAGE = 25  # links per message: well inside a message's visibility timeout
COPIED = (
    "subject,body,start,end,isAllDay,location,locations,reminderMinutesBeforeStart,isReminderOn,showAs,"
    "sensitivity,importance,categories"
)
LOOKUP_SELECT = "id,changeKey,webLink"


class NotConnected(Exception):
    pass


def parse_request(body: object) -> CalendarChoice:
    from shared.rules.calendars import parse_choice

    if not isinstance(body, dict) or "calendar" not in body:
        raise ValidationError([("calendar", 'required: "default", "dedicated" or {"id": "<calendar id>"}')])
    choice = parse_choice(body["calendar"])
    if choice is None:
        raise ValidationError([("calendar", 'must be "default", "dedicated" or {"id": "<calendar id>"}')])
    return choice


# --- listing --------------------------------------------------------------------------------------------


def list_calendars(services: Services, tenant: str, user: str) -> dict[str, Any]:
    """The calendars the user can write to: id, name, colour, is_default, owner, and which is in use."""
    connection = connections.get(services.storage, tenant, user)
    if connection.state != CONNECTED:
        raise NotConnected()
    token = mailbox_token(services, connection)
    answer = services.graph.call(
        token,
        "GET",
        graph_path(None, "calendars", mailbox=connection.mailbox_path),
        params={"$select": "id,name,color,hexColor,isDefaultCalendar,canEdit,owner", "$top": "250"},
    )
    items = []
    for cal in (answer.body or {}).get("value") or []:
        if not isinstance(cal, dict) or cal.get("canEdit") is False:
            continue
        default = bool(cal.get("isDefaultCalendar"))
        in_use = cal.get("id") == connection.calendar_id or (default and connection.calendar_id is None)
        items.append(
            {
                "id": cal.get("id"),
                "name": cal.get("name"),
                "colour": cal.get("hexColor") or None,
                "colour_name": cal.get("color") or "auto",
                "is_default": default,
                "owner": ((cal.get("owner") or {}).get("address")),
                "in_use": in_use,
            }
        )
    return {"calendar": calendars.describe(connection), "calendars": items}


# --- switching ------------------------------------------------------------------------------------------


def switch(services: Services, tenant: str, user: str, choice: CalendarChoice, now: datetime) -> dict[str, Any]:
    """Point the connection at the chosen calendar and queue the move of our events there."""
    connection = connections.get(services.storage, tenant, user)
    if connection.state != CONNECTED:
        raise NotConnected()
    token = mailbox_token(services, connection)
    target = calendars.resolve(services, token, connection, choice)  # CalendarUnavailable: a 409 at the edge
    if target.calendar_id == connection.calendar_id and target.calendar == connection.calendar:
        return {"calendar": calendars.describe(connection), "move": _move(connection)}
    total = sum(1 for s in links.for_user(services.storage, tenant, user) if _ours(s.link))
    move = {
        "id": uuid.uuid4().hex,
        "state": "moving",
        "from": connection.calendar_id,
        "to": target.calendar_id,
        "moved": 0,
        "total": total,
        "started_at": iso(now),
        "finished_at": None,
    }
    state = mailbox_sync.claim(services.storage, tenant, user, now)
    try:
        updated = connections.update(
            services.storage,
            tenant,
            user,
            lambda c: replace(
                c, calendar=target.calendar, calendar_id=target.calendar_id, calendar_move=json.dumps(move)
            ),
        )
    except BaseException:
        mailbox_sync.release_quietly(services.storage, state)
        raise
    mailbox_sync.release(services.storage, state, delta_link=None, window=None)  # a delta of the old calendar
    from shared.flows import subscriptions

    subscriptions.maintain(services, updated, now, recreate=True)  # the resource names the new calendar
    _enqueue(services, tenant, user, move["id"], None)
    return {"calendar": calendars.describe(updated), "move": move}


def _move(connection: Connection) -> dict[str, Any] | None:
    return json.loads(connection.calendar_move) if connection.calendar_move else None


def describe_move(connection: Connection) -> dict[str, Any] | None:
    """The last switch's progress, as status shows it."""
    move = _move(connection)
    return None if move is None else {k: move.get(k) for k in ("state", "moved", "total", "started_at", "finished_at")}


def _enqueue(services: Services, tenant: str, user: str, move_id: str, after: str | None) -> None:
    message = {"kind": "calendar-move", "tenant": tenant, "user": user, "move": move_id, "after": after}
    work_queues.send(services.storage, queues.CALENDAR_MOVE, tenant, json.dumps(message))


# --- the job ---------------------------------------------------------------------------------------------


def process(services: Services, raw: bytes, now: datetime) -> str:
    """One page of the move; queues the next page, or finishes. Raises for what the queue retries."""
    from shared.outlook.mailbox_client import MailboxClient

    message = json.loads(raw)
    tenant, user = str(message["tenant"]), str(message["user"])
    connection = connections.get(services.storage, tenant, user)
    move = _move(connection)
    if connection.state != CONNECTED or move is None or move["id"] != message["move"] or move["state"] != "moving":
        return "skipped"  # superseded by a later switch, or the user removed sync
    target = connection.calendar_id
    client = MailboxClient(services, tenant, user, target, connection=connection)
    after = message.get("after")
    page = sorted(
        (s for s in links.for_user(services.storage, tenant, user) if _ours(s.link)),
        key=lambda s: s.link.activity_id,
    )
    page = [s for s in page if after is None or s.link.activity_id > after][:PAGE]
    # The reconcile's lease, held for the page: a delta pass never reads links half-way through a move
    # (it would look for an old event just deleted and report it deleted to the CRM).
    try:
        lease = mailbox_sync.claim(services.storage, tenant, user, now, owner=f"calendar-move-{move['id']}")
    except mailbox_sync.Busy as busy:
        wait = next_step("wait", 0, 0, busy.retry_after)
        work_queues.send(services.storage, queues.CALENDAR_MOVE, tenant, json.dumps(message), delay_seconds=wait.delay)
        return "busy"
    moved = 0
    try:
        for stored in page:
            moved += _move_one(services, client, tenant, user, stored.link.activity_id, target, move["id"])
    except (ThrottledError, MailboxGated, TransientError, ConflictError) as error:
        # The page again later (each step is idempotent); what moved is counted by the events themselves.
        delay = getattr(error, "retry_after", 0) or 5
        log.info("A calendar move waits %.0f s: %s", delay, type(error).__name__)
        _count(services, tenant, user, move["id"], moved)
        work_queues.send(services.storage, queues.CALENDAR_MOVE, tenant, json.dumps(message), delay_seconds=int(delay) + 1)
        return "requeued"
    finally:
        mailbox_sync.release_quietly(services.storage, lease)
    last = page[-1].link.activity_id if page else None

    updated = _count(services, tenant, user, move["id"], moved, finished_at=iso(now) if len(page) < PAGE else None)
    if len(page) == PAGE:
        _enqueue(services, tenant, user, move["id"], last)
        return "continued"
    finished = _move(updated) or move
    callbacks.enqueue(
        services.storage,
        CALENDAR_CHANGED,
        tenant,
        user,
        {"calendar": choice_json(updated.calendar, updated.calendar_id), "moved": finished["moved"]},
    )
    return "done"


def _count(
    services: Services, tenant: str, user: str, move_id: str, moved: int, finished_at: str | None = None
) -> Connection:
    """Add ``moved`` to the move's progress; ``finished_at`` marks it done."""

    def progress(c: Connection) -> Connection:
        current = _move(c)
        if current is None or current["id"] != move_id:
            return c
        current["moved"] = current["moved"] + moved
        if finished_at:
            current.update(state="done", finished_at=finished_at)
        return replace(c, calendar_move=json.dumps(current))

    return connections.update(services.storage, tenant, user, progress)


def _move_one(
    services: Services,
    client: MailboxGraph,
    tenant: str,
    user: str,
    activity_id: str,
    target: str | None,
    move_id: str,
) -> int:
    """Move one activity's event into ``target``; 1 if it moved now, 0 if it was there already."""
    from shared.outlook.graph import NotFoundError

    for _ in range(3):
        stored = links.get(services.storage, tenant, user, activity_id)
        if stored is None or not _ours(stored.link):
            return 0
        old_id = stored.link.outlook_event_id
        found = _lookup(client, property_value(tenant, activity_id))
        if any(e["id"] == old_id for e in found):
            for extra in (e for e in found if e["id"] != old_id):
                _delete_quietly(client, extra["id"])  # a copy from a run that lost the race
            return 0
        if found:
            copy = found[0]  # made by a run that crashed before pointing the link at it
            for extra in found[1:]:
                _delete_quietly(client, extra["id"])
        else:
            try:
                old = client.call("GET", event_path(old_id, mailbox=client.mailbox_path), params={"$select": COPIED}).body or {}
            except NotFoundError:
                return 0  # the user deleted it: the reconcile reports it, nothing to move
            body = _copy_of(old, tenant, activity_id, move_id)
            copy = client.call("POST", graph_path(target, "events", mailbox=client.mailbox_path), json=body).body or {}
        link = replace(stored.link, outlook_event_id=copy["id"], change_key=copy.get("changeKey"))
        meeting = bool(stored.link.online_meeting_url)
        if meeting:
            # The copy is a new event and the old meeting goes with the old one: the link forgets both its
            # join URL and its content hash, so a replay writes the activity over the copy (its own body,
            # without the old Teams block) and makes it a meeting again, with a new link the CRM hears of.
            link = replace(link, online_meeting_url=join_url_of(copy), content_hash=None)
        extra = {**stored.extra, "web_link": copy.get("webLink")} if copy.get("webLink") else dict(stored.extra)
        try:
            links.save(services.storage, tenant, user, links.StoredLink(link, stored.etag, extra))
        except ConflictError:
            _delete_quietly(client, copy["id"])  # the activity changed meanwhile: copy it again from its event
            continue
        _delete_quietly(client, old_id)
        if meeting:
            from shared.flows.push import queue_replay

            queue_replay(services, tenant, user, activity_id)
        return 1
    raise ConflictError("the link kept changing while its event was moved")


def _ours(link: Link) -> bool:
    """An event of ours to move: an adopted one is the user's own meeting (issue 17), never copied nor
    deleted (deleting it would send its attendees a cancellation); it stays where the user keeps it."""
    return bool(link.outlook_event_id) and not link.adopted


def _copy_of(old: dict[str, Any], tenant: str, activity_id: str, move_id: str) -> dict[str, Any]:
    """The old event's content, our property, and a transactionId per (move, activity): a create whose
    answer was lost is not made twice by its retry."""
    body = {k: v for k, v in old.items() if k in COPIED.split(",") and v is not None}
    body["singleValueExtendedProperties"] = [{"id": PROPERTY_ID, "value": property_value(tenant, activity_id)}]
    body["transactionId"] = str(uuid.uuid5(TRANSACTION_NAMESPACE, f"move|{move_id}|{tenant}|{activity_id}"))
    return body


def _lookup(client: MailboxGraph, value: str) -> list[dict[str, Any]]:
    query = f"singleValueExtendedProperties/Any(ep: ep/id eq '{PROPERTY_ID}' and ep/value eq '{value}')"
    answer = client.call(
        "GET", graph_path(client.calendar_id, "events", mailbox=client.mailbox_path), params={"$filter": query, "$select": LOOKUP_SELECT}
    )
    return [e for e in (answer.body or {}).get("value") or [] if isinstance(e, dict) and e.get("id")]


def _delete_quietly(client: MailboxGraph, event_id: str) -> None:
    from shared.outlook.graph import NotFoundError

    try:
        client.call("DELETE", event_path(event_id, mailbox=client.mailbox_path))
    except NotFoundError:
        pass

