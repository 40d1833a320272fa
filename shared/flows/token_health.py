"""Keep every grant alive: a refresh token idle for 90 days expires (AADSTS700082), so any user
whose tokens were last refreshed over 30 days ago is refreshed. A grant that no longer works
moves the user to ``reauth_required`` (shared/flows/reauth.py) before they notice missing events.

The daily timer only reads, page by page, the ``Tokens`` rows refreshed before the cutoff (their keys
and ``refreshed_at``, nothing else) and fans those users out to the maintenance workers
(shared/flows/maintenance.py), which refresh one user at a time with retries through the queue."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from shared.ports import Services
from shared.rules.calendars import ORGANIZATION
from shared.store import connections, paging, tables

log = logging.getLogger(__name__)
IDLE_LIMIT = timedelta(days=30)
TOKEN = "token"  # noqa: S105 - the mailbox-maintenance kind, not a secret


def refresh_idle_grants(services: Services, now: datetime | None = None) -> dict[str, int]:
    """Timer: fan out every user whose token cache was last refreshed over ``IDLE_LIMIT`` ago."""
    from shared.flows.fanout import FanOut

    now = now or datetime.now(UTC)
    fan = FanOut(services, TOKEN, now)
    checked = 0
    for page in paging.pages(
        services.storage.table(tables.TOKENS),
        "refreshed_at lt @cutoff",
        {"cutoff": now - IDLE_LIMIT},
        ["PartitionKey", "RowKey"],
        what="listing idle grants",
    ):
        checked += len(page.rows)
        fan.send_all(
            (tables.unkey(row["PartitionKey"])[0], tables.unkey(row["RowKey"])[0]) for row in page.rows
        )
    return {"idle": checked, "messages": fan.messages}


def refresh_user(services: Services, tenant: str, user: str, now: datetime) -> str:
    """Worker: refresh one user's grant if they are connected and it is still idle. Raises an
    ``AuthError`` / ``UndecryptableError`` when the grant is gone (the caller moves the user to
    ``reauth_required``) and transient errors for a retry through the queue."""
    connection = connections.get(services.storage, tenant, user)
    if connection.state != connections.CONNECTED or connection.mode == ORGANIZATION:
        return "skipped"  # an app-only user has no grant of its own to keep alive
    refreshed_at = services.identity.refreshed_at(tenant, user)
    if refreshed_at is not None and now - tables.aware(refreshed_at) < IDLE_LIMIT:
        return "fresh"
    services.identity.access_token(tenant, user, force_refresh=True)
    return "refreshed"
