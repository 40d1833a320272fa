"""The callbacks the service sends the CRM (design §3): their kinds and their envelope.

Every envelope has an ``id`` the CRM can deduplicate on: unique, except that reports of the same
Outlook-side change share one (``report_id``); delivery is shared/flows/callbacks.py."""

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


# Namespace of the ids of reports of Outlook-side changes; fixed forever (see ``report_id``).
REPORT_NAMESPACE = uuid.UUID("3f0b6c52-2f0e-4f7c-9a51-6c1d8e0a4b27")


def report_id(kind: str, tenant: str, user: str, event_id: str, change_key: str | None) -> str:
    """The id of a report of one Outlook-side change: the same for every report of the same event
    state (its changeKey; a deletion has none), so when the reconcile and a push's 412 both
    report one edit, the CRM's deduplication on ``id`` keeps one."""
    return str(uuid.uuid5(REPORT_NAMESPACE, "|".join((kind, tenant, user, event_id, change_key or ""))))


def envelope(
    kind: str,
    tenant: str,
    user: str | None,
    data: dict[str, Any],
    now: datetime | None = None,
    *,
    callback_id: str | None = None,
) -> dict[str, Any]:
    return {
        "id": callback_id or str(uuid.uuid4()),
        "type": kind,
        "tenant_id": tenant,
        "user_id": user,
        "occurred_at": iso(now or datetime.now(UTC)),
        "data": data,
    }
