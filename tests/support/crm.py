"""The CRM's side in tests: a client that signs its calls to the service (``CRM_SHARED_SECRET``, a
new ``X-Request-Id`` per call), and a receiver that checks the signature of every callback the
service sends (``CRM_CALLBACK_SECRET``) and keeps them for assertions."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import requests

from shared.rules import crm_signature


class SignedClient:
    def __init__(self, base_url: str, secret: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.secret = secret
        self.session = requests.Session()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        signature: str | None = None,
        timestamp: float | None = None,
        request_id: str | None = None,
    ) -> requests.Response:
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        target = urlsplit(self.base_url + path)
        signed_path = target.path + (f"?{target.query}" if target.query else "")
        request_id = request_id or uuid.uuid4().hex
        header = signature or crm_signature.sign(
            self.secret, method, signed_path, data, timestamp or time.time(), request_id
        )
        headers = {
            crm_signature.HEADER: header,
            crm_signature.REQUEST_ID_HEADER: request_id,
            "Content-Type": "application/json",
        }
        return self.session.request(
            method, self.base_url + path, data=data, headers=headers, timeout=60, allow_redirects=False
        )

    def post(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, body, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)


class CallbackReceiver:
    """Listens on loopback; ``received`` holds every callback whose signature verified."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.received: list[dict[str, Any]] = []
        self.rejected = 0
        self.status = 200  # what to answer; tests may make the CRM fail
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    crm_signature.verify(
                        [receiver.secret],
                        self.headers.get(crm_signature.HEADER),
                        "POST",
                        self.path,
                        body,
                        time.time(),
                        self.headers.get(crm_signature.REQUEST_ID_HEADER),
                    )
                except crm_signature.SignatureError:
                    receiver.rejected += 1
                    self.send_response(401)
                else:
                    status = receiver.status
                    if status < 300:
                        with receiver._changed:
                            receiver.received.append(json.loads(body))
                            receiver._changed.notify_all()
                    self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/crm/callbacks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [c for c in self.received if c["type"] == kind]

    def wait_for(self, kind: str, count: int = 1, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.of_type(kind)) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out waiting for {count} {kind} callback(s); got {self.received}"
                    )
                self._changed.wait(left)
            return self.of_type(kind)

    def close(self) -> None:
        self.server.shutdown()
