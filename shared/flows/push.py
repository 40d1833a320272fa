"""Push CRM changes into Outlook: accept a signed CRM event once, queue it, and apply it to the
user's calendar exactly once, at the exact time (design §3, §4).

Edge (``accept``, called by ``POST /api/crm/events`` after the signature and the schema passed):
a ``Dedup`` row per (tenant, event id) is inserted if absent (a duplicate id is answered 202 and
not queued again), then one ``activity-sync`` message is queued. No Graph call. When the message
would not fit a queue message (64 KiB after base64) the event is kept, compressed, in its Dedup row
and the message carries only a reference.

Worker (``process``), one message at a time, never sleeping:

- ``activity.upserted`` / ``activity.deleted``: load the connection and the link, plan with
  ``shared.rules.sync_plan``, apply: Create (write-ahead: the link is marked "creating" before the POST;
  a retry that finds the mark first looks the event up by our extended property and adopts it, so
  a create whose answer was lost never makes a duplicate; else POST with the deterministic
  ``transactionId``), Update (PATCH only when the content hash changed), Delete (404 = already
  gone). The link is stored ETag-guarded; a concurrent write makes it plan again. An Update that
  finds the event deleted in Outlook creates it again (a new CRM change is the newest intent; the
  reconcile has already told the CRM about the deletion).
- Payload keeping (``shared.store.kept_activities``): the latest ``activity.upserted`` data per
  (tenant, activity) is kept while its owner's sync is on (dropped when the activity is deleted);
  backfilled items inside the window are kept the same way. It serves ``Replay`` (an activity type's calendar flag turned
  back on recreates that type's events) and owner changes (the previous owner's event is removed).
- ``activity_type.updated``: the type is remembered (``shared.store.kept_activities``; the latest
  ``occurred_at`` wins and overrides older copies inside activities), then one message per user
  of the tenant fans out. Flag off removes that type's events for every user (an explicit CRM
  instruction, so the mass-deletion guard counts it as confirmed); flag on replays each kept
  payload.
- ``user.updated``: the connection's locale and CRM time zone.

Graph is called through ``shared.outlook.mailbox_client``. Failures (see ``shared.outlook.throttle``): throttling
closes the mailbox gate and re-queues with the delay Graph asked for; transient errors re-queue
with backoff; a permanent error (a Graph 400) marks the link ``failed`` with ``last_error``, adds
it to the connection's recent errors (status) and sends ``activity.sync_failed`` once, without
retrying; an AuthError moves the user to ``reauth_required`` (one callback, however many messages
fail).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.flows import callbacks
from shared.outlook.mailbox_client import MailboxClient
from shared.outlook.throttle import MailboxGated, next_step
from shared.ports import Services, Storage
from shared.rules import queues
from shared.rules.contract import ValidationError, parse_activity, parse_crm_event
from shared.rules.errors import (
    AuthError,
    ConflictError,
    PermanentError,
    SyncError,
    ThrottledError,
    TransientError,
)
from shared.rules.event_render import PROPERTY_ID
from shared.rules.event_time import graph_to_utc
from shared.rules.model import Activity, ActivityDeleted, ActivityTypeUpdated, CrmEvent
from shared.rules.sync_plan import (
    UNCHANGED,
    Create,
    Decision,
    Delete,
    Link,
    Nothing,
    Update,
    UserContext,
    adopt,
    after,
    check_mass_deletion,
    plan_deletion,
    plan_type_update,
    plan_upsert,
)
from shared.store import connections, kept_activities, links, tables
from shared.store.connections import CONNECTED, Connection, iso

log = logging.getLogger(__name__)

MESSAGE_VERSION = 1
MAX_INLINE_BYTES = 45_000  # a queue message holds 64 KiB after base64 (x 4/3)
LAST_SYNC_EVERY = timedelta(seconds=60)  # last_sync_at is written at most this often per user
LOOKUP_SELECT = "id,changeKey,webLink,start,end"
CREATING = "creating"  # link extra: a create was (maybe) sent and its answer not yet stored

# Outcomes (returned by ``process`` for logs and tests).
DONE = "done"
REQUEUED = "requeued"
DUPLICATE = "duplicate"
ACCEPTED = "accepted"


# === edge: accept one CRM event =================================================================


def message_for(event: CrmEvent, raw: dict[str, Any]) -> dict[str, Any]:
    """The ``activity-sync`` message for a validated CRM event (``raw`` as the CRM sent it)."""
    data = event.data
    if isinstance(data, Activity | ActivityDeleted):
        user: str | None = data.owner_user_id
    elif isinstance(data, ActivityTypeUpdated):
        user = None  # fanned out to every user of the tenant by the worker
    else:
        user = data.user_id
    return {
        "v": MESSAGE_VERSION,
        "kind": "event",
        "tenant": event.tenant_id,
        "user": user,
        "event": raw,
        "attempt": 0,
        "throttled": 0,
    }


def accept(storage: Storage, raw: dict[str, Any], event: CrmEvent, now: datetime) -> str:
    """Record the event id once and queue the work; ``DUPLICATE`` when the id was seen before.

    The Dedup row is written first, so two concurrent deliveries of one id queue it once. If
    queueing then fails the row is removed again and the error raised (the CRM retries). The row
    says ``queued`` only once the work is queued: a retry that finds it unconfirmed (the process
    died between the two writes) queues the work again rather than losing it (applying an event
    twice is harmless; never applying it is not)."""
    message = message_for(event, raw)
    entity: dict[str, Any] = {
        "PartitionKey": tables.key(event.tenant_id),
        "RowKey": tables.key(event.id),
        "type": event.type,
        "received_at": now,
    }
    encoded = _encode(message)
    if len(encoded) > MAX_INLINE_BYTES:
        entity.update(tables.pack(raw))
        message = {**message, "event": None, "event_ref": event.id}
        encoded = _encode(message)
    table = storage.table(tables.DEDUP)
    try:
        with tables.storage_errors("recording the event id"):
            table.create_entity({**entity, "queued": False})
    except ConflictError:
        if _queued(table, entity):
            return DUPLICATE
    try:
        with tables.storage_errors("queueing the event"):
            storage.send(queues.ACTIVITY_SYNC, encoded)
    except SyncError:
        try:
            with tables.storage_errors("forgetting the event id"):
                table.delete_entity(entity["PartitionKey"], entity["RowKey"])
        except Exception:  # noqa: BLE001 - best effort; the original error is what the CRM must see
            log.warning("An event id stayed recorded although its work was not queued")
        raise
    try:
        with tables.storage_errors("confirming the event queued"):
            table.update_entity(
                {"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"], "queued": True}
            )  # merge
    except Exception:  # noqa: BLE001 - a retry of this id then queues it once more: harmless
        log.info("An event was queued but not confirmed on its id")
    return ACCEPTED


def _queued(table: Any, entity: dict[str, Any]) -> bool:
    """Whether the delivery that recorded this id confirmed its work queued (rows written before
    the ``queued`` flag existed count as queued)."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        with tables.storage_errors("reading the event id"):
            row = table.get_entity(entity["PartitionKey"], entity["RowKey"], select=["queued"])
    except ResourceNotFoundError:
        return False  # forgotten meanwhile (its queueing failed): queue it now
    return row.get("queued") is not False


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()


