"""GET /api/auth/callback: where Microsoft sends the browser back after sign-in (unsigned).

Never a 500: every outcome is a redirect to the CRM's return URL with ``calendar_sync=...`` or,
without one, a small page in the user's language."""

from __future__ import annotations

import html
from datetime import UTC, datetime

import azure.functions as func

bp = func.Blueprint()


@bp.route(route="auth/callback", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def auth_callback(req: func.HttpRequest) -> func.HttpResponse:
    from shared import connect as use_case
    from shared import services

    params = {k: v for k, v in req.params.items() if isinstance(v, str)}
    outcome = use_case.complete_connect(
        services.get(), params, req.headers.get("Accept-Language"), datetime.now(UTC)
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


def page(key: str, locale: str, *, ok: bool) -> str:
    from shared.messages import text

    title = text("connected_title" if ok else "error_title", locale)
    return (
        f'<!doctype html><html lang="{locale}"><meta charset="utf-8"><title>{html.escape(title)}</title>'
        '<body style="font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto">'
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text(key, locale))}</p></body></html>"
    )
