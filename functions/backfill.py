"""Backfill ("Sync"): the CRM's signed page endpoint and the ``activity-backfill`` queue worker.

The rules live in ``shared.flows.backfill`` (pages, dry run, window) and ``shared.flows.backfill_worker``
(one ``$batch`` per message of up to 20 activities)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import azure.functions as func

from functions.http import json_response, problem, read_json, route_ids, signed
from functions.shards import queue_triggers
from shared.rules.queues import ACTIVITY_BACKFILL

bp = func.Blueprint()
log = logging.getLogger(__name__)
USER_ROUTE = "tenants/{tenant}/users/{user}"


@bp.route(route=f"{USER_ROUTE}/backfill", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
@signed("The page could not be taken")
def backfill(req: func.HttpRequest, deps: Any) -> func.HttpResponse:
    from shared.flows import backfill as use_case

    tenant, user = route_ids(req, "tenant", "user")
    request = use_case.parse_request(read_json(req), user)
    now = datetime.now(UTC)
    try:
        if request.dry_run:
            return json_response(use_case.dry_run(deps, tenant, user, request, now))
        return json_response(use_case.accept_page(deps, tenant, user, request, now), 202)
    except use_case.NotConnected as error:
        return problem(409, "not_connected", f"Backfill needs a connected user: {error.message}.")
    except use_case.JobClosed as error:
        return problem(409, "job_closed", f"This job is closed: {error.message}.")


def backfill_chunk(msg: func.QueueMessage) -> None:
    from shared import services
    from shared.flows import backfill_worker

    outcome = backfill_worker.process(services.get(), msg.get_body())
    log.info("activity-backfill message %s: %s", msg.id, outcome)


queue_triggers(bp, ACTIVITY_BACKFILL, "backfill_chunk", backfill_chunk)  # one per tenant shard
