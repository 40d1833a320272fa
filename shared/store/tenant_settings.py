"""The ``TenantSettings`` table: one row per tenant holding its settings document
(``shared.rules.tenant_settings``).

PartitionKey = the tenant (escaped), RowKey = ``settings``. One string column per top-level key
of the document, each a JSON text, plus ``updated_at``; a tenant without a row has the defaults.
A later setting (issues 17, 18) is one more column: rows written before it simply lack it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.ports import Storage
from shared.rules.event_time import iso
from shared.rules.tenant_settings import TenantSettings, from_stored, to_stored
from shared.store import tables

ROW = "settings"


def get(storage: Storage, tenant: str) -> TenantSettings:
    row = tables.read(storage.table(tables.TENANT_SETTINGS), tables.key(tenant), ROW, "reading tenant settings")
    return from_stored(dict(row) if row is not None else {})


def put(storage: Storage, tenant: str, settings: TenantSettings, now: datetime) -> TenantSettings:
    """Replace the tenant's document (last writer wins: a PUT is the whole document)."""
    from azure.data.tables import UpdateMode

    entity: dict[str, Any] = {"PartitionKey": tables.key(tenant), "RowKey": ROW, "tenant": tenant}
    entity.update(to_stored(settings))
    entity["updated_at"] = iso(now)
    with tables.storage_errors("saving tenant settings"):
        storage.table(tables.TENANT_SETTINGS).upsert_entity(entity, mode=UpdateMode.REPLACE)
    return settings
