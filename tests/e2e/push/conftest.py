"""Fixtures for pushing CRM activities through the whole stack: a connected user (through the
real connect flow against the emulator), signed CRM events, and views of the emulator's mailbox."""

from __future__ import annotations

import copy
import itertools
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest
import requests

from shared.rules.event_render import PROPERTY_ID
from tests.conftest import Stack, wait_until
from tests.e2e.push import openapi_contract
from tests.support.clock import winter_day
from tests.support.sign_in import sign_in

RETURN_URL = "https://crm.example.com/calendars/activities"
EVENTS_PATH = "/api/crm/events"
# The day of the base activity: computed from the clock (inside the sync window, in the future, on
# standard time in Europe and America), so 10:00 in Bogotá is always 15:00 UTC and 16:00 in Madrid.
DAY = winter_day().isoformat()

BASE_ACTIVITY: dict[str, Any] = {
    "id": "act-1",
    "version": 1,
    "owner_user_id": "",
    "type": {"id": "type-meeting", "name": "Reunión", "show_in_calendar": True},
    "status": "planned",
    "show_in_calendar": True,
    "subject": "Revisar la renovación con Ana",
    "description": "Llevar la lista de precios.\nConfirmar descuentos.",
    "start": f"{DAY}T10:00:00",
    "end": f"{DAY}T11:00:00",
    "time_zone": "America/Bogota",
    "all_day": False,
    "location": "Oficina Bogotá",
    "reminder_minutes": 30,
    "deal": {"id": "deal-9", "name": "Renovación 2027"},
    "company": {"id": "co-3", "name": "Acme S.A.S."},
    "contact": {"id": "ct-7", "name": "Ana Pérez", "email": "ana@acme.example", "phone": "+57 300 000 0000"},
    "url": "https://crm.example.com/activities/act-1",
}
_seq = itertools.count(1)


@dataclass
class CrmUser:
    tenant: str
    user: str
    oid: str
    upn: str


def user_path(tenant: str, user: str, action: str) -> str:
    return f"/api/tenants/{quote(tenant, safe='')}/users/{quote(user, safe='')}/{action}"


def connect_user(
    stack: Stack,
    tenant: str | None = None,
    *,
    time_zone: str = "Romance Standard Time",
    crm_time_zone: str = "America/Bogota",
    locale: str = "es",
    calendar: Any = None,
    account_kind: str | None = None,
) -> CrmUser:
    """A CRM user connected through the real flow: connect, Microsoft's page, our callback.
    ``calendar``: the connect body's calendar choice (left out when None: the default calendar);
    ``account_kind``: the emulator's ``work`` (default) or ``personal`` Microsoft account."""
    tenant = tenant or f"tenant-{uuid.uuid4().hex[:8]}"
    user = f"user/{uuid.uuid4().hex[:8]}"  # a '/' the Table keys must survive
    upn = f"u{uuid.uuid4().hex[:10]}@contoso.example"
    mailbox = stack.control.add_user(upn, display_name="Ana Pérez", time_zone=time_zone, locale="es-ES",
                                     account_kind=account_kind)
    body = {"return_url": RETURN_URL, "time_zone": crm_time_zone, "locale": locale, "login_hint": upn}
    if calendar is not None:
        body["calendar"] = calendar
    started = stack.crm.post(user_path(tenant, user, "connect"), body)
    assert started.status_code == 200, started.text
    openapi_contract.check("POST", "/api/tenants/{tenant}/users/{user}/connect", started, body)
    landed = sign_in(started.json()["start_url"], stack.emulator.ca_path)
    assert landed.status_code == 302 and "calendar_sync=connected" in landed.headers["Location"], landed.text
    return CrmUser(tenant, user, mailbox["id"], upn)


