"""The callbacks the service sends the CRM (design §3): their kinds and their envelope.

Every envelope has a unique ``id`` the CRM can deduplicate on; delivery is shared/flows/callbacks.py."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from shared.rules.event_time import iso

CONNECTED = "connection.connected"
DISCONNECTED = "connection.disconnected"
REAUTH_REQUIRED = "connection.reauth_required"
ENABLE_FAILED = "connection.enable_failed"  # issue 19: a signed-in user the organisation could not take over
ACTIVITY_SYNCED = "activity.synced"
ACTIVITY_SYNC_FAILED = "activity.sync_failed"
CHANGED_IN_OUTLOOK = "activity.changed_in_outlook"
DELETED_IN_OUTLOOK = "activity.deleted_in_outlook"
BACKFILL_COMPLETED = "backfill.completed"
CALENDAR_RECREATED = "calendar.recreated"
CALENDAR_CHANGED = "calendar.changed"
ORGANIZATION_CONNECTED = "organization.connected"  # issue 19: about the CRM tenant, user_id null
ORGANIZATION_CONNECT_FAILED = "organization.connect_failed"


def envelope(
    kind: str, tenant: str, user: str | None, data: dict[str, Any], now: datetime | None = None
) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": kind,
        "tenant_id": tenant,
        "user_id": user,
        "occurred_at": iso(now or datetime.now(UTC)),
        "data": data,
    }
