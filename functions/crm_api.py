"""The CRM's calls about a user's connection: connect, disconnect ("Remove sync") and status.

Each is signed (functions/http.py); the use cases live in shared/connect.py."""

from __future__ import annotations

from datetime import UTC, datetime

import azure.functions as func

from functions.http import (
    Rejected,
    authenticate,
    json_response,
    problem,
    read_json,
    route_ids,
    validation_problem,
)

bp = func.Blueprint()
USER_ROUTE = "tenants/{tenant}/users/{user}"


@bp.route(route=f"{USER_ROUTE}/connect", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def connect(req: func.HttpRequest) -> func.HttpResponse:
    from shared import connect as use_case
    from shared import services
    from shared.contract import ValidationError
    from shared.errors import SyncError

    deps = services.get()
    try:
        authenticate(req, deps.settings.crm_shared_secrets)
        tenant, user = route_ids(req, "tenant", "user")
        request = use_case.parse_connect_request(read_json(req), deps.settings.crm_return_origins)
        return json_response(use_case.begin_connect(deps, tenant, user, request, datetime.now(UTC)))
    except Rejected as rejected:
        return rejected.response
    except ValidationError as error:
        return validation_problem(error)
    except SyncError as error:
        return problem(503, "unavailable", f"Sign-in cannot start right now: {error.message}", None)


@bp.route(route=f"{USER_ROUTE}/disconnect", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def disconnect(req: func.HttpRequest) -> func.HttpResponse:
    from shared import connect as use_case
    from shared import services
    from shared.contract import ValidationError
    from shared.errors import SyncError

    deps = services.get()
    try:
        authenticate(req, deps.settings.crm_shared_secrets)
        tenant, user = route_ids(req, "tenant", "user")
        choice = use_case.parse_disconnect_request(read_json(req, optional=True))
        return json_response(use_case.disconnect(deps, tenant, user, choice, datetime.now(UTC)))
    except Rejected as rejected:
        return rejected.response
    except ValidationError as error:
        return validation_problem(error)
    except SyncError as error:
        return problem(503, "unavailable", f"The sync could not be removed right now: {error.message}", None)


@bp.route(route=f"{USER_ROUTE}/status", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def status(req: func.HttpRequest) -> func.HttpResponse:
    from shared import connect as use_case
    from shared import services
    from shared.errors import SyncError

    deps = services.get()
    try:
        authenticate(req, deps.settings.crm_shared_secrets)
        tenant, user = route_ids(req, "tenant", "user")
        return json_response(use_case.status(deps, tenant, user))
    except Rejected as rejected:
        return rejected.response
    except SyncError as error:
        return problem(503, "unavailable", f"Status is unavailable right now: {error.message}", None)