# === worker ======================================================================================


def process(services: Services, raw: bytes, now: datetime | None = None) -> str:
    """Handle one ``activity-sync`` message; re-queues it itself when it must be tried later.

    Raises only for a message that cannot be read (so the host moves it to the poison queue) or
    for an error this code does not know (a bug: retried by the host, then poisoned)."""
    message = json.loads(raw)
    if not isinstance(message, dict) or message.get("v") != MESSAGE_VERSION:
        raise ValueError("not an activity-sync message of this version")
    tenant, user = message["tenant"], message.get("user")
    try:
        return _dispatch(services, message, now or datetime.now(UTC))
    except MailboxGated as gated:
        return _retry_later(services, message, "throttled", gated.retry_after)
    except ThrottledError as throttled:
        return _retry_later(services, message, "throttled", throttled.retry_after)
    except (TransientError, ConflictError) as error:
        step = next_step("transient", message.get("attempt", 0), message.get("throttled", 0))
        if step.retry:
            log.info("Transient failure, retrying in %s s: %s", step.delay, error.message)
            return _requeue(services, message, step.delay, step.attempt, step.throttled)
        return _give_up(services, message, error)
    except AuthError as error:
        if user is None:
            raise
        from shared.flows.reauth import require_reauth

        require_reauth(services, tenant, user, error.code or "invalid_grant")
        return DONE
    except PermanentError as error:
        return _give_up(services, message, error)


