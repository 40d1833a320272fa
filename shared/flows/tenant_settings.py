"""``GET``/``PUT /api/tenants/{tenant}/settings`` (design §3): read and replace a tenant's sync
settings. Validation is ``shared.rules.tenant_settings.parse_settings`` (a ``ValidationError``
becomes a 400 naming each bad field at the edge); storage is ``shared.store.tenant_settings``.
The reconcile and the push read the same row when they need the field directions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.ports import Services
from shared.rules.tenant_settings import parse_settings
from shared.store import tenant_settings


def read(services: Services, tenant: str) -> dict[str, Any]:
    return {"tenant_id": tenant, **tenant_settings.get(services.storage, tenant).as_json()}


def replace(services: Services, tenant: str, body: Any, now: datetime) -> dict[str, Any]:
    settings = parse_settings(body)
    tenant_settings.put(services.storage, tenant, settings, now)
    return {"tenant_id": tenant, **settings.as_json()}
