"""The CRM's calls about a user's connection: connect, disconnect ("Remove sync") and status.

Each is signed (functions/http.py); the use cases live in shared/flows/connect.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import azure.functions as func

from functions.http import json_response, problem, read_json, route_ids, signed

bp = func.Blueprint()
USER_ROUTE = "tenants/{tenant}/users/{user}"


@bp.route(route=f"{USER_ROUTE}/connect", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@signed("Sign-in cannot start")
def connect(req: func.HttpRequest, deps: Any) -> func.HttpResponse:
    from shared.flows import connect as use_case

    tenant, user = route_ids(req, "tenant", "user")
    request = use_case.parse_connect_request(read_json(req), deps.settings.crm_return_origins)
    try:
        return json_response(use_case.begin_connect(deps, tenant, user, request, datetime.now(UTC)))
    except use_case.RemovalRunning:
        from shared.rules.messages import text

        return problem(409, "removal_in_progress", text("removal_in_progress", request.locale))


@bp.route(route=f"{USER_ROUTE}/disconnect", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@signed("The sync could not be removed")
def disconnect(req: func.HttpRequest, deps: Any) -> func.HttpResponse:
    from shared.flows import connect as use_case

    tenant, user = route_ids(req, "tenant", "user")
    choice = use_case.parse_disconnect_request(read_json(req, optional=True))
    return json_response(use_case.disconnect(deps, tenant, user, choice, datetime.now(UTC)))


@bp.route(route=f"{USER_ROUTE}/status", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@signed("Status is unavailable")
def status(req: func.HttpRequest, deps: Any) -> func.HttpResponse:
    from shared.flows import connect as use_case

    tenant, user = route_ids(req, "tenant", "user")
    return json_response(use_case.status(deps, tenant, user))
