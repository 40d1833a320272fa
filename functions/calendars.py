"""The CRM's calls about a user's calendar: list the calendars they can write to, switch to another
(the move of our events runs on the ``calendar-move`` queue). Use cases: shared/flows/calendar_move.py."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import azure.functions as func

from functions.http import json_response, problem, read_json, route_ids, signed
from functions.shards import queue_triggers
from shared.rules.queues import CALENDAR_MOVE

bp = func.Blueprint()
log = logging.getLogger(__name__)
USER_ROUTE = "tenants/{tenant}/users/{user}"


@bp.route(route=f"{USER_ROUTE}/calendars", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
@signed("The calendars cannot be listed")
def list_calendars(req: func.HttpRequest, deps: Any) -> func.HttpResponse:
    from shared.flows import calendar_move

    tenant, user = route_ids(req, "tenant", "user")
    try:
        return json_response(calendar_move.list_calendars(deps, tenant, user))
    except calendar_move.NotConnected:
        return problem(409, "not_connected", "The user is not connected to Outlook.")


@bp.route(route=f"{USER_ROUTE}/calendar", methods=["PUT"], auth_level=func.AuthLevel.ANONYMOUS)
@signed("The calendar cannot be changed")
def switch_calendar(req: func.HttpRequest, deps: Any) -> func.HttpResponse:
    from shared.flows import calendar_move
    from shared.flows.calendars import CalendarUnavailable

    tenant, user = route_ids(req, "tenant", "user")
    choice = calendar_move.parse_request(read_json(req))
    try:
        answer = calendar_move.switch(deps, tenant, user, choice, datetime.now(UTC))
    except calendar_move.NotConnected:
        return problem(409, "not_connected", "The user is not connected to Outlook.")
    except CalendarUnavailable as unavailable:
        return problem(409, unavailable.reason, "The chosen calendar does not exist or cannot be written to.")
    return json_response(answer, 202 if answer["move"] and answer["move"]["state"] == "moving" else 200)


def move_events(msg: func.QueueMessage) -> None:
    from shared import services
    from shared.flows import calendar_move

    outcome = calendar_move.process(services.get(), msg.get_body(), datetime.now(UTC))
    log.info("calendar-move message %s: %s", msg.id, outcome)


queue_triggers(bp, CALENDAR_MOVE, "move_events", move_events)  # one per tenant shard
