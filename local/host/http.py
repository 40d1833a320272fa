"""HTTP triggers as the Functions host serves them: routes under the route prefix with route
parameters (case-insensitive, ``{name}``, ``{name?}``, ``{name:constraint}``, ``{*rest}``; values
percent-decoded except ``%2F``, as ASP.NET Core leaves it), allowed
methods, and ``HttpRequest``/``HttpResponse``. A path no function serves, or a method a function
does not allow, gets an empty 404, as the host answers both. Auth levels are not enforced, as Core
Tools does not enforce them locally. ``POST /admin/functions/{name}`` runs a non-HTTP function now;
``GET /admin/host/idle`` reports whether the host has nothing left to do (see ``DevHost.idle``)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import azure.functions as func
from werkzeug.wrappers import Request, Response

from local.host.functions import BUSY, FunctionSpec, invoke

log = logging.getLogger("host")


@dataclass(frozen=True)
class Route:
    spec: FunctionSpec
    pattern: re.Pattern[str]
    methods: frozenset[str] | None  # None: every method

    def match(self, path: str) -> dict[str, str] | None:
        found = self.pattern.fullmatch(path)
        if found is None:
            return None
        return {name: _decode(value) for name, value in found.groupdict().items() if value is not None}


def _decode(value: str) -> str:
    """Route values are percent-decoded, except ``%2F``, which ASP.NET Core routing leaves encoded."""
    return unquote(re.sub("%2[fF]", "%252F", value))


def compile_route(template: str, prefix: str) -> re.Pattern[str]:
    """Turn an ASP.NET-style route template into a regex over the whole path."""
    parts = [p for p in f"{prefix}/{template}".split("/") if p]
    regex = ""
    for part in parts:
        param = re.fullmatch(r"\{(\*)?([A-Za-z_][A-Za-z0-9_]*)(?::[^}?]+)?(\?)?\}", part)
        if param is None:
            regex += "/" + re.escape(part)
        elif param.group(1):  # catch-all
            regex += f"(?:/(?P<{param.group(2)}>.*))?"
        elif param.group(3):  # optional
            regex += f"(?:/(?P<{param.group(2)}>[^/]+))?"
        else:
            regex += f"/(?P<{param.group(2)}>[^/]+)"
    return re.compile(regex or "/", re.IGNORECASE)


def build_routes(specs: list[FunctionSpec], prefix: str) -> list[Route]:
    routes = []
    for spec in specs:
        if spec.trigger_type != "httpTrigger":
            continue
        methods = spec.trigger.get("methods")
        allowed = frozenset(str(getattr(m, "value", m)).upper() for m in methods) if methods else None
        template = spec.trigger.get("route") or spec.name
        routes.append(Route(spec, compile_route(template, prefix), allowed))
    # Literal segments win over parameters, as in ASP.NET routing: try the more literal routes first.
    routes.sort(key=lambda r: r.pattern.pattern.count("(?P<"))
    return routes


class WsgiApp:
    def __init__(
        self,
        routes: list[Route],
        run_now: Callable[[str, str], bool],
        idle: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.routes = routes
        self.run_now = run_now  # admin: start a non-HTTP function; False when there is none by that name
        self.idle = idle  # admin: the idle report

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        response = self.dispatch(request)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        admin = re.fullmatch(r"/admin/functions/([^/]+)", request.path, re.IGNORECASE)
        if admin and request.method == "POST":
            return self.admin(admin.group(1), request)
        if request.path.lower() == "/admin/host/idle" and request.method == "GET" and self.idle:
            return self.idle_report()
        raw_path = (request.environ.get("RAW_URI") or request.path).split("?", 1)[0]
        for route in self.routes:
            params = route.match(raw_path)
            if params is None or (route.methods is not None and request.method not in route.methods):
                continue
            return self.call(route, request, params)
        return Response(status=404)

    def admin(self, name: str, request: Request) -> Response:
        try:
            payload = json.loads(request.get_data() or b"{}")
        except ValueError:
            return Response('Body must be JSON like {"input": "..."}.', status=400)
        if not isinstance(payload, dict):
            return Response("Body must be a JSON object.", status=400)
        started = self.run_now(name, str(payload.get("input", "")))
        return Response(status=202 if started else 404)

    def idle_report(self) -> Response:
        try:
            report = self.idle()  # type: ignore[misc]
        except Exception as error:  # noqa: BLE001 - storage unreachable: not idle, and say why
            report = {"idle": False, "error": f"{type(error).__name__}: {error}"}
        return Response(json.dumps(report), status=200, mimetype="application/json")

    def call(self, route: Route, request: Request, params: dict[str, str]) -> Response:
        # The URL exactly as sent (RAW_URI keeps percent-encoding, which signatures cover).
        raw_target = request.environ.get("RAW_URI") or request.full_path
        http_request = func.HttpRequest(
            method=request.method,
            url=request.host_url.rstrip("/") + raw_target,
            headers=dict(request.headers),
            params=dict(request.args),
            route_params=params,
            body=request.get_data(),
        )
        from local.host.queues import send_outputs

        with BUSY.working():  # until the output bindings are sent: the idle report waits for them
            try:
                result, outputs = invoke(route.spec, http_request)
            except Exception:  # noqa: BLE001 - one failing invocation must never stop the host
                return Response(status=500)
            send_outputs(outputs)
        return to_werkzeug(result)


def to_werkzeug(result: Any) -> Response:
    if result is None:
        return Response(status=204)
    if isinstance(result, str | bytes):
        return Response(result, status=200)
    response = Response(result.get_body(), status=result.status_code)
    headers = list(result.headers.items())
    for name, value in headers:
        response.headers[name] = value
    if "content-type" not in {name.lower() for name, _ in headers}:
        mimetype = result.mimetype or "text/plain"
        response.headers["Content-Type"] = f"{mimetype}; charset={result.charset or 'utf-8'}"
    return response
