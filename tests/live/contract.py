"""The CRM side of the contract, written from docs/openapi.yaml: v2 signatures with X-Request-Id,
a signed client, and a receiver that verifies callbacks with CRM_CALLBACK_SECRET."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, urlsplit

import requests

SIGNATURE_WINDOW = 300  # seconds, as the contract says
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{16,128}$")


def canonical(timestamp: int, method: str, path_and_query: str, request_id: str, body: bytes) -> bytes:
    """``"v2\\n<t>\\n<METHOD>\\n<path?query>\\n<X-Request-Id>\\n<hex SHA-256 of the raw body>"``."""
    digest = hashlib.sha256(body).hexdigest()
    return f"v2\n{timestamp}\n{method.upper()}\n{path_and_query}\n{request_id}\n{digest}".encode()


def sign(secret: str, timestamp: int, method: str, path_and_query: str, request_id: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), canonical(timestamp, method, path_and_query, request_id, body), "sha256")
    return f"t={timestamp},v2={mac.hexdigest()}"


def verify(secrets_: list[str], header: str, request_id: str, method: str, path_and_query: str,
           body: bytes, now: float | None = None) -> bool:
    """A callback's ``X-Signature``: fresh, and v2 made with one of the callback secrets."""
    if not _REQUEST_ID.match(request_id or ""):
        return False
    parts: dict[str, list[str]] = {}
    for item in (header or "").split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    if abs((now or time.time()) - timestamp) > SIGNATURE_WINDOW:
        return False
    for secret in secrets_:
        expected = sign(secret, timestamp, method, path_and_query, request_id, body).split("v2=")[1]
        if any(hmac.compare_digest(expected, given) for given in parts.get("v2", [])):
            return True
    return False


def user_path(tenant: str, user: str, action: str) -> str:
    return f"/api/tenants/{quote(tenant, safe='')}/users/{quote(user, safe='')}/{action}"


class SignedCrm:
    """What the CRM's backend sends: every request with a new X-Request-Id and a v2 signature."""

    def __init__(self, base_url: str, secret: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.secret = secret
        self.session = requests.Session()

    def call(self, method: str, path: str, body: Any = None) -> requests.Response:
        raw = b"" if body is None else json.dumps(body).encode()
        url = self.base_url + path
        parts = urlsplit(url)
        request_id = secrets.token_urlsafe(24)
        headers = {
            "X-Request-Id": request_id,
            "X-Signature": sign(self.secret, int(time.time()), method,
                                parts.path + (f"?{parts.query}" if parts.query else ""), request_id, raw),
        }
        if body is not None:
            headers["Content-Type"] = "application/json"
        return self.session.request(method, url, data=raw, headers=headers, timeout=60)


class CallbackReceiver:
    """Listens on ``host:port`` for the service's callbacks; keeps those whose signature verifies."""

    def __init__(self, listen: str, secrets_: list[str]) -> None:
        host, _, port = listen.rpartition(":")
        self.received: list[dict[str, Any]] = []
        self.rejected = 0
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                ok = verify(secrets_, self.headers.get("X-Signature", ""), self.headers.get("X-Request-Id", ""),
                            "POST", self.path, body)
                with receiver.cond:
                    if ok:
                        payload = json.loads(body)
                        if all(c.get("id") != payload.get("id") for c in receiver.received):  # at least once
                            receiver.received.append(payload)
                    else:
                        receiver.rejected += 1
                    receiver.cond.notify_all()
                self.send_response(200 if ok else 401)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)  # noqa: S104 - the tester's choice
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, predicate: Any, timeout: float) -> dict[str, Any] | None:
        """The first callback matching ``predicate`` (already received or arriving within ``timeout``)."""
        def found() -> dict[str, Any] | None:
            return next((c for c in self.received if predicate(c)), None)

        with self.cond:
            self.cond.wait_for(lambda: found() is not None, timeout=timeout)
            return found()

    def matching(self, predicate: Any) -> list[dict[str, Any]]:
        with self.cond:
            return [c for c in self.received if predicate(c)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
