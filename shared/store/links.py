"""The ``Links`` table: one row per (user, activity), the memory that makes every write idempotent.

PartitionKey = (tenant, user), RowKey = activity id, both escaped (shared/store/tables.py). A row holds
the ``sync_plan.Link`` fields plus what status and removal need: ``state`` (synced, failed),
``end_utc`` of the event (to remove only future events), ``web_link`` and ``last_error``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from shared.ports import Storage
from shared.rules.sync_plan import Link
from shared.store import tables

SYNCED = "synced"
# Extra: the push's DELETE of the linked event was (maybe) sent and the link not stored yet ("v<version>").
# The reconcile does not take that event's disappearance for the user's deletion.
DELETING = "deleting"
FAILED = "failed"
_LINK_FIELDS = tuple(f.name for f in fields(Link))


@dataclass(frozen=True)
class StoredLink:
    link: Link
    etag: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # state, end_utc, web_link, last_error


def partition(tenant: str, user: str) -> str:
    return tables.key(tenant, user)


def get(storage: Storage, tenant: str, user: str, activity_id: str) -> StoredLink | None:
    row = tables.read(
        storage.table(tables.LINKS), partition(tenant, user), tables.key(activity_id), "reading a link"
    )
    return None if row is None else from_row(row)


def from_row(row: Any) -> StoredLink:
    link = Link(**{name: row[name] for name in _LINK_FIELDS if name in row})
    extra = {k: v for k, v in row.items() if k not in _LINK_FIELDS and k not in ("PartitionKey", "RowKey")}
    return StoredLink(link, tables.etag_of(row), extra)


def save(storage: Storage, tenant: str, user: str, stored: StoredLink) -> StoredLink:
    """Insert, or replace the row read (ETag); ConflictError when someone else wrote it first."""
    entity = {name: getattr(stored.link, name) for name in _LINK_FIELDS}
    entity.update(stored.extra)
    entity = {k: v for k, v in entity.items() if v is not None}
    entity.update(PartitionKey=partition(tenant, user), RowKey=tables.key(stored.link.activity_id))
    metadata = tables.write(storage.table(tables.LINKS), entity, stored.etag, "saving a link")
    return StoredLink(stored.link, metadata.get("etag"), stored.extra)


def for_user(storage: Storage, tenant: str, user: str) -> list[StoredLink]:
    with tables.storage_errors("listing links"):
        rows = storage.table(tables.LINKS).query_entities(
            "PartitionKey eq @pk", parameters={"pk": partition(tenant, user)}
        )
        return [from_row(row) for row in rows]


def counts(storage: Storage, tenant: str, user: str) -> dict[str, int]:
    """What status shows: events in Outlook, activities whose last sync failed."""
    synced = failed = 0
    for stored in for_user(storage, tenant, user):
        if stored.extra.get("state") == FAILED:
            failed += 1
        elif stored.link.outlook_event_id:
            synced += 1
    return {"synced": synced, "failed": failed}
