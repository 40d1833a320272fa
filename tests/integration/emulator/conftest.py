"""Fixtures for the emulator's own tests: one emulator per session, reset before each test."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import msal
import pytest
import requests

REDIRECT_URI = "http://localhost:7071/api/auth/callback"
SCOPES = ["Calendars.ReadWrite", "User.Read", "MailboxSettings.Read"]


@pytest.fixture(scope="session")
def emu(emulator):
    """The session's one emulator (tests/conftest.py), which also points REQUESTS_CA_BUNDLE and
    CURL_CA_BUNDLE at its CA: a second emulator would leave one of the two CAs untrusted."""
    return emulator


@pytest.fixture
def ctl(emu):
    emu.control.reset()
    return emu.control


@pytest.fixture
def app(ctl):
    return ctl.add_app(
        client_id="11111111-2222-3333-4444-555555555555",
        client_secret="s3cret",
        redirect_uris=[REDIRECT_URI],
        display_name="CRM sync",
    )


@pytest.fixture
def user(ctl):
    return ctl.add_user(
        "ana@contoso.example", display_name="Ana Pérez", time_zone="Romance Standard Time", locale="es-ES"
    )


def msal_app(emu, app, tenant="common", cache=None):
    return msal.ConfidentialClientApplication(
        app["client_id"],
        client_credential=app["client_secret"],
        authority=f"{emu.authority_host}/{tenant}",
        instance_discovery=False,
        verify=emu.ca_path,
        token_cache=cache,
    )


def browser_sign_in(emu, auth_uri: str) -> dict:
    """Follow the authorize redirect like a browser would (auto-consent) and return the auth response."""
    resp = requests.get(auth_uri, verify=emu.ca_path, allow_redirects=False, timeout=10)
    assert resp.status_code == 302, resp.text
    return {k: v[0] for k, v in parse_qs(urlsplit(resp.headers["Location"]).query).items()}


def sign_in(emu, app, user, scopes=SCOPES, cache=None):
    """Full MSAL auth-code flow; returns (msal app, result)."""
    client = msal_app(emu, app, cache=cache)
    flow = client.initiate_auth_code_flow(scopes, redirect_uri=REDIRECT_URI, login_hint=user["upn"])
    result = client.acquire_token_by_auth_code_flow(flow, browser_sign_in(emu, flow["auth_uri"]))
    assert "access_token" in result, result
    return client, result


def raw_token(
    emu,
    app,
    user,
    scopes=("Calendars.ReadWrite", "User.Read", "MailboxSettings.Read", "offline_access", "openid"),
) -> dict:
    """Auth-code + PKCE by hand (faster than MSAL for tests that only need a token)."""
    verifier = secrets.token_urlsafe(32)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    params = {
        "client_id": app["client_id"],
        "response_type": "code",
        "redirect_uri": REDIRECT_URI,
        "scope": " ".join(scopes),
        "state": "st",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "login_hint": user["upn"],
    }
    resp = requests.get(
        f"{emu.authority_host}/common/oauth2/v2.0/authorize",
        params=params,
        verify=emu.ca_path,
        allow_redirects=False,
        timeout=10,
    )
    code = parse_qs(urlsplit(resp.headers["Location"]).query)["code"][0]
    tok = requests.post(
        f"{emu.authority_host}/common/oauth2/v2.0/token",
        verify=emu.ca_path,
        timeout=10,
        data={
            "client_id": app["client_id"],
            "client_secret": app["client_secret"],
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
            "scope": " ".join(scopes),
        },
    )
    assert tok.status_code == 200, tok.text
    return tok.json()


class Graph:
    """A requests session pointed at the emulator's Graph base with a bearer token."""

    def __init__(self, emu, token: str) -> None:
        self.base = emu.graph_base
        self.s = requests.Session()
        self.s.verify = emu.ca_path
        self.s.headers["Authorization"] = f"Bearer {token}"

    def __call__(self, method: str, path: str, **kw) -> requests.Response:
        url = path if path.startswith("https://") else self.base + path
        kw.setdefault("timeout", 15)
        return self.s.request(method, url, **kw)


@pytest.fixture
def graph(emu, app, user):
    return Graph(emu, raw_token(emu, app, user)["access_token"])


def event_body(subject="Demo", start="2030-03-04T10:00:00", end="2030-03-04T11:00:00", tz="UTC", **extra):
    return {
        "subject": subject,
        "start": {"dateTime": start, "timeZone": tz},
        "end": {"dateTime": end, "timeZone": tz},
        **extra,
    }


class Receiver:
    """A tiny webhook receiver on 127.0.0.1 (plain http) that records what Graph posts.

    validation: "echo" | "wrong" | "500" | "block" ; notify_statuses: statuses to answer in turn (then 202);
    block_notifications: hold notification answers until `release` is set."""

    def __init__(self) -> None:
        self.validation = "echo"
        self.notify_statuses: list[int] = []
        self.block_notifications = False
        self.release = threading.Event()
        self.received: list[dict] = []
        self.cond = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802 - stdlib name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                query = parse_qs(urlsplit(self.path).query)
                if "validationToken" in query:
                    token = query["validationToken"][0]
                    with receiver.cond:
                        receiver.received.append({"kind": "validation", "token": token, "path": self.path})
                        receiver.cond.notify_all()
                    mode = receiver.validation
                    if mode == "block":
                        receiver.release.wait(15)
                    if mode == "500":
                        return self._answer(500, b"no", "text/plain")
                    text = token if mode in ("echo", "block") else token.upper() + "x"
                    return self._answer(200, text.encode(), "text/plain; charset=utf-8")
                payload = json.loads(body or b"{}")
                with receiver.cond:
                    receiver.received.append({"kind": "notification", "payload": payload, "path": self.path})
                    receiver.cond.notify_all()
                    status = receiver.notify_statuses.pop(0) if receiver.notify_statuses else 202
                if receiver.block_notifications:
                    receiver.release.wait(15)
                return self._answer(status, b"", "text/plain")

            def _answer(self, status, body, ctype):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/api/graph/notifications"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, predicate, timeout: float = 10.0):
        with self.cond:
            ok = self.cond.wait_for(lambda: predicate(self.received), timeout=timeout)
        assert ok, f"receiver condition not met; received: {self.received}"
        return self.received

    def notifications(self) -> list[dict]:
        return [item for r in self.received if r["kind"] == "notification" for item in r["payload"]["value"]]

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()
