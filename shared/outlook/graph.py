"""Microsoft Graph over HTTPS: one pooled ``requests`` session per process, every answer mapped into
the error tree at this edge (shared/rules/errors.py):

    2xx                      -> the parsed body
    404                      -> NotFoundError (a PermanentError callers often expect)
    429, 503 + Retry-After   -> ThrottledError(retry_after)
    408, 5xx, network errors -> TransientError
    401                      -> AuthError (the grant no longer works)
    other 4xx                -> PermanentError with Graph's error code and message

``$batch`` answers are mapped per inner response with the same rule (``error_for``).
Tokens are never logged; neither are request bodies. A full URL (``@odata.nextLink`` or
``@odata.deltaLink``) is followed only on the configured Graph origin (scheme, host and port of
``GRAPH_API_BASE``): a link anywhere else is a PermanentError and the token is never sent there.
"""

from __future__ import annotations

import email.utils
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from shared.ports import GraphResponse
from shared.rules.errors import AuthError, PermanentError, SyncError, ThrottledError, TransientError

DEFAULT_TIMEOUT = (5, 30)  # connect, read
BATCH_LIMIT = 20


class NotFoundError(PermanentError):
    """The item is not there (any more)."""


def retry_after_seconds(headers: dict[str, str], default: float) -> float:
    """Retry-After as seconds (Graph sends integers; HTTP also allows a date)."""
    value = next((v for k, v in headers.items() if k.lower() == "retry-after"), None)
    if value is None:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else default


def error_for(status: int, headers: dict[str, str], body: Any) -> SyncError | None:
    """The error a Graph answer stands for, or None when it succeeded."""
    if 200 <= status < 300:
        return None
    error = body.get("error", {}) if isinstance(body, dict) else {}
    code = error.get("code") if isinstance(error, dict) else None
    message = (error.get("message") if isinstance(error, dict) else None) or f"Graph answered {status}"
    if status == 404:
        return NotFoundError(message, code=code, status=status)
    if status == 429 or (status == 503 and any(k.lower() == "retry-after" for k in headers)):
        return ThrottledError(
            message, retry_after=retry_after_seconds(headers, 5.0), code=code, status=status
        )
    if status in (408, 500, 502, 503, 504, 509):
        return TransientError(message, code=code, status=status)
    if status == 401:
        return AuthError(message, code=code, status=status)
    return PermanentError(message, code=code, status=status)


class GraphClient:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")
        self._origin = _origin(self.base_url)
        self._session: Any = None
        self._lock = threading.Lock()

    @property
    def session(self):
        if self._session is None:
            with self._lock:
                if self._session is None:
                    import requests
                    from requests.adapters import HTTPAdapter

                    session = requests.Session()
                    session.mount("https://", HTTPAdapter(pool_connections=4, pool_maxsize=32, max_retries=0))
                    self._session = session
        return self._session

    def call(
        self,
        token: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> GraphResponse:
        """One request; ``path`` is relative to the v1.0 base, or a full nextLink/deltaLink URL."""
        import requests

        if "://" in path[:16]:
            if _origin(path) != self._origin:
                raise PermanentError(f"Graph {method}: a link off the Graph host was not followed", code="foreign_link")
            url = path
        else:
            url = f"{self.base_url}/{path.lstrip('/')}"
        sent = {"Authorization": f"Bearer {token}", "Accept": "application/json", **(headers or {})}
        try:
            answer = self.session.request(
                method, url, json=json, params=params, headers=sent, timeout=DEFAULT_TIMEOUT
            )
        except requests.RequestException as error:
            raise TransientError(f"Graph {method} {_safe(path)} failed: {type(error).__name__}") from None
        body = _json(answer)
        response = GraphResponse(answer.status_code, dict(answer.headers), body)
        problem = error_for(response.status, response.headers, body)
        if problem is not None:
            raise problem
        return response

    def batch(self, token: str, requests_: list[dict[str, Any]]) -> dict[str, GraphResponse]:
        """POST /$batch with at most 20 inner requests; returns each inner answer by its id."""
        if not 0 < len(requests_) <= BATCH_LIMIT:
            raise ValueError(f"a batch holds 1..{BATCH_LIMIT} requests, not {len(requests_)}")
        outer = self.call(token, "POST", "$batch", json={"requests": requests_})
        answers = {}
        for item in (outer.body or {}).get("responses", []):
            answers[str(item.get("id"))] = GraphResponse(
                int(item.get("status", 0)), dict(item.get("headers") or {}), item.get("body")
            )
        return answers


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else None)
    except ValueError:
        return ("", "", None)
    return (parts.scheme.lower(), (parts.hostname or "").lower(), port)


def _json(answer: Any) -> Any:
    if not answer.content:
        return None
    try:
        return answer.json()
    except ValueError:
        return None


def _safe(path: str) -> str:
    """A path for logs: without query strings, which may carry delta or skip tokens."""
    return path.split("?", 1)[0]
