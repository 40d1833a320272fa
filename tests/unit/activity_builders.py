"""Valid CRM payloads and records to start tests from; override only what a test is about."""

from __future__ import annotations

import copy
from typing import Any

from shared.rules.contract import parse_activity
from shared.rules.model import Activity

BASE_ACTIVITY: dict[str, Any] = {
    "id": "act-1",
    "version": 1,
    "owner_user_id": "user-1",
    "type": {"id": "type-call", "name": "Llamada", "show_in_calendar": True},
    "status": "planned",
    "show_in_calendar": True,
    "subject": "Call Ana about the renewal",
    "description": "Bring the new price list.",
    "start": "2025-03-10T09:00:00+01:00",
    "end": "2025-03-10T09:30:00+01:00",
    "time_zone": "Europe/Madrid",
    "all_day": False,
    "location": "Office",
    "reminder_minutes": 15,
    "deal": {"id": "deal-9", "name": "Renewal 2025"},
    "company": {"id": "co-3", "name": "Acme S.L."},
    "contact": {"id": "ct-7", "name": "Ana Pérez", "email": "ana@acme.example", "phone": "+34 600 000 000"},
    "url": "https://crm.example/activities/act-1",
}


def activity_json(**overrides: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE_ACTIVITY)
    for key, value in overrides.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def activity(**overrides: Any) -> Activity:
    return parse_activity(activity_json(**overrides))


def envelope(kind: str, data: Any, **overrides: Any) -> dict[str, Any]:
    body = {"id": "evt-1", "type": kind, "tenant_id": "tenant-1",
            "occurred_at": "2025-03-01T10:00:00Z", "data": data}
    body.update(overrides)
    return body
