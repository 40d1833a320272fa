"""Queue triggers on ``mailbox-reconcile`` (one per tenant shard): read a user's Outlook changes through delta and tell the
CRM about reschedules and deletions of our events; act on subscription lifecycle events.

The rules live in ``shared.flows.reconcile``; it re-queues work that must wait (throttling, a busy
mailbox lease, transient failures) itself, so only unreadable messages or bugs reach the poison
queue."""

from __future__ import annotations

import logging
from typing import Any

import azure.functions as func

from functions.http import json_response, problem, read_json, route_ids, signed
from functions.shards import queue_triggers
from shared.rules.queues import MAILBOX_RECONCILE

bp = func.Blueprint()
log = logging.getLogger(__name__)


def reconcile_mailbox(msg: func.QueueMessage) -> None:
    from datetime import UTC, datetime

    from shared import services
    from shared.flows import calendars, reconcile

    calendars.before_reconcile(services.get(), msg.get_body(), datetime.now(UTC))  # a deleted dedicated calendar
    outcome = reconcile.process(services.get(), msg.get_body(), message_id=msg.id)
    log.info("mailbox-reconcile message %s: %s", msg.id, outcome)


queue_triggers(bp, MAILBOX_RECONCILE, "reconcile_mailbox", reconcile_mailbox)  # one per tenant shard


@bp.route(
    route="tenants/{tenant}/users/{user}/reconcile", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS
)
@signed("The reconcile could not be queued")
def request_reconcile(req: func.HttpRequest, deps: Any) -> func.HttpResponse:
    """Signed CRM call: reconcile now; ``{"confirm_deletions": true}`` releases deletions held by
    the mass-deletion guard (the user confirmed they meant to delete those events)."""
    from shared.flows import reconcile

    tenant, user = route_ids(req, "tenant", "user")
    body = read_json(req, optional=True)
    confirm = (body or {}).get("confirm_deletions", False) if isinstance(body, dict | None) else None
    if not isinstance(confirm, bool):
        fields = [{"field": "confirm_deletions", "message": "must be true or false"}]
        return problem(400, "invalid_request", "Some fields are invalid: confirm_deletions.", fields)
    reconcile.request(deps, tenant, user, confirm_deletions=confirm)
    return json_response({"status": "queued", "confirm_deletions": confirm}, 202)
