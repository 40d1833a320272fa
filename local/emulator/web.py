"""Tiny request/response types shared by the emulator's handlers (no framework)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qsl


class CaseInsensitiveDict(dict):
    def __init__(self, items=()) -> None:
        super().__init__()
        for k, v in dict(items).items():
            self[k] = v

    def __setitem__(self, key, value):
        super().__setitem__(key.lower(), value)

    def __getitem__(self, key):
        return super().__getitem__(key.lower())

    def get(self, key, default=None):
        return super().get(key.lower(), default)

    def __contains__(self, key):
        return super().__contains__(key.lower())


@dataclass
class Request:
    method: str
    path: str  # percent-decoded path, without query
    query: dict[str, str]
    headers: CaseInsensitiveDict
    body: bytes = b""
    raw_query: str = ""
    inner: bool = False  # an item of a $batch
    # filled by the pipeline
    token: object | None = None
    mailbox_id: str | None = None

    @classmethod
    def build(cls, method: str, path: str, raw_query: str, headers, body: bytes = b"", inner: bool = False):
        query = {}
        for k, v in parse_qsl(raw_query, keep_blank_values=True):
            query[k] = v
        return cls(method.upper(), path, query, CaseInsensitiveDict(headers), body, raw_query, inner)

    def json(self):
        if not self.body:
            return None
        return json.loads(self.body.decode("utf-8"))

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode("utf-8"), keep_blank_values=True))

    def prefer(self) -> dict[str, str]:
        """Parsed `Prefer` header: {'outlook.timezone': 'X', 'odata.maxpagesize': '5', ...}."""
        out: dict[str, str] = {}
        raw = self.headers.get("Prefer") or ""
        for part in _split_prefer(raw):
            if "=" in part:
                k, v = part.split("=", 1)
                out[k.strip().lower()] = v.strip().strip('"')
            elif part.strip():
                out[part.strip().lower()] = ""
        return out


def _split_prefer(raw: str) -> list[str]:
    parts, cur, quoted = [], [], False
    for ch in raw:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


@dataclass
class Response:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # fault injection: drop the connection instead of answering (after the handler ran)
    drop: bool = False

    @classmethod
    def json(cls, obj, status: int = 200, headers: dict | None = None) -> Response:
        h = {"Content-Type": "application/json; odata.metadata=minimal; odata.streaming=true; charset=utf-8"}
        h.update(headers or {})
        return cls(status, h, json.dumps(obj).encode("utf-8"))

    @classmethod
    def plain_json(cls, obj, status: int = 200, headers: dict | None = None) -> Response:
        h = {"Content-Type": "application/json; charset=utf-8"}
        h.update(headers or {})
        return cls(status, h, json.dumps(obj).encode("utf-8"))

    @classmethod
    def empty(cls, status: int = 204, headers: dict | None = None) -> Response:
        return cls(status, dict(headers or {}), b"")

    @classmethod
    def html(cls, text: str, status: int = 200) -> Response:
        return cls(status, {"Content-Type": "text/html; charset=utf-8"}, text.encode("utf-8"))

    @classmethod
    def redirect(cls, location: str) -> Response:
        return cls(302, {"Location": location, "Content-Type": "text/html; charset=utf-8"}, b"")

    def json_body(self):
        return json.loads(self.body) if self.body else None


def graph_error(status: int, code: str, message: str, headers: dict | None = None) -> Response:
    """The Graph error shape: {"error": {"code", "message", "innerError": {date, request-id, client-request-id}}}."""
    rid = str(uuid.uuid4())
    body = {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": rid,
                "client-request-id": rid,
            },
        }
    }
    h = {"request-id": rid}
    h.update(headers or {})
    return Response.json(body, status, h)


class HttpError(Exception):
    """Raised inside handlers; turned into a Graph error response."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def response(self) -> Response:
        return graph_error(self.status, self.code, self.message, self.headers)
