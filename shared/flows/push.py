"""The ``activity-sync`` worker: apply one CRM change to the user's calendar (design §3, §4).

``process`` takes one message at a time, never sleeping, and hands each kind of work on:

- ``activity.upserted`` / ``activity.deleted``: the connection is loaded, the activity's newest
  version kept (``activity_queue.keep_payload``), and ``push_apply.sync`` plans and applies it.
- ``activity_type.updated``: the type is remembered (``shared.store.kept_activities``; the latest
  ``occurred_at`` wins and overrides older copies inside activities), then one message per user
  of the tenant fans out. Flag off removes that type's events for every user (an explicit CRM
  instruction, so the mass-deletion guard counts it as confirmed); flag on replays each kept
  payload.
- ``user.updated``: the connection's locale and CRM time zone.

Failures (see ``shared.outlook.throttle``): throttling closes the mailbox gate and re-queues with
the delay Graph asked for; transient errors re-queue with backoff; a permanent error (a Graph 400)
marks the link ``failed`` with ``last_error``, adds it to the connection's recent errors (status)
and sends ``activity.sync_failed`` once, without retrying; an AuthError moves the user to
``reauth_required`` (one callback, however many messages fail).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from shared.flows import callbacks, push_apply
from shared.flows.activity_queue import MESSAGE_VERSION, encode, keep_payload
from shared.outlook.throttle import MailboxGated, next_step
from shared.ports import Services
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
from shared.rules.event_time import iso
from shared.rules.model import Activity, ActivityDeleted, ActivityType, ActivityTypeUpdated
from shared.rules.sync_plan import (
    OUTLOOK_EVENT_NOT_FOUND,
    Decision,
    Delete,
    Link,
    Unlink,
    UserContext,
    check_mass_deletion,
    plan_deletion,
    plan_type_update,
    plan_upsert,
)
from shared.store import connections, kept_activities, links, tables, work_queues
from shared.store.connections import CONNECTED, Connection

log = logging.getLogger(__name__)

# Outcomes (returned by ``process`` for logs and tests).
DONE = "done"
REQUEUED = "requeued"
MAYBE_WRITTEN = "maybe_written"  # a failed try may have reached Outlook: sweep once done


def process(services: Services, raw: bytes, now: datetime | None = None, *, redelivered: bool = False) -> str:
    """Handle one ``activity-sync`` message; re-queues it itself when it must be tried later.

    ``redelivered``: the queue hands this message out again because whoever held it died (or
    crashed) before finishing. Its create may have reached Outlook after a newer version was
    already applied by another worker; once the message is done, ``push_apply.sweep_lost_creates``
    removes such an event (the write-ahead mark covers every other way a create's answer is lost).
    A message re-queued after a failure that may have reached Outlook sweeps too (not after a 429
    or a closed mailbox gate, which never did): its earlier try may have created an event that lost
    the race for the link and whose deletion then failed (Graph down, throttled).

    Raises only for a message that cannot be read (so the host moves it to the poison queue) or
    for an error this code does not know (a bug: retried by the host, then poisoned)."""
    message = json.loads(raw)
    if not isinstance(message, dict) or message.get("v") != MESSAGE_VERSION:
        raise ValueError("not an activity-sync message of this version")
    tenant, user = message["tenant"], message.get("user")
    if redelivered:
        message["redelivered"] = True  # kept when re-queued, so a retry still sweeps
    try:
        outcome = _dispatch(services, message, now or datetime.now(UTC))
        tried_before = message.get("redelivered") or message.get("attempt", 0) or message.get(MAYBE_WRITTEN)
        if outcome == DONE and tried_before and user is not None:
            subject = _subject_of(services, message)
            if subject is not None:
                push_apply.sweep_lost_creates(services, tenant, user, subject[0])
        return outcome
    except MailboxGated as gated:
        return _retry_later(services, message, "throttled", gated.retry_after)
    except ThrottledError as throttled:
        if throttled.status != 429:  # a 503 may have been carried out; a 429 never is
            message[MAYBE_WRITTEN] = True
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
        work_queues.send(
            services.storage, queues.ACTIVITY_SYNC, str(message["tenant"]), encode(again), delay_seconds=delay
        )
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
        update = ActivityTypeUpdated(
            data["id"], data["name"], data["show_in_calendar"], bool(data.get("online_meeting", False))
        )
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


def _context(
    services: Services, connection: Connection, type_: ActivityType | None = None
) -> UserContext:
    """What the planner needs of the user; the calendar's online meeting providers only for an
    online meeting type (read once per calendar, then kept on the connection)."""
    providers = None
    if type_ is not None and type_.online_meeting and connection.state == CONNECTED:
        from shared.flows.calendars import online_providers

        providers = online_providers(services, connection)
    return UserContext(
        connection.tenant,
        connection.user,
        connected=connection.state == CONNECTED,
        mailbox_time_zone=connection.mailbox_time_zone,
        locale=connection.locale,
        online_providers=providers,
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
    context = _context(services, connection, known or activity.type)
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
    context = _context(services, connection, known or activity.type)
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
    context = _context(services, connection)
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
    from shared.store import paging

    pages = paging.pages(
        services.storage.table(tables.CONNECTIONS),
        "PartitionKey eq @pk",
        {"pk": tables.key(tenant)},
        ["user"],
        what="listing the tenant's users",
    )
    for row in (row for page in pages for row in page.rows):  # one page of the tenant's users at a time
        message = {
            "v": MESSAGE_VERSION,
            "kind": "type_user",
            "tenant": tenant,
            "user": row["user"],
            "type": {
                "id": update.id,
                "name": update.name,
                "show_in_calendar": update.show_in_calendar,
                "online_meeting": update.online_meeting,
            },
            "occurred_at": iso(occurred_at),
            "attempt": 0,
            "throttled": 0,
        }
        with tables.storage_errors("queueing a user's type update"):
            work_queues.send(services.storage, queues.ACTIVITY_SYNC, tenant, encode(message))
    return DONE


def enqueue_replays(services: Services, tenant: str, user: str) -> int:
    """Queue a replay of every kept activity this user owns (after a reconnect from
    ``reauth_required``, so what the CRM pushed while the grant was broken is not lost)."""
    activity_ids = kept_activities.owned_by(services.storage, tenant, user)
    for activity_id in activity_ids:
        _queue_replay(services, tenant, user, activity_id)
    return len(activity_ids)


def queue_replay(services: Services, tenant: str, user: str, activity_id: str) -> None:
    """Write one activity again from its kept payload (a calendar switch that copied an online meeting)."""
    _queue_replay(services, tenant, user, activity_id)


def _queue_replay(services: Services, tenant: str, user: str, activity_id: str) -> None:
    """One ``replay`` message: the worker recreates the activity's event from its kept payload."""
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
        work_queues.send(services.storage, queues.ACTIVITY_SYNC, tenant, encode(message))


def _type_for_user(
    services: Services, tenant: str, user: str, update: ActivityTypeUpdated, occurred_at: datetime, now: datetime
) -> str:
    if kept_activities.superseded(kept_activities.type_row(services.storage, tenant, update.id), occurred_at):
        return DONE  # a newer change of this type is known; its own fan-out does the work
    connection = connections.get(services.storage, tenant, user)
    context = _context(services, connection)
    stored = links.for_user(services.storage, tenant, user)
    decisions = plan_type_update(update, [s.link for s in stored], context)
    check_mass_deletion(decisions, sum(bool(s.link.outlook_event_id) for s in stored), confirmed=True)
    for decision in decisions:
        activity_id = decision.link.activity_id if decision.link else ""
        if not isinstance(decision.action, Delete | Unlink):  # a Replay: recreate from the kept payload
            _queue_replay(services, tenant, user, activity_id)
            continue

        def plan(link: Link | None, update: ActivityTypeUpdated = update) -> Decision | None:
            found = plan_type_update(update, [link] if link else [], context)
            return found[0] if found else None

        _sync(services, connection, activity_id, now, plan)
    return DONE


def _sync(
    services: Services,
    connection: Connection,
    activity_id: str,
    now: datetime,
    plan: Callable[[Link | None], Decision | None],
) -> str:
    push_apply.sync(services, connection, activity_id, now, plan)
    return DONE


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
            **({"reason": error.code} if error.code == OUTLOOK_EVENT_NOT_FOUND else {}),
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