def _retry_later(services: Services, message: dict[str, Any], kind: str, retry_after: float) -> str:
    step = next_step("throttled", message.get("attempt", 0), message.get("throttled", 0), retry_after)
    if not step.retry:
        return _give_up(
            services, message, TransientError("Outlook kept throttling this mailbox", code="throttled")
        )
    return _requeue(services, message, step.delay, step.attempt, step.throttled)


def _requeue(services: Services, message: dict[str, Any], delay: int, attempt: int, throttled: int) -> str:
    again = {**message, "attempt": attempt, "throttled": throttled}
    with tables.storage_errors("re-queueing work"):
        services.storage.send(queues.ACTIVITY_SYNC, _encode(again), delay_seconds=delay)
    return REQUEUED


def _load_event(services: Services, message: dict[str, Any]) -> dict[str, Any]:
    if message.get("event") is not None:
        return message["event"]
    with tables.storage_errors("reading a kept event"):
        row = services.storage.table(tables.DEDUP).get_entity(
            tables.key(message["tenant"]), tables.key(message["event_ref"])
        )
    return tables.unpack(row)


def _dispatch(services: Services, message: dict[str, Any], now: datetime) -> str:
    kind = message["kind"]
    tenant, user = message["tenant"], message.get("user")
    if kind == "replay":
        return _replay(services, tenant, user, message["activity_id"], now)
    if kind == "type_user":
        data = message["type"]
        update = ActivityTypeUpdated(data["id"], data["name"], data["show_in_calendar"])
        return _type_for_user(services, tenant, user, update, _instant(message["occurred_at"]), now)
    if kind != "event":
        raise ValueError(f"unknown message kind {kind!r}")
    raw = _load_event(services, message)
    try:
        event = parse_crm_event(raw)
    except ValidationError as error:  # validated at the edge; only a contract change gets here
        log.error("A queued CRM event no longer validates and is dropped: %s", error)
        return DONE
    data = event.data
    if isinstance(data, ActivityTypeUpdated):
        return _fan_out_type(services, tenant, data, event.occurred_at)
    if isinstance(data, Activity):
        return _upsert(services, tenant, user, data, raw["data"], event.occurred_at, now)
    if isinstance(data, ActivityDeleted):
        return _deleted(services, tenant, user, data, now)
    return _user_updated(services, tenant, user, data.locale, data.time_zone)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _context(connection: Connection) -> UserContext:
    return UserContext(
        connection.tenant,
        connection.user,
        connected=connection.state == CONNECTED,
        mailbox_time_zone=connection.mailbox_time_zone,
        locale=connection.locale,
    )


# --- the kinds of work -----------------------------------------------------------------------------


