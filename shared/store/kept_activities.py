"""What we keep of the CRM between its events, so that later work can be done without asking it.

- ``Activities``: the newest ``activity.upserted`` data per (tenant, activity), packed
  (``tables.pack``), with its ``version``, ``owner`` and ``occurred_at``. Pushed activities and
  backfilled ones inside the window are kept alike. It serves the replay (an activity type's
  calendar flag turned back on, a reconnect after ``reauth_required``) and owner changes (the
  previous owner's event is removed). The payload is kept only while its owner's sync is on
  (connected, or waiting to reconnect): for anyone else the row holds only ``version`` and
  ``owner``, which is all ordering and owner changes need. A deleted activity keeps only its
  version, with ``deleted`` set, so a late upsert stays stale; "Remove sync" drops the payloads of
  the user's activities the same way (their versions stay, to keep order).
- ``ActivityTypes``: the newest ``activity_type.updated`` per (tenant, type), by ``occurred_at``;
  it overrides the copy of the type inside any activity older than it.

Every write is ETag-guarded and re-reads on a conflict, so concurrent workers never move a row
back to an older version.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from shared.ports import Storage
from shared.rules.errors import ConflictError
from shared.rules.model import Activity, ActivityDeleted, ActivityType, ActivityTypeUpdated
from shared.store import tables

_RETRIES = 5


# --- activities -----------------------------------------------------------------------------------


def row(storage: Storage, tenant: str, activity_id: str) -> Any:
    table = storage.table(tables.ACTIVITIES)
    return tables.read(table, tables.key(tenant), tables.key(activity_id), "reading a kept activity")


def payload(storage: Storage, tenant: str, activity_id: str) -> tuple[dict[str, Any], datetime] | None:
    """The kept data of a live activity and when the CRM sent it, or None."""
    found = row(storage, tenant, activity_id)
    if found is None or found.get("deleted"):
        return None
    data = tables.unpack(found)
    return (data, tables.aware(found["occurred_at"])) if data else None


def keep(
    storage: Storage,
    tenant: str,
    activity: Activity,
    data: dict[str, Any],
    occurred_at: datetime,
    *,
    tell_previous_owner: Callable[[str], None],
    with_payload: bool = True,
) -> None:
    """Keep the newest version of an activity, with its payload unless ``with_payload`` is
    False. When its owner changed, ``tell_previous_owner`` runs first, so a crash before the
    write still leaves the previous owner told."""
    table = storage.table(tables.ACTIVITIES)
    for _ in range(_RETRIES):
        current = row(storage, tenant, activity.id)
        if current is not None:
            known = int(current["version"])
            # The same version again only fills in a payload the row lacks (a user connecting anew).
            if known > activity.version or (
                known == activity.version and (current.get("deleted") or "p0" in current or not with_payload)
            ):
                return
        previous_owner = current.get("owner") if current is not None else None
        if previous_owner and previous_owner != activity.owner_user_id:
            tell_previous_owner(previous_owner)
        entity = {
            "PartitionKey": tables.key(tenant),
            "RowKey": tables.key(activity.id),
            "owner": activity.owner_user_id,
            "version": activity.version,
            "occurred_at": occurred_at,
            "deleted": False,
            **(tables.pack(data) if with_payload else {}),
        }
        try:
            tables.write(table, entity, tables.etag_of(current), "keeping an activity")
            return
        except ConflictError:
            continue


def owned_by(storage: Storage, tenant: str, user: str) -> list[str]:
    """The ids of the live activities this user owns."""
    with tables.storage_errors("listing a user's kept activities"):
        rows = list(
            storage.table(tables.ACTIVITIES).query_entities(
                "PartitionKey eq @pk and owner eq @owner and deleted eq false",
                parameters={"pk": tables.key(tenant), "owner": user},
                select=["RowKey"],
            )
        )
    return [tables.unkey(found["RowKey"])[0] for found in rows]


TRANSACTION_LIMIT = 100  # operations in one Table Storage entity-group transaction


def forget(storage: Storage, tenant: str, user: str) -> int:
    """ "Remove sync": keep no CRM content of this user's activities (versions stay, to keep order)."""
    from azure.data.tables import UpdateMode

    table = storage.table(tables.ACTIVITIES)
    with tables.storage_errors("forgetting a user's kept activities"):
        rows = list(
            table.query_entities(
                "PartitionKey eq @pk and owner eq @owner",
                parameters={"pk": tables.key(tenant), "owner": user},
                select=["PartitionKey", "RowKey", "owner", "version", "occurred_at", "deleted"],
            )
        )
        # The same rows without p0, p1, ...: 100 per entity-group transaction (one partition per
        # tenant), so "Remove sync" answers at once even for a user with thousands of activities.
        for start in range(0, len(rows), TRANSACTION_LIMIT):
            table.submit_transaction(
                [("upsert", dict(found), {"mode": UpdateMode.REPLACE}) for found in rows[start : start + TRANSACTION_LIMIT]]
            )
    return len(rows)


def drop(storage: Storage, tenant: str, deleted: ActivityDeleted) -> None:
    """A deleted activity's content is not kept; its version stays (a late upsert stays stale)."""
    from azure.data.tables import UpdateMode

    current = row(storage, tenant, deleted.id)
    if current is None or int(current["version"]) > deleted.version or current.get("deleted"):
        return
    entity = {
        "PartitionKey": tables.key(tenant),
        "RowKey": tables.key(deleted.id),
        "owner": current.get("owner"),
        "version": deleted.version,
        "occurred_at": current["occurred_at"],
        "deleted": True,
    }
    with tables.storage_errors("dropping a kept activity"):
        storage.table(tables.ACTIVITIES).upsert_entity(entity, mode=UpdateMode.REPLACE)


# --- activity types -------------------------------------------------------------------------------


def type_row(storage: Storage, tenant: str, type_id: str) -> Any:
    table = storage.table(tables.ACTIVITY_TYPES)
    return tables.read(table, tables.key(tenant), tables.key(type_id), "reading an activity type")


def superseded(found: Any, occurred_at: datetime) -> bool:
    """True when the stored type row holds a change newer than one made at ``occurred_at``."""
    return found is not None and tables.aware(found["occurred_at"]) > occurred_at


def known_type(storage: Storage, tenant: str, type_id: str, *, newer_than: datetime) -> ActivityType | None:
    """The type as last updated by the CRM, when that update is newer than the activity's copy
    (push and backfill both let it override the copy inside an activity)."""
    found = type_row(storage, tenant, type_id)
    if found is None or tables.aware(found["occurred_at"]) <= newer_than:
        return None
    return ActivityType(
        type_id, found["name"], bool(found["show_in_calendar"]), bool(found.get("online_meeting", False))
    )


def keep_type(storage: Storage, tenant: str, update: ActivityTypeUpdated, occurred_at: datetime) -> bool:
    """Store the type change unless a newer one is known; True when this change is the latest."""
    table = storage.table(tables.ACTIVITY_TYPES)
    for _ in range(_RETRIES):
        current = type_row(storage, tenant, update.id)
        if superseded(current, occurred_at):
            return False
        entity = {
            "PartitionKey": tables.key(tenant),
            "RowKey": tables.key(update.id),
            "name": update.name,
            "show_in_calendar": update.show_in_calendar,
            "online_meeting": update.online_meeting,
            "occurred_at": occurred_at,
        }
        try:
            tables.write(table, entity, tables.etag_of(current), "keeping an activity type")
            return True
        except ConflictError:
            continue
    raise ConflictError("the activity type kept changing")