def reconnect(stack: Stack, tenant: str, user: str, upn: str) -> None:
    """The same CRM user signs in with the same Microsoft account again."""
    body = {"return_url": RETURN_URL, "time_zone": "America/Bogota", "locale": "es", "login_hint": upn}
    started = stack.crm.post(user_path(tenant, user, "connect"), body).json()
    landed = sign_in(started["start_url"], stack.emulator.ca_path)
    assert "calendar_sync=connected" in landed.headers["Location"]


@pytest.fixture()
def ana(stack: Stack) -> CrmUser:
    return connect_user(stack)


def activity(owner: CrmUser, **overrides: Any) -> dict[str, Any]:
    data = copy.deepcopy(BASE_ACTIVITY)
    data["owner_user_id"] = owner.user
    for key, value in overrides.items():
        if value is ...:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def envelope(
    tenant: str,
    kind: str,
    data: dict[str, Any],
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> dict[str, Any]:
    return {
        "id": event_id or f"evt-{next(_seq)}-{uuid.uuid4().hex[:6]}",
        "type": kind,
        "tenant_id": tenant,
        "occurred_at": (occurred_at or datetime.now(UTC)).isoformat().replace("+00:00", "Z"),
        "data": data,
    }


def send(stack: Stack, body: dict[str, Any], expect: int = 202) -> requests.Response:
    answer = stack.crm.post(EVENTS_PATH, body)
    assert answer.status_code == expect, answer.text
    openapi_contract.check("POST", EVENTS_PATH, answer, body)
    return answer


def upsert(stack: Stack, owner: CrmUser, **overrides: Any) -> dict[str, Any]:
    body = envelope(owner.tenant, "activity.upserted", activity(owner, **overrides))
    send(stack, body)
    return body


def status(stack: Stack, who: CrmUser) -> dict[str, Any]:
    answer = stack.crm.get(user_path(who.tenant, who.user, "status"))
    assert answer.status_code == 200, answer.text
    openapi_contract.check("GET", "/api/tenants/{tenant}/users/{user}/status", answer)
    return answer.json()


def ours(stack: Stack, who: CrmUser) -> list[dict[str, Any]]:
    """The mailbox's events that carry our property (as the emulator stores them)."""
    return [
        e
        for e in stack.control.events(who.oid)
        if any(p["id"] == PROPERTY_ID for p in e["singleValueExtendedProperties"])
    ]


def utc(event: dict[str, Any]) -> tuple[str, str]:
    """The event's start and end instants as the emulator stores them, ``YYYY-MM-DDTHH:MM:SSZ``."""
    return tuple(re.sub(r"\.0+Z$", "Z", event[k]) for k in ("startUtc", "endUtc"))  # type: ignore[return-value]


def property_of(event: dict[str, Any]) -> str:
    return next(p["value"] for p in event["singleValueExtendedProperties"] if p["id"] == PROPERTY_ID)


def synced(
    stack: Stack, who: CrmUser, activity_id: str, version: int, timeout: float = 30.0
) -> dict[str, Any]:
    """Wait for the ``activity.synced`` callback of this version."""

    def found() -> dict[str, Any] | None:
        return next(
            (
                c
                for c in stack.callbacks.of_type("activity.synced")
                if c["tenant_id"] == who.tenant  # two tenants may share a user id (test_security)
                and c["user_id"] == who.user
                and c["data"]["activity_id"] == activity_id
                and c["data"]["version"] == version
            ),
            None,
        )

    return wait_until(found, timeout, f"activity.synced of {activity_id} v{version}")


def writes(stack: Stack, who: CrmUser, method: str) -> int:
    """Graph writes the emulator counted for this mailbox (``POST``, ``PATCH``, ``DELETE`` on events)."""
    counted = stack.control.counters(who.oid)["mailboxes"].get(who.oid, {}).get("requests", {})
    return sum(n for endpoint, n in counted.items() if endpoint.startswith(f"{method} /events"))


@pytest.fixture()
def stack(stack: Stack):
    """The whole stack; every callback the CRM received must follow the contract."""
    yield stack
    for callback in stack.callbacks.received:
        openapi_contract.check_callback(callback)