def _upsert(
    services: Services,
    tenant: str,
    user: str,
    activity: Activity,
    data: dict[str, Any],
    occurred_at: datetime,
    now: datetime,
) -> str:
    connection = connections.get(services.storage, tenant, user)
    if activity.owner_user_id == user:
        # CRM content is kept only for a user whose sync is on ("Remove sync" means none is kept).
        sync_on = connection.state in (CONNECTED, connections.REAUTH_REQUIRED)
        keep_payload(services, tenant, activity, data, occurred_at, with_payload=sync_on)
    known = kept_activities.known_type(services.storage, tenant, activity.type.id, newer_than=occurred_at)
    policy = services.settings.completed_activities
    context = _context(connection)
    return _sync(
        services,
        connection,
        activity.id,
        now,
        lambda link: plan_upsert(activity, link, context, completed_activities=policy, activity_type=known),
    )


def _replay(services: Services, tenant: str, user: str, activity_id: str, now: datetime) -> str:
    kept = kept_activities.payload(services.storage, tenant, activity_id)
    if kept is None:
        return DONE
    data, occurred_at = kept
    activity = parse_activity(data)
    if activity.owner_user_id != user:
        return DONE
    connection = connections.get(services.storage, tenant, user)
    known = kept_activities.known_type(services.storage, tenant, activity.type.id, newer_than=occurred_at)
    policy = services.settings.completed_activities
    context = _context(connection)
    return _sync(
        services,
        connection,
        activity.id,
        now,
        lambda link: plan_upsert(
            activity, link, context, completed_activities=policy, activity_type=known, replay=True
        ),
    )


def _deleted(services: Services, tenant: str, user: str, deleted: ActivityDeleted, now: datetime) -> str:
    connection = connections.get(services.storage, tenant, user)
    kept_activities.drop(services.storage, tenant, deleted)
    context = _context(connection)
    return _sync(services, connection, deleted.id, now, lambda link: plan_deletion(deleted, link, context))


def _user_updated(services: Services, tenant: str, user: str, locale: str, time_zone: str) -> str:
    from shared.rules.messages import normalize_locale

    if connections.get(services.storage, tenant, user).state == connections.NEVER_CONNECTED:
        return DONE  # connecting carries its own locale and time zone
    connections.update(
        services.storage,
        tenant,
        user,
        lambda c: replace(c, locale=normalize_locale(locale), crm_time_zone=time_zone),
    )
    return DONE


def _fan_out_type(services: Services, tenant: str, update: ActivityTypeUpdated, occurred_at: datetime) -> str:
    if not kept_activities.keep_type(services.storage, tenant, update, occurred_at):
        return DONE  # a newer change of this type is known; its own fan-out does the work
    with tables.storage_errors("listing the tenant's users"):
        rows = list(
            services.storage.table(tables.CONNECTIONS).query_entities(
                "PartitionKey eq @pk", parameters={"pk": tables.key(tenant)}, select=["user"]
            )
        )
    for row in rows:
        message = {
            "v": MESSAGE_VERSION,
            "kind": "type_user",
            "tenant": tenant,
            "user": row["user"],
            "type": {"id": update.id, "name": update.name, "show_in_calendar": update.show_in_calendar},
            "occurred_at": iso(occurred_at),
            "attempt": 0,
            "throttled": 0,
        }
        with tables.storage_errors("queueing a user's type update"):
            services.storage.send(queues.ACTIVITY_SYNC, _encode(message))
    return DONE


def enqueue_replays(services: Services, tenant: str, user: str) -> int:
    """Queue a replay of every kept activity this user owns (after a reconnect from
    ``reauth_required``, so what the CRM pushed while the grant was broken is not lost)."""
    activity_ids = kept_activities.owned_by(services.storage, tenant, user)
    for activity_id in activity_ids:
        message = {
            "v": MESSAGE_VERSION,
            "kind": "replay",
            "tenant": tenant,
            "user": user,
            "activity_id": activity_id,
            "attempt": 0,
            "throttled": 0,
        }
        with tables.storage_errors("queueing a replay"):
            services.storage.send(queues.ACTIVITY_SYNC, _encode(message))
    return len(activity_ids)


