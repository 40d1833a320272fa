"""Microsoft Graph's calls to us (unsigned): change and lifecycle notifications.

- A ``validationToken`` query parameter is Graph's subscription handshake: echo it exactly, as
  ``text/plain``, and do nothing else (it is never reflected as HTML). Graph's tokens are short
  opaque strings; one over ``MAX_VALIDATION_TOKEN`` characters is answered 400, not echoed.
- Bodies are capped (``MAX_GRAPH_BODY_BYTES``, 413) and so are the notifications of one body
  (``notifications.MAX_ITEMS``, 413), before anything is read from storage: see
  shared/flows/notifications.py for why a body costs a bounded number of storage reads.
- Otherwise each notification's ``clientState`` must match the one we gave its subscription; a
  mismatch is ignored (logged, no work) but still answered 202, as Graph expects.
- Matching notifications enqueue few ``mailbox-reconcile`` messages per user (coalesced within
  the request and, through a pending marker, across requests: shared/flows/notifications.py) and the
  answer is 202 straight away: Graph drops slow endpoints. If the work cannot be stored the
  answer is 5xx, so Graph delivers again.
"""

from __future__ import annotations

import azure.functions as func

bp = func.Blueprint()
MAX_VALIDATION_TOKEN = 1024
# Graph documents no maximum for a notification collection; a basic (no resource data) event
# notification is under 1 KB, and MAX_ITEMS of them fit well within this.
MAX_GRAPH_BODY_BYTES = 256 * 1024


def _handle(req: func.HttpRequest, kind: str) -> func.HttpResponse:
    token = req.params.get("validationToken")
    if token is not None:
        if len(token) > MAX_VALIDATION_TOKEN:
            return func.HttpResponse("validationToken is too long", status_code=400, mimetype="text/plain")
        return func.HttpResponse(
            token,
            status_code=200,
            mimetype="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"},
        )
    from shared import services
    from shared.flows import notifications

    body = req.get_body()
    if len(body) > MAX_GRAPH_BODY_BYTES:
        return func.HttpResponse(status_code=413)
    try:
        notifications.accept(services.get().storage, body, kind)
    except notifications.TooManyNotifications as error:
        return func.HttpResponse(str(error), status_code=413, mimetype="text/plain")
    except notifications.MalformedNotification as error:
        return func.HttpResponse(str(error), status_code=400, mimetype="text/plain")
    return func.HttpResponse(status_code=202)


@bp.route(route="graph/notifications", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def graph_notifications(req: func.HttpRequest) -> func.HttpResponse:
    return _handle(req, "change")


@bp.route(route="graph/lifecycle", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def graph_lifecycle(req: func.HttpRequest) -> func.HttpResponse:
    return _handle(req, "lifecycle")
