"""What goes onto the ``activity-sync`` queue: a CRM event accepted once, and the messages the
worker sends itself (design §3).

``accept``, called by ``POST /api/crm/events`` after the signature and the schema passed: a
``Dedup`` row per (tenant, event id) is inserted if absent (a duplicate id is answered 202 and not
queued again), then one ``activity-sync`` message is queued. No Graph call. When the message would
not fit a queue message (64 KiB after base64) the event is kept, compressed, in its Dedup row and
the message carries only a reference.

``keep_payload`` keeps the newest version of an activity (``shared.store.kept_activities``) and,
when its owner changed, queues a message that makes the previous owner let go of its event.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from shared.ports import Services, Storage
from shared.rules import queues
from shared.rules.errors import ConflictError, SyncError
from shared.rules.event_time import iso
from shared.rules.model import Activity, ActivityDeleted, ActivityTypeUpdated, CrmEvent
from shared.store import kept_activities, tables, work_queues

log = logging.getLogger(__name__)

MESSAGE_VERSION = 1
MAX_INLINE_BYTES = 45_000  # a queue message holds 64 KiB after base64 (x 4/3)

# What ``accept`` answers.
DUPLICATE = "duplicate"
ACCEPTED = "accepted"


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
    encoded = encode(message)
    if len(encoded) > MAX_INLINE_BYTES:
        entity.update(tables.pack(raw))
        message = {**message, "event": None, "event_ref": event.id}
        encoded = encode(message)
    table = storage.table(tables.DEDUP)
    try:
        with tables.storage_errors("recording the event id"):
            table.create_entity({**entity, "queued": False})
    except ConflictError:
        if _queued(table, entity):
            return DUPLICATE
    try:
        with tables.storage_errors("queueing the event"):
            work_queues.send(storage, queues.ACTIVITY_SYNC, event.tenant_id, encoded)
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


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()


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
    encoded = encode(message)
    if len(encoded) > MAX_INLINE_BYTES:  # the activity is kept in full: the previous owner needs no content
        data = {**data, "description": ""}
        encoded = encode({**message, "event": {**raw, "data": data}})
    with tables.storage_errors("telling the previous owner"):
        work_queues.send(services.storage, queues.ACTIVITY_SYNC, tenant, encoded)