def _type_for_user(
    services: Services, tenant: str, user: str, update: ActivityTypeUpdated, occurred_at: datetime, now: datetime
) -> str:
    if kept_activities.superseded(kept_activities.type_row(services.storage, tenant, update.id), occurred_at):
        return DONE  # a newer change of this type is known; its own fan-out does the work
    connection = connections.get(services.storage, tenant, user)
    context = _context(connection)
    stored = links.for_user(services.storage, tenant, user)
    decisions = plan_type_update(update, [s.link for s in stored], context)
    check_mass_deletion(decisions, sum(bool(s.link.outlook_event_id) for s in stored), confirmed=True)
    for decision in decisions:
        activity_id = decision.link.activity_id if decision.link else ""
        if not isinstance(decision.action, Delete):  # a Replay: recreate from the kept payload
            message = {
                "v": MESSAGE_VERSION,
                "kind": "replay",
                "tenant": tenant,
                "user": user,
                "activity_id": activity_id,
                "attempt": 0,
                "throttled": 0,
            }
            with tables.storage_errors("queueing a replay"):
                services.storage.send(queues.ACTIVITY_SYNC, _encode(message))
            continue

        def plan(link: Link | None, update: ActivityTypeUpdated = update) -> Decision | None:
            found = plan_type_update(update, [link] if link else [], context)
            return found[0] if found else None

        _sync(services, connection, activity_id, now, plan)
    return DONE


# --- plan, apply, store ---------------------------------------------------------------------------

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


def _sync(
    services: Services,
    connection: Connection,
    activity_id: str,
    now: datetime,
    plan: Callable[[Link | None], Decision | None],
) -> str:
    tenant, user = connection.tenant, connection.user
    client = MailboxClient(services, tenant, user)
    with _one_at_a_time(tenant, user, activity_id):
        gone: Link | None = None  # our event turned out deleted in Outlook: plan as if unlinked
        created: str | None = None  # an event we created whose link another worker wrote over
        for _ in range(5):
            stored = links.get(services.storage, tenant, user, activity_id)
            if created and not (stored and stored.link.outlook_event_id == created):
                _delete_quietly(client, created)  # the link names another event: ours is a duplicate
            created = None
            decision = plan(gone or (stored.link if stored else None))
            if decision is None:
                return DONE
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
                _remove_lost_creates(client, tenant, activity_id)
            if isinstance(decision.action, Nothing) and decision.link == (stored.link if stored else None):
                return DONE  # nothing to write anywhere
            lookup_first = True
            if isinstance(decision.action, Create) and not (stored and stored.extra.get(CREATING)):
                try:
                    stored = _record_intent(services, tenant, user, activity_id, stored)
                except ConflictError:
                    continue
                lookup_first = False  # never sent before: no event of ours can exist yet
            try:
                applied = apply(client, decision, lookup_first=lookup_first)
            except EventGone:
                gone = replace(
                    decision.link or Link(activity_id, 0),
                    outlook_event_id=None,
                    content_hash=None,
                    change_key=None,
                )
                gone = replace(gone, version=(stored.link.version if stored else 0))
                continue
            if applied.link is None:
                return DONE
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
            return DONE
    raise ConflictError("the link kept changing while being synced")


def _remove_lost_creates(client: Any, tenant: str, activity_id: str) -> None:
    from shared.rules.event_render import property_value

    for event in lookup(client, property_value(tenant, activity_id)):
        _delete_quietly(client, event["id"])


def _delete_quietly(client: Any, event_id: str) -> None:
    """Delete one of our events; a 404 means it is already gone."""
    from shared.outlook.graph import NotFoundError

    try:
        client.call("DELETE", f"me/events/{event_id}")
    except NotFoundError:
        pass


class EventGone(Exception):
    """PATCH found no event: the user deleted ours in Outlook."""


@dataclass(frozen=True)
class Applied:
    link: Link | None
    event: dict[str, Any] | None = None  # Graph's answer for the event written (id, webLink, end ...)
    action: Any = None


