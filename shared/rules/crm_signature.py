"""Signing of CRM <-> service HTTP calls (design §3), both directions.

Headers::

    X-Request-Id: <16 to 128 characters of A-Z a-z 0-9 _ ->   (new for every request, never reused)
    X-Signature:  t=<unix seconds>,v2=<hex HMAC-SHA256(secret, canonical)>

    canonical = "v2\\n<t>\\n<METHOD>\\n<path?query>\\n<X-Request-Id>\\n<hex SHA-256 of the raw body>"

``path_and_query`` is the request target exactly as sent (not URL-decoded), the body the raw bytes.
Every part is newline-separated and none can hold a newline (a request target cannot; the
request id and the digests are from fixed alphabets), so two different requests never share a
canonical string. The receiver remembers each request id for the signature's validity window and
refuses a second use (``functions/http.py``), so a captured request cannot be replayed.

The service signs its callbacks the same way with a *different* secret (``CRM_CALLBACK_SECRET``):
whoever verifies callbacks cannot sign a request. Several secrets may be configured during a
rotation: any one verifies. A sender may repeat ``v2`` (one per secret); any match is enough.

The older ``v1`` scheme (``"<t>.<METHOD>.<path?query>.<raw body>"``, ambiguous: a signature for path
``P`` with body ``.X`` also held for path ``P.`` with body ``X``) is no longer accepted: a header with
only ``v1`` is malformed. Anything odd in the headers is just a bad signature: ``verify`` raises
``SignatureError`` and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

HEADER = "X-Signature"
REQUEST_ID_HEADER = "X-Request-Id"
TOLERANCE_SECONDS = 300
_MAX_HEADER = 2048
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{16,128}")


class SignatureError(Exception):
    """Missing, malformed, stale or wrong signature; ``reason`` is safe to log, never the secret."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Secret = str | bytes


def _key(secret: Secret) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def canonical(timestamp: int, method: str, path_and_query: str, request_id: str, body: bytes) -> bytes:
    """The exact bytes signed (``v2``)."""
    digest = hashlib.sha256(body).hexdigest()
    return f"v2\n{timestamp}\n{method.upper()}\n{path_and_query}\n{request_id}\n{digest}".encode()


def _digest(secret: Secret, timestamp: int, method: str, path_and_query: str, request_id: str,
            body: bytes) -> str:
    message = canonical(timestamp, method, path_and_query, request_id, body)
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def sign(secret: Secret, method: str, path_and_query: str, body: bytes, now: float, request_id: str) -> str:
    """The ``X-Signature`` header value for a request sent at ``now`` (unix seconds) that carries
    ``X-Request-Id: request_id``."""
    if not secret:
        raise ValueError("empty signing secret")
    if not REQUEST_ID.fullmatch(request_id):
        raise ValueError("a request id is 16 to 128 characters of A-Z a-z 0-9 _ -")
    timestamp = int(now)
    return f"t={timestamp},v2={_digest(secret, timestamp, method, path_and_query, request_id, body)}"


def _parse(header: str) -> tuple[int, list[str]]:
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureError("malformed")
        if key == "t":
            if timestamp is not None or not value.isascii() or not value.isdigit() or len(value) > 12:
                raise SignatureError("malformed")
            timestamp = int(value)
        elif key == "v2":
            if not _HEX64.fullmatch(value):
                raise SignatureError("malformed")
            signatures.append(value.lower())
    if timestamp is None or not signatures:
        raise SignatureError("malformed")
    return timestamp, signatures


def verify(secrets: Secret | Iterable[Secret], header: str | None, method: str, path_and_query: str,
           body: bytes, now: float, request_id: str | None, tolerance: int = TOLERANCE_SECONDS) -> int:
    """Return the signed timestamp if ``header`` signs this request (with its ``request_id``) with
    one of ``secrets`` within ``tolerance`` seconds; raise ``SignatureError`` otherwise."""
    keys = [secrets] if isinstance(secrets, str | bytes) else list(secrets)
    keys = [k for k in keys if k]
    if not keys:
        raise ValueError("no verification secret configured")
    if not isinstance(header, str) or not header:
        raise SignatureError("missing")
    if not isinstance(request_id, str) or not request_id:
        raise SignatureError("missing its X-Request-Id")
    if len(header) > _MAX_HEADER or not REQUEST_ID.fullmatch(request_id):
        raise SignatureError("malformed")
    timestamp, signatures = _parse(header)
    if timestamp < now - tolerance:
        raise SignatureError("stale")
    if timestamp > now + tolerance:
        raise SignatureError("future")
    matched = False
    for key in keys:
        expected = _digest(key, timestamp, method, path_and_query, request_id, body).encode()
        for given in signatures:
            matched |= hmac.compare_digest(expected, given.encode())
    if not matched:
        raise SignatureError("mismatch")
    return timestamp
