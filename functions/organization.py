"""Organisation mode (issue 19): the CRM's signed calls to connect and disconnect its organisation
and to enable users by mailbox, the admin's browser back from Microsoft's consent page (unsigned),
and the ``user-enable`` queue worker. Use cases: shared/flows/organization.py."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import azure.functions as func

from functions.auth import auth_response, page
from functions.http import json_response, problem, read_json, route_ids, signed
from functions.shards import queue_triggers
from shared.rules.queues import USER_ENABLE

bp = func.Blueprint()
log = logging.getLogger(__name__)
ORGANIZATION_ROUTE = "tenants/{tenant}/organization"


@bp.route(route=f"{ORGANIZATION_ROUTE}/connect", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@signed("The organisation connect cannot start")
def organization_connect(req: func.HttpRequest, deps: Any) -> func.HttpResponse:
    from shared.flows import organization

    (tenant,) = route_ids(req, "tenant")
    request = organization.parse_connect_request(read_json(req), deps.settings.crm_return_origins)
    return json_response(organization.begin(deps, tenant, request, datetime.now(UTC)))


@bp.route(route=f"{ORGANIZATION_ROUTE}/disconnect", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@signed("The organisation cannot be disconnected")
def organization_disconnect(req: func.HttpRequest, deps: Any) -> func.HttpResponse:
    from shared.flows import organization

    (tenant,) = route_ids(req, "tenant")
    choice = organization.parse_disconnect_request(read_json(req, optional=True))
    return json_response(organization.disconnect(deps, tenant, choice, datetime.now(UTC)), 202)


@bp.route(route=ORGANIZATION_ROUTE, methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@signed("The organisation's status is unavailable")
def organization_status(req: func.HttpRequest, deps: Any) -> func.HttpResponse:
    from shared.flows import organization

    (tenant,) = route_ids(req, "tenant")
    return json_response(organization.status(deps, tenant))


@bp.route(route="tenants/{tenant}/users/{user}/enable", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@signed("The user cannot be enabled")
def enable_user(req: func.HttpRequest, deps: Any) -> func.HttpResponse:
    from shared.flows import organization

    tenant, user = route_ids(req, "tenant", "user")
    request = organization.parse_enable_request(read_json(req))
    try:
        return json_response(organization.enable(deps, tenant, user, request), 202)
    except organization.OrganizationNotConnected:
        return problem(409, "organization_not_connected", "No organisation is connected for this tenant.")


@bp.route(route="auth/admin-callback", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def admin_callback(req: func.HttpRequest) -> func.HttpResponse:
    from shared import services
    from shared.flows import organization

    outcome = organization.complete(
        services.get(), auth_response(req), req.headers.get("Accept-Language"), datetime.now(UTC)
    )
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    if outcome.redirect_url:
        return func.HttpResponse(status_code=302, headers={**headers, "Location": outcome.redirect_url})
    return func.HttpResponse(
        page(outcome.page_key, outcome.locale, ok=outcome.status < 400),
        status_code=outcome.status,
        mimetype="text/html",
        charset="utf-8",
        headers={**headers, "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"},
    )


def enable_user_worker(msg: func.QueueMessage) -> None:
    from shared import services
    from shared.flows import organization

    outcome = organization.process(services.get(), msg.get_body(), datetime.now(UTC))
    log.info("user-enable message %s: %s", msg.id, outcome)


queue_triggers(bp, USER_ENABLE, "enable_user_worker", enable_user_worker)  # one per tenant shard
