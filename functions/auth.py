"""/api/auth/callback: where Microsoft sends the browser back after sign-in (unsigned).

We ask for ``response_mode=form_post``, so the answer arrives as a form POST; a GET with the same
fields in its query is read too (the identity platform's default mode). Never a 500: every outcome
is a redirect to the CRM's return URL with ``calendar_sync=...`` or, without one, a small page in
the user's language."""

from __future__ import annotations

import html
from datetime import UTC, datetime

import azure.functions as func

bp = func.Blueprint()


MAX_FORM_BYTES = 64 * 1024  # a code, a state and a session state; far less in practice
MAX_FORM_FIELDS = 20


@bp.route(route="auth/callback", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def auth_callback(req: func.HttpRequest) -> func.HttpResponse:
    from shared import services
    from shared.flows import connect as use_case

    params = auth_response(req)
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


def auth_response(req: func.HttpRequest) -> dict[str, str]:
    """The sign-in answer's fields; a malformed or oversized form reads as empty (no ``state``:
    the callback then answers 400 without touching any stored sign-in)."""
    if req.method != "POST":
        return {k: v for k, v in req.params.items() if isinstance(v, str)}
    from urllib.parse import parse_qsl

    body = req.get_body() or b""
    if len(body) > MAX_FORM_BYTES:
        return {}
    try:
        return dict(parse_qsl(body.decode("utf-8"), max_num_fields=MAX_FORM_FIELDS))
    except (UnicodeDecodeError, ValueError):
        return {}


def page(key: str, locale: str, *, ok: bool) -> str:
    from shared.rules.messages import text

    title = text("connected_title" if ok else "error_title", locale)
    return (
        f'<!doctype html><html lang="{locale}"><meta charset="utf-8"><title>{html.escape(title)}</title>'
        '<body style="font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto">'
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text(key, locale))}</p></body></html>"
    )
