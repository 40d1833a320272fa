"""The CRM's per-tenant sync settings: signed ``GET`` and ``PUT /api/tenants/{tenant}/settings``.

The use case is shared/flows/tenant_settings.py; a bad document is a 400 naming each field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import azure.functions as func

from functions.http import json_response, read_json, route_ids, signed

bp = func.Blueprint()


@bp.route(route="tenants/{tenant}/settings", methods=["GET", "PUT"], auth_level=func.AuthLevel.ANONYMOUS)
@signed("The settings are unavailable")
def tenant_settings(req: func.HttpRequest, deps: Any) -> func.HttpResponse:
    from shared.flows import tenant_settings as use_case

    (tenant,) = route_ids(req, "tenant")
    if req.method == "PUT":
        return json_response(use_case.replace(deps, tenant, read_json(req), datetime.now(UTC)))
    return json_response(use_case.read(deps, tenant))
