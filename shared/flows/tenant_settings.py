"""``GET``/``PUT /api/tenants/{tenant}/settings`` (design §3): read and replace a tenant's sync
settings. Validation is ``shared.rules.tenant_settings.parse_settings`` (a ``ValidationError``
becomes a 400 naming each bad field at the edge); storage is ``shared.store.tenant_settings``.
The reconcile and the push read the same row when they need the field directions. Turning
meeting capture on queues a reconcile of the tenant's connected users: the initial capture."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from shared.ports import Services
from shared.rules.tenant_settings import TenantSettings, parse_settings
from shared.store import tenant_settings


def read(services: Services, tenant: str) -> dict[str, Any]:
    return {"tenant_id": tenant, **tenant_settings.get(services.storage, tenant).as_json()}


def replace(services: Services, tenant: str, body: Any, now: datetime) -> dict[str, Any]:
    settings = parse_settings(body)
    before = tenant_settings.get(services.storage, tenant)
    tenant_settings.put(services.storage, tenant, settings, now)
    if settings.capturing and _capture_of(settings) != _capture_of(before):
        _start_initial_capture(services, tenant)
    return {"tenant_id": tenant, **settings.as_json()}


def _capture_of(settings: TenantSettings) -> tuple[str, tuple[str, ...]]:
    return settings.capture_meetings, settings.internal_domains


def _start_initial_capture(services: Services, tenant: str) -> None:
    """Capture was turned on (or its scope changed): a reconcile of each connected user of the
    tenant, spread out (its new round reports the meetings already in the window once)."""
    from shared.rules import queues
    from shared.store import connections, work_queues

    users = (c for c in connections.connected_in_tenant(services.storage, tenant) if c.capture)
    for i, connection in enumerate(users):
        message = {"tenant": tenant, "user": connection.user, "reasons": ["capture_on"], "kind": "request"}
        work_queues.send(services.storage, queues.MAILBOX_RECONCILE, tenant, json.dumps(message), delay_seconds=i // 10)
