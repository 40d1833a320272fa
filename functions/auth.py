"""The browser's side of sign-in (unsigned): ``/api/auth/start`` (the start URL connect answers),
``/api/auth/callback`` (where Microsoft sends the browser back) and ``/api/auth/confirm`` (the
user's answer when an account other than the CRM's login_hint signed in).

The start URL sets the flow's cookie and redirects to Microsoft. We ask for
``response_mode=form_post``, so Microsoft's answer arrives as a cross-site form POST: a cookie
marked ``SameSite=Lax`` or ``Strict`` is not sent with it, so ours is ``SameSite=None``, which
browsers accept only with ``Secure``. Browsers treat loopback (``http://127.0.0.1``,
``http://localhost``) as secure, so the local dev host works over http; any other plain-http
address would lose the cookie and every sign-in would be refused as "another browser" (use
https there, as Azure does). ``__Host-`` pins the cookie to this host, path ``/``, no domain.

A GET with the callback's fields in its query is read too (the identity platform's default mode).
Never a 500: every outcome is a redirect to the CRM's return URL with ``calendar_sync=...`` or,
without one, a small page in the user's language."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from http.cookies import CookieError, SimpleCookie
from typing import Any

import azure.functions as func

bp = func.Blueprint()


MAX_FORM_BYTES = 64 * 1024  # a code, a state and a session state; far less in practice
MAX_FORM_FIELDS = 20


NO_STORE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"


@bp.route(route="auth/start", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def auth_start(req: func.HttpRequest) -> func.HttpResponse:
    from shared import services
    from shared.flows import connect as use_case

    ticket = req.params.get("ticket") or ""
    outcome = use_case.start_sign_in(services.get(), ticket, req.headers.get("Accept-Language"), datetime.now(UTC))
    if outcome.redirect_url and outcome.cookie_name and outcome.cookie_value:
        cookie = flow_cookie(outcome.cookie_name, outcome.cookie_value, outcome.cookie_max_age)
        return func.HttpResponse(
            status_code=302, headers={**NO_STORE, "Location": outcome.redirect_url, "Set-Cookie": cookie}
        )
    return html_response(page(outcome.page_key, outcome.locale, ok=False), outcome.status)


@bp.route(route="auth/callback", methods=["GET", "POST"], auth_level=func.AuthLevel.ANONYMOUS)
def auth_callback(req: func.HttpRequest) -> func.HttpResponse:
    from shared import services
    from shared.flows import connect as use_case

    params = auth_response(req)
    outcome = use_case.complete_connect(
        services.get(), params, req.headers.get("Accept-Language"), datetime.now(UTC), cookies_of(req)
    )
    return answer(outcome)


@bp.route(route="auth/confirm", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
def auth_confirm(req: func.HttpRequest) -> func.HttpResponse:
    from shared import services
    from shared.flows import connect as use_case

    outcome = use_case.confirm_account(
        services.get(), form_fields(req), cookies_of(req), req.headers.get("Accept-Language"), datetime.now(UTC)
    )
    return answer(outcome)


def answer(outcome: Any) -> func.HttpResponse:
    headers = dict(NO_STORE)
    if outcome.clear_cookie:
        headers["Set-Cookie"] = flow_cookie(outcome.clear_cookie, "", 0)
    if outcome.redirect_url:
        return func.HttpResponse(status_code=302, headers={**headers, "Location": outcome.redirect_url})
    if outcome.confirmation:
        return html_response(confirmation_page(outcome.confirmation, outcome.locale), 200, headers)
    return html_response(page(outcome.page_key, outcome.locale, ok=outcome.status < 400), outcome.status, headers)


def html_response(body: str, status: int, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        body,
        status_code=status,
        mimetype="text/html",
        charset="utf-8",
        headers={**NO_STORE, **(headers or {}), "Content-Security-Policy": PAGE_POLICY},
    )


def flow_cookie(name: str, value: str, max_age: int) -> str:
    """The flow's cookie: survives Microsoft's cross-site form POST (SameSite=None needs Secure)."""
    return f"{name}={value}; Max-Age={max_age}; Path=/; Secure; HttpOnly; SameSite=None"


def cookies_of(req: func.HttpRequest) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(req.headers.get("Cookie") or "")
    except CookieError:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


def form_fields(req: func.HttpRequest) -> dict[str, str]:
    from urllib.parse import parse_qsl

    body = req.get_body() or b""
    if len(body) > MAX_FORM_BYTES:
        return {}
    try:
        return dict(parse_qsl(body.decode("utf-8"), max_num_fields=MAX_FORM_FIELDS))
    except (UnicodeDecodeError, ValueError):
        return {}


def auth_response(req: func.HttpRequest) -> dict[str, str]:
    """The sign-in answer's fields; a malformed or oversized form reads as empty (no ``state``:
    the callback then answers 400 without touching any stored sign-in)."""
    if req.method != "POST":
        return {k: v for k, v in req.params.items() if isinstance(v, str)}
    return form_fields(req)


def page(key: str, locale: str, *, ok: bool) -> str:
    from shared.rules.messages import text

    title = text("connected_title" if ok else "error_title", locale)
    return (
        f'<!doctype html><html lang="{locale}"><meta charset="utf-8"><title>{html.escape(title)}</title>'
        '<body style="font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto">'
        f"<h1>{html.escape(title)}</h1><p>{html.escape(text(key, locale))}</p></body></html>"
    )


def confirmation_page(confirmation: dict[str, str], locale: str) -> str:
    """Another account than the CRM expected signed in: connect it, or cancel."""
    from shared.rules.messages import text

    title = text("confirm_account_title", locale)
    body = text("confirm_account_body", locale).format(
        account=confirmation["account"], expected=confirmation["expected"]
    )
    return (
        f'<!doctype html><html lang="{locale}"><meta charset="utf-8"><title>{html.escape(title)}</title>'
        '<body style="font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto">'
        f"<h1>{html.escape(title)}</h1><p>{html.escape(body)}</p>"
        '<form method="post" action="/api/auth/confirm">'
        f'<input type="hidden" name="confirmation" value="{html.escape(confirmation["id"])}">'
        f'<button type="submit" name="decision" value="connect">'
        f"{html.escape(text('confirm_account_yes', locale).format(account=confirmation['account']))}</button> "
        f'<button type="submit" name="decision" value="cancel">{html.escape(text("confirm_account_no", locale))}'
        "</button></form></body></html>"
    )
