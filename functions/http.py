"""What every CRM-facing HTTP function does at its edge, in this order: refuse an oversized body
(413, before any HMAC is computed over it), verify the signature (401), refuse a replayed
``X-Request-Id`` (409, nothing changes), then read the JSON body, answer JSON, and turn bad input
into a clear 4xx that names what is wrong."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import azure.functions as func

MAX_BODY_BYTES = 1024 * 1024
_ID = re.compile(r"[^\x00-\x1f\x7f]{1,256}")


class Rejected(Exception):
    """Stop here and answer ``response``."""

    def __init__(self, response: func.HttpResponse) -> None:
        super().__init__(response.status_code)
        self.response = response


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body, ensure_ascii=False), status_code=status, mimetype="application/json", headers=headers
    )


def problem(
    status: int, error: str, message: str, fields: list[dict[str, str]] | None = None
) -> func.HttpResponse:
    body: dict[str, Any] = {"error": error, "message": message}
    if fields:
        body["fields"] = fields
    return json_response(body, status)


def path_and_query(req: func.HttpRequest) -> str:
    """The request target as the CRM signed it: path and query, exactly as sent."""
    parts = urlsplit(req.url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def check_size(req: func.HttpRequest) -> None:
    if len(req.get_body() or b"") > MAX_BODY_BYTES:
        raise Rejected(problem(413, "body_too_large", f"The body is over {MAX_BODY_BYTES} bytes."))


def authenticate(req: func.HttpRequest, secrets: tuple[str, ...]) -> tuple[str, int]:
    """Raise Rejected(401) unless the CRM signed this exact request within the last 300 s;
    return its request id and signed timestamp."""
    from shared.rules import crm_signature

    check_size(req)
    request_id = req.headers.get(crm_signature.REQUEST_ID_HEADER)
    try:
        signed_at = crm_signature.verify(
            secrets,
            req.headers.get(crm_signature.HEADER),
            req.method,
            path_and_query(req),
            req.get_body(),
            time.time(),
            request_id,
        )
    except crm_signature.SignatureError as error:
        raise Rejected(
            problem(
                401,
                "invalid_signature",
                f"X-Signature is {error.reason}: sign each request as the contract says.",
            )
        ) from None
    return str(request_id), signed_at


def refuse_replay(storage: Any, request_id: str, signed_at: int) -> None:
    """Raise Rejected(409) when this request id was used before (a replayed request)."""
    from shared.flows import replay

    if not replay.first_use(storage, request_id, signed_at):
        raise Rejected(
            problem(
                409,
                "replayed_request",
                "This X-Request-Id was already used: send a new request id (and signature) for every request.",
            )
        )


def read_json(req: func.HttpRequest, *, optional: bool = False) -> Any:
    check_size(req)
    body = req.get_body()
    if not body and optional:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Rejected(problem(400, "invalid_json", "The body is not valid UTF-8 JSON.")) from None


def route_ids(req: func.HttpRequest, *names: str) -> tuple[str, ...]:
    """Tenant and user ids from the path. An id may hold '/', sent as %2F (or %2f: the same id); it
    may not hold '%'. The host decodes route values except %2F (ASP.NET Core routing), so without
    that rule "a%2Fb" and "a%252Fb" would both arrive as "a%2Fb" and name one CRM user: a raw path
    with an encoded '%' (%25) is refused, as is any '%' left after decoding."""
    from urllib.parse import unquote

    routed = [req.route_params.get(name, "") for name in names]
    values = tuple(re.sub("%2[fF]", "/", value) for value in routed)
    # The raw segments that decode (as the host decodes) to each route value: one with %25 in it
    # spelled a '%' the host has already decoded, maybe into a %2F of its own.
    segments = urlsplit(req.url).path.split("/")
    spelled_percent = {
        value for value in routed for s in segments if "%25" in s.upper() and unquote(re.sub("%2[fF]", "%252F", s)) == value
    }
    bad = [
        name
        for name, raw, value in zip(names, routed, values, strict=True)
        if not _ID.fullmatch(value) or "%" in value or raw in spelled_percent
    ]
    if bad:
        fields = [
            {"field": name, "message": "must be 1 to 256 characters, no control characters and no '%'"}
            for name in bad
        ]
        raise Rejected(problem(400, "invalid_request", "Invalid ids in the path.", fields))
    return values


def validation_problem(error: Any) -> func.HttpResponse:
    """A shared.rules.contract.ValidationError as a 400 naming every bad field."""
    body = error.as_json()
    body["message"] = "Some fields are invalid: " + ", ".join(f["field"] for f in body["fields"]) + "."
    return json_response(body, 400)


def signed(
    unavailable: str,
) -> Callable[[Callable[..., func.HttpResponse]], Callable[..., func.HttpResponse]]:
    """Decorate one of the CRM's signed endpoints, written as ``handler(req, deps)``: the signature
    is verified first, then ``Rejected``, a ``ValidationError`` and any ``SyncError`` become their
    answers (the handler's, 400 naming the fields, 503 "``unavailable`` right now")."""

    def decorate(handler: Callable[..., func.HttpResponse]) -> Callable[..., func.HttpResponse]:
        # Not functools.wraps: the Functions worker binds parameters by the visible signature.
        def endpoint(req: func.HttpRequest) -> func.HttpResponse:
            from shared import services
            from shared.rules.contract import ValidationError
            from shared.rules.errors import SyncError

            deps = services.get()
            try:
                request_id, signed_at = authenticate(req, deps.settings.crm_shared_secrets)
                refuse_replay(deps.storage, request_id, signed_at)
                return handler(req, deps)
            except Rejected as rejected:
                return rejected.response
            except ValidationError as error:
                return validation_problem(error)
            except SyncError as error:
                return problem(503, "unavailable", f"{unavailable} right now: {error.message}")

        endpoint.__name__ = handler.__name__
        endpoint.__qualname__ = handler.__qualname__
        endpoint.__doc__ = handler.__doc__
        return endpoint

    return decorate
