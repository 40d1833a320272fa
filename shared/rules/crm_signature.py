"""Signing of CRM <-> service HTTP calls (design §3), both directions.

``X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<METHOD>.<path?query>.<raw body>")>``

``path_and_query`` is the request target exactly as sent (not URL-decoded), the body the raw bytes.
Several secrets may be configured during a rotation: any one verifies. A sender may repeat ``v1``
(one per secret); any match is enough. Unknown keys (a future ``v2``) are ignored. Anything odd in
the header is just a bad signature: ``verify`` raises ``SignatureError`` and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

HEADER = "X-Signature"
TOLERANCE_SECONDS = 300
_MAX_HEADER = 2048
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


class SignatureError(Exception):
    """Missing, malformed, stale or wrong signature; ``reason`` is safe to log, never the secret."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


Secret = str | bytes


def _key(secret: Secret) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else secret


def _digest(secret: Secret, timestamp: int, method: str, path_and_query: str, body: bytes) -> str:
    message = f"{timestamp}.{method.upper()}.{path_and_query}.".encode() + body
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def sign(secret: Secret, method: str, path_and_query: str, body: bytes, now: float) -> str:
    """The ``X-Signature`` header value for a request sent at ``now`` (unix seconds)."""
    if not secret:
        raise ValueError("empty signing secret")
    timestamp = int(now)
    return f"t={timestamp},v1={_digest(secret, timestamp, method, path_and_query, body)}"


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
        elif key == "v1":
            if not _HEX64.fullmatch(value):
                raise SignatureError("malformed")
            signatures.append(value.lower())
    if timestamp is None or not signatures:
        raise SignatureError("malformed")
    return timestamp, signatures


def verify(secrets: Secret | Iterable[Secret], header: str | None, method: str, path_and_query: str,
           body: bytes, now: float, tolerance: int = TOLERANCE_SECONDS) -> None:
    """Return if ``header`` signs this request with one of ``secrets`` within ``tolerance`` seconds."""
    keys = [secrets] if isinstance(secrets, str | bytes) else list(secrets)
    keys = [k for k in keys if k]
    if not keys:
        raise ValueError("no verification secret configured")
    if not isinstance(header, str) or not header:
        raise SignatureError("missing")
    if len(header) > _MAX_HEADER:
        raise SignatureError("malformed")
    timestamp, signatures = _parse(header)
    if timestamp < now - tolerance:
        raise SignatureError("stale")
    if timestamp > now + tolerance:
        raise SignatureError("future")
    matched = False
    for key in keys:
        expected = _digest(key, timestamp, method, path_and_query, body).encode()
        for given in signatures:
            matched |= hmac.compare_digest(expected, given.encode())
    if not matched:
        raise SignatureError("mismatch")
