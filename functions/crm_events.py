"""``POST /api/crm/events``: the CRM's signed change feed (design §3).

Signature (401, nothing changes), size (413) and schema (400 naming every bad field) are checked
here; then ``shared.push.accept`` records the event id once and queues the work: 202 either way,
with ``status`` ``accepted`` or ``duplicate``. No Graph call is made while the CRM waits."""

from __future__ import annotations

from datetime import UTC, datetime

import azure.functions as func

from functions.http import Rejected, authenticate, json_response, problem, read_json, validation_problem

bp = func.Blueprint()


@bp.route(route="crm/events", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def crm_events(req: func.HttpRequest) -> func.HttpResponse:
    from shared import push, services
    from shared.contract import ValidationError, parse_crm_event
    from shared.errors import SyncError

    deps = services.get()
    try:
        authenticate(req, deps.settings.crm_shared_secrets)
        raw = read_json(req)
        event = parse_crm_event(raw)
        outcome = push.accept(deps.storage, raw, event, datetime.now(UTC))
    except Rejected as rejected:
        return rejected.response
    except ValidationError as error:
        return validation_problem(error)
    except SyncError as error:
        return problem(503, "unavailable", f"The event could not be queued right now: {error.message}")
    return json_response({"id": event.id, "status": outcome}, 202)