def _record_intent(
    services: Services, tenant: str, user: str, activity_id: str, stored: links.StoredLink | None
) -> links.StoredLink:
    """Write-ahead: mark the link "creating" before the POST. A retry that finds the mark looks
    the event up by our property first (the answer may have been lost); a link without it was
    never sent, so its create needs no lookup and costs one Graph request. The link itself is
    kept as it was (version -1 when new), so the retry plans the very same create."""
    intent = links.StoredLink(
        stored.link if stored else Link(activity_id, -1),
        stored.etag if stored else None,
        {**(stored.extra if stored else {}), CREATING: True},
    )
    return links.save(services.storage, tenant, user, intent)


def apply(client: Any, decision: Decision, *, lookup_first: bool = True) -> Applied:
    """Carry out one decision against Graph (``client.call(method, path, json=, params=)``) and
    return the link to store. Pure of storage, so tests drive it with a fake Graph.
    ``lookup_first=False`` only when the create was provably never sent (see ``_record_intent``)."""
    from shared.outlook.graph import NotFoundError

    action = decision.action
    if isinstance(action, Create):
        found = lookup(client, action.lookup_value) if lookup_first else []
        if not found:
            try:
                answer = client.call("POST", "me/events", json=action.event)
            except PermanentError as error:
                if error.code != "ErrorDuplicateTransactionId":
                    raise
                found = lookup(client, action.lookup_value)  # a create of ours went through after all
                if not found:
                    raise
            else:
                body = answer.body or {}
                return Applied(
                    after(decision, event_id=body["id"], change_key=body.get("changeKey")), body, action
                )
        for duplicate in found[1:]:  # ours too (same property): a create that was retried elsewhere
            _delete_quietly(client, duplicate["id"])
        decision = adopt(decision, found[0]["id"])
        action = decision.action
    if isinstance(action, Update):
        try:
            answer = client.call("PATCH", f"me/events/{action.event_id}", json=action.patch)
        except NotFoundError:
            raise EventGone() from None
        body = answer.body or {}
        return Applied(after(decision, change_key=body.get("changeKey")), body, action)
    if isinstance(action, Delete):
        _delete_quietly(client, action.event_id)
        return Applied(decision.link, None, action)
    return Applied(decision.link, None, action)


def lookup(client: Any, value: str) -> list[dict[str, Any]]:
    """Our events carrying this property value (normally none or one)."""
    query = f"singleValueExtendedProperties/Any(ep: ep/id eq '{PROPERTY_ID}' and ep/value eq '{value}')"
    answer = client.call("GET", "me/events", params={"$filter": query, "$select": LOOKUP_SELECT})
    return list((answer.body or {}).get("value", []))


