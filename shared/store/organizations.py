"""Organisation mode (issue 19): which Microsoft tenant a CRM tenant's admin consented for, in
``Organizations``.

Two rows per attachment, in different partitions of the same table:

- ``(key(crm tenant), "crm")``: the CRM tenant's organisation: the Microsoft tenant id, its state
  (``connected``, ``consent_required``, ``disconnected``) and when;
- ``(key(microsoft tenant id), "microsoft")``: which CRM tenant that Microsoft tenant belongs to. It is
  created once (an insert: a second CRM tenant finds it taken) and never handed to another CRM tenant,
  so a consent for Microsoft tenant X can never be attached to CRM tenant Y by replaying or editing an
  admin-consent callback, even though the callback's ``tenant`` value can be forged.

Nothing secret is kept: tenant ids and dates only (the app's credential lives in Key Vault).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from shared.ports import Storage
from shared.rules.errors import ConflictError
from shared.store import tables

CONNECTED = "connected"
CONSENT_REQUIRED = "consent_required"
DISCONNECTED = "disconnected"
CRM_ROW, MICROSOFT_ROW = "crm", "microsoft"


@dataclass(frozen=True)
class Organization:
    tenant: str
    microsoft_tenant_id: str | None = None
    state: str = DISCONNECTED
    connected_at: str | None = None
    changed_at: str | None = None
    etag: str | None = None


def get(storage: Storage, tenant: str) -> Organization:
    row = tables.read(storage.table(tables.ORGANIZATIONS), tables.key(tenant), CRM_ROW, "reading the organisation")
    if row is None:
        return Organization(tenant)
    return Organization(
        tenant,
        row.get("microsoft_tenant_id"),
        row.get("state", DISCONNECTED),
        row.get("connected_at"),
        row.get("changed_at"),
        tables.etag_of(row),
    )


def save(storage: Storage, organization: Organization) -> Organization:
    """Insert or replace the CRM tenant's row (ETag-guarded: ConflictError if it changed meanwhile)."""
    entity: dict[str, Any] = {
        "PartitionKey": tables.key(organization.tenant),
        "RowKey": CRM_ROW,
        "tenant": organization.tenant,
        "state": organization.state,
    }
    for name in ("microsoft_tenant_id", "connected_at", "changed_at"):
        if getattr(organization, name) is not None:
            entity[name] = getattr(organization, name)
    metadata = tables.write(storage.table(tables.ORGANIZATIONS), entity, organization.etag, "saving the organisation")
    return replace(organization, etag=metadata.get("etag"))


def claim_microsoft_tenant(storage: Storage, microsoft_tenant_id: str, tenant: str, now: str) -> bool:
    """Bind the Microsoft tenant to the CRM tenant; False when another CRM tenant holds it already."""
    table = storage.table(tables.ORGANIZATIONS)
    entity = {"PartitionKey": tables.key(microsoft_tenant_id), "RowKey": MICROSOFT_ROW, "tenant": tenant, "at": now}
    try:
        tables.write(table, entity, None, "claiming the Microsoft tenant")
        return True
    except ConflictError:
        row = tables.read(table, tables.key(microsoft_tenant_id), MICROSOFT_ROW, "reading the Microsoft tenant")
        return row is not None and row.get("tenant") == tenant
