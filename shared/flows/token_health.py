"""Keep every grant alive: a refresh token idle for 90 days expires (AADSTS700082), so any user
whose tokens were last refreshed over 30 days ago is refreshed now. A grant that no longer works
moves the user to ``reauth_required`` (shared/flows/reauth.py) before they notice missing events."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from shared.flows.reauth import require_reauth
from shared.ports import Services
from shared.rules.calendars import ORGANIZATION
from shared.rules.errors import AuthError, SyncError
from shared.store import connections, tables
from shared.store.token_crypto import UndecryptableError

log = logging.getLogger(__name__)
IDLE_LIMIT = timedelta(days=30)


def refresh_idle_grants(services: Services, now: datetime | None = None) -> dict[str, int]:
    now = now or datetime.now(UTC)
    tally = {"checked": 0, "refreshed": 0, "reauth_required": 0, "failed": 0}
    for connection in connections.list_connected(services.storage):
        if connection.state != connections.CONNECTED or connection.mode == ORGANIZATION:
            continue  # an app-only user has no grant of its own to keep alive
        tally["checked"] += 1
        refreshed_at = services.identity.refreshed_at(connection.tenant, connection.user)
        if refreshed_at is not None and now - tables.aware(refreshed_at) < IDLE_LIMIT:
            continue
        try:
            services.identity.access_token(connection.tenant, connection.user, force_refresh=True)
            tally["refreshed"] += 1
        except (AuthError, UndecryptableError) as error:
            require_reauth(services, connection.tenant, connection.user, error.message)
            tally["reauth_required"] += 1
        except SyncError as error:
            log.warning("Token refresh will be tried again next run: %s", error.message)
            tally["failed"] += 1
    return tally
