"""When a user's grant stops working: move them to ``reauth_required`` and tell the CRM, once.

Every path that gets an AuthError from identity (a push, a reconcile, the token health timer)
calls ``require_reauth``; only the call that actually changes the state sends the callback, so a
burst of failing messages yields one ``connection.reauth_required``."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime

from shared.flows import callbacks
from shared.ports import Services
from shared.rules.calendars import ORGANIZATION
from shared.rules.errors import OrganizationConsentRequired
from shared.store import connections
from shared.store.connections import CONNECTED, REAUTH_REQUIRED

log = logging.getLogger(__name__)


def require_reauth(services: Services, tenant: str, user: str, reason: str) -> bool:
    """Returns True when this call moved the user to reauth_required."""
    moved = False

    def change(current: connections.Connection) -> connections.Connection:
        nonlocal moved
        moved = current.state == CONNECTED
        if not moved:
            return current
        return replace(current, state=REAUTH_REQUIRED).with_error(
            "auth", f"Sign in with Outlook again: {reason}"
        )

    current = connections.get(services.storage, tenant, user)
    if current.state != CONNECTED:
        return False
    if (current.mode == ORGANIZATION) != (reason == OrganizationConsentRequired.CODE):
        # A failure of the other kind of grant than the user has now: a worker that started before the
        # user moved between sign-in and organisation mode (issue 19). The user's current grant is fine.
        log.info("A %s failure for a user now in %s mode is stale; ignored", reason, current.mode)
        return False
    if current.mode == ORGANIZATION:
        # App-only tokens are the organisation's: when they fail, they fail for all its users.
        from shared.flows.organization import consent_lost

        return consent_lost(services, tenant, reason) > 0
    connections.update(services.storage, tenant, user, change)
    if moved:
        log.warning("connection.reauth_required: a user's Microsoft grant stopped working (%s)", reason)
        callbacks.enqueue(
            services.storage,
            callbacks.REAUTH_REQUIRED,
            tenant,
            user,
            {
                "reason": reason,
                "at": connections.iso(datetime.now(UTC)),
            },
        )
    return moved
