"""``POST /api/crm/events``: the CRM's signed change feed (design §3).

Signature (401, nothing changes), size (413) and schema (400 naming every bad field) are checked
here; then ``shared.flows.activity_queue.accept`` records the event id once and queues the work: 202 either way,
with ``status`` ``accepted`` or ``duplicate``. No Graph call is made while the CRM waits."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import azure.functions as func

from functions.http import json_response, read_json, signed

bp = func.Blueprint()


@bp.route(route="crm/events", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@signed("The event could not be queued")
def crm_events(req: func.HttpRequest, deps: Any) -> func.HttpResponse:
    from shared.flows import activity_queue
    from shared.rules.contract import parse_crm_event

    raw = read_json(req)
    event = parse_crm_event(raw)
    outcome = activity_queue.accept(deps.storage, raw, event, datetime.now(UTC))
    return json_response({"id": event.id, "status": outcome}, 202)