def _extra(stored: links.StoredLink | None, applied: Applied) -> dict[str, Any]:
    extra = {
        k: v
        for k, v in (stored.extra if stored else {}).items()
        if k not in ("last_error", "failed_version", CREATING)
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
    shows = isinstance(action, Create | Update) or (
        isinstance(action, Nothing) and action.reason == UNCHANGED
    )
    if not (shows or isinstance(action, Delete)):
        return
    data: dict[str, Any] = {
        "activity_id": link.activity_id,
        "version": link.version,
        "outlook_event_id": link.outlook_event_id if shows else None,
        "web_link": extra.get("web_link") if shows else None,
    }
    if decision.notes:
        data["time_notes"] = [
            {"field": n.field, "kind": n.kind, "message": n.message} for n in decision.notes
        ]
    callbacks.enqueue(services.storage, callbacks.ACTIVITY_SYNCED, tenant, user, data)


def _touch_last_sync(services: Services, connection: Connection, now: datetime) -> None:
    last = connection.last_sync_at
    if last and now - _instant(last) < LAST_SYNC_EVERY:
        return
    try:
        connections.update(
            services.storage, connection.tenant, connection.user, lambda c: replace(c, last_sync_at=iso(now))
        )
    except SyncError as error:  # cosmetic; never fail the sync for it
        log.info("last_sync_at not updated: %s", error.message)


# --- giving up ------------------------------------------------------------------------------------


def _give_up(services: Services, message: dict[str, Any], error: SyncError) -> str:
    """Record a failure the user must see, tell the CRM, and stop retrying this message."""
    tenant, user = message["tenant"], message.get("user")
    subject = _subject_of(services, message)
    if user is None or subject is None:
        log.error("Work dropped after a failure: %s", error.message)
        return DONE
    activity_id, version, type_id = subject
    text = f"{error.code}: {error.message}" if error.code else error.message
    log.warning("Activity sync failed for good (%s)", error.code or type(error).__name__)
    stored = links.get(services.storage, tenant, user, activity_id)
    link = stored.link if stored else Link(activity_id, 0, type_id=type_id)
    extra = {
        **(stored.extra if stored else {}),
        "state": links.FAILED,
        "last_error": text[:1000],
        "failed_version": version,
    }
    try:
        links.save(
            services.storage, tenant, user, links.StoredLink(link, stored.etag if stored else None, extra)
        )
    except ConflictError:
        log.info("The failure was not recorded on the link: it changed meanwhile")
    connections.update(
        services.storage,
        tenant,
        user,
        lambda c: c.with_error("sync", f"Activity {activity_id}: {text}"[:500]),
    )
    callbacks.enqueue(
        services.storage,
        callbacks.ACTIVITY_SYNC_FAILED,
        tenant,
        user,
        {
            "activity_id": activity_id,
            "version": version,
            "error": {"code": error.code or "error", "message": error.message[:1000]},
        },
    )
    return DONE


def _subject_of(services: Services, message: dict[str, Any]) -> tuple[str, int, str | None] | None:
    """(activity id, version, type id) a failed message was about, if it was about one activity."""
    if message["kind"] == "replay":
        kept = kept_activities.payload(services.storage, message["tenant"], message["activity_id"])
        version = kept[0].get("version", 0) if kept else 0
        return message["activity_id"], int(version), None
    if message["kind"] != "event":
        return None
    try:
        data = _load_event(services, message).get("data") or {}
    except Exception:  # noqa: BLE001 - reporting must not fail on the report itself
        return None
    if "owner_user_id" not in data:
        return None
    type_id = (data.get("type") or {}).get("id") if isinstance(data.get("type"), dict) else None
    return str(data.get("id")), int(data.get("version", 0)), type_id


def keep_payload(
    services: Services,
    tenant: str,
    activity: Activity,
    data: dict[str, Any],
    occurred_at: datetime,
    *,
    with_payload: bool = True,
) -> None:
    """Keep the newest version of an activity (pushed or backfilled, ``shared.store.kept_activities``),
    with its payload unless told otherwise; when its owner changed, the previous owner's worker is
    told to let go of its event."""
    kept_activities.keep(
        services.storage,
        tenant,
        activity,
        data,
        occurred_at,
        tell_previous_owner=lambda owner: _forward_to_previous_owner(
            services, tenant, owner, activity, data, occurred_at
        ),
        with_payload=with_payload,
    )


def _forward_to_previous_owner(
    services: Services, tenant: str, owner: str, activity: Activity, data: dict[str, Any], occurred_at: datetime
) -> None:
    raw = {
        "id": f"owner-change:{activity.id}:{activity.version}",
        "type": "activity.upserted",
        "tenant_id": tenant,
        "occurred_at": iso(occurred_at),
        "data": data,
    }
    message = {
        "v": MESSAGE_VERSION,
        "kind": "event",
        "tenant": tenant,
        "user": owner,
        "event": raw,
        "attempt": 0,
        "throttled": 0,
    }
    encoded = _encode(message)
    if len(encoded) > MAX_INLINE_BYTES:  # the activity is kept in full: the previous owner needs no content
        data = {**data, "description": ""}
        encoded = _encode({**message, "event": {**raw, "data": data}})
    with tables.storage_errors("telling the previous owner"):
        services.storage.send(queues.ACTIVITY_SYNC, encoded)
