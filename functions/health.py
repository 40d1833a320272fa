"""GET /api/health: is the service up, and can it reach its storage?"""

import json

import azure.functions as func

bp = func.Blueprint()


@bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest) -> func.HttpResponse:
    from shared import services

    checks = services.get().storage.check()
    healthy = all(state == "ok" for state in checks.values())
    body = {"status": "ok" if healthy else "degraded", "storage": checks}
    return func.HttpResponse(
        json.dumps(body), status_code=200 if healthy else 503, mimetype="application/json"
    )
