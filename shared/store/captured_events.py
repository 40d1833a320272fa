"""The ``CapturedEvents`` table: per (user, Outlook event) what was last reported about a captured
meeting (``shared.rules.capture_plan.Reported``), so each real change is reported once, across
replayed delta pages, new rounds and host restarts.

PartitionKey = (tenant, user), RowKey = the Outlook event id, both escaped. Columns:
``change_key``, ``content_hash``, ``state`` (active, cancelled), ``series`` (a series master),
``reported_at``. Nothing of the
meeting itself (subject, attendees ...) is kept here. Rows go when the meeting is reported deleted
or no longer captured, and all of a user's go at "Remove sync".
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.ports import Storage
from shared.rules.capture_plan import Reported
from shared.rules.event_time import iso
from shared.store import tables


def partition(tenant: str, user: str) -> str:
    return tables.key(tenant, user)


def _of(row: Any) -> Reported:
    return Reported(
        tables.unkey(row["RowKey"])[0],
        row.get("change_key"),
        str(row.get("content_hash") or ""),
        str(row.get("state") or "active"),
        bool(row.get("series")),
    )


def for_user(storage: Storage, tenant: str, user: str) -> dict[str, Reported]:
    """Every captured event of the user, by event id (one query per reconcile pass)."""
    with tables.storage_errors("listing captured events"):
        rows = storage.table(tables.CAPTURED_EVENTS).query_entities(
            "PartitionKey eq @pk", parameters={"pk": partition(tenant, user)}
        )
        found = [_of(row) for row in rows]
    return {r.event_id: r for r in found}


def remember(storage: Storage, tenant: str, user: str, reported: Reported, now: datetime) -> None:
    from azure.data.tables import UpdateMode

    entity = {
        "PartitionKey": partition(tenant, user),
        "RowKey": tables.key(reported.event_id),
        "content_hash": reported.content_hash,
        "state": reported.state,
        "reported_at": iso(now),
    }
    if reported.change_key:
        entity["change_key"] = reported.change_key
    if reported.series:
        entity["series"] = True
    with tables.storage_errors("saving a captured event"):
        storage.table(tables.CAPTURED_EVENTS).upsert_entity(entity, mode=UpdateMode.REPLACE)


def forget(storage: Storage, tenant: str, user: str, event_id: str) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        with tables.storage_errors("forgetting a captured event"):
            storage.table(tables.CAPTURED_EVENTS).delete_entity(partition(tenant, user), tables.key(event_id))
    except ResourceNotFoundError:
        pass


def forget_user(storage: Storage, tenant: str, user: str) -> int:
    """Remove sync: nothing about the user's meetings stays."""
    removed = 0
    for event_id in for_user(storage, tenant, user):
        forget(storage, tenant, user, event_id)
        removed += 1
    return removed
