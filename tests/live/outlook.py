"""The salesperson's side: a delegated token from MSAL's device-code flow (the tester signs in once;
the token cache is kept encrypted), and public Graph v1.0 calls made with it."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msal
import requests
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SCOPES = ["Calendars.ReadWrite", "MailboxSettings.Read", "User.Read"]


class EncryptedCache:
    """MSAL's serializable cache in ``<dir>/token-cache-<hash>.bin``, Fernet-encrypted (AES-128-CBC +
    HMAC-SHA256) with a key derived (HKDF-SHA256) from a secret the tester supplies each run
    (``LIVE_CACHE_PASSPHRASE``, else the CRM shared secret): the file alone signs nobody in."""

    def __init__(self, directory: Path, identity: str, passphrase: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"token-cache-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.bin"
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=identity.encode(),
                   info=b"crm-outlook-sync live check token cache").derive(passphrase.encode())
        self.fernet = Fernet(base64.urlsafe_b64encode(key))
        self.cache = msal.SerializableTokenCache()
        if self.path.exists():
            try:
                self.cache.deserialize(self.fernet.decrypt(self.path.read_bytes()).decode())
            except InvalidToken:  # another passphrase: sign in again
                pass

    def save(self) -> None:
        if self.cache.has_state_changed:
            data = self.fernet.encrypt(self.cache.serialize().encode())
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)


class SignIn:
    """A public client registration (``LIVE_CLIENT_ID``, "Allow public client flows" on)."""

    def __init__(self, client_id: str, authority: str, upn: str, cache: EncryptedCache,
                 prompt: Callable[[str], None]) -> None:
        self.upn = upn
        self.cache = cache
        self.prompt = prompt
        self.app = msal.PublicClientApplication(client_id, authority=authority, token_cache=cache.cache,
                                                instance_discovery=not _is_loopback(authority))

    def token(self, timeout: float) -> str:
        """Silently from the cache when the tester signed in before; else the device-code flow."""
        accounts = self.app.get_accounts(username=self.upn)
        if accounts:
            result = self.app.acquire_token_silent_with_error(SCOPES, accounts[0])
            if result and "access_token" in result:
                self.cache.save()
                return str(result["access_token"])
        flow = self.app.initiate_device_flow(scopes=SCOPES)
        if "user_code" not in flow:
            raise RuntimeError(f"the identity platform refused the device-code sign-in: {flow.get('error_description')}")
        self.prompt(f"open {flow['verification_uri']} and enter the code {flow['user_code']} "
                    f"(sign in as {self.upn})")
        flow["expires_at"] = min(flow["expires_at"], time.time() + timeout)
        # MSAL polls every `interval` s, retrying on authorization_pending and backing off on slow_down.
        result = self.app.acquire_token_by_device_flow(flow)
        if "access_token" not in result:
            raise RuntimeError(f"device-code sign-in did not finish: {result.get('error')} "
                               f"{result.get('error_description', '')[:200]}")
        signed_in = (result.get("id_token_claims") or {}).get("preferred_username", "")
        if signed_in.lower() != self.upn.lower():
            raise RuntimeError(f"signed in as {signed_in!r}, not the test user {self.upn!r}")
        self.cache.save()
        return str(result["access_token"])


def _is_loopback(url: str) -> bool:
    return url.startswith(("https://127.0.0.1", "https://localhost", "https://[::1]"))


class Graph:
    """Public Graph v1.0 as the test user (``/me``), answers in UTC; 429/503 wait for Retry-After."""

    def __init__(self, base: str, token: Callable[[], str]) -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.session = requests.Session()

    def call(self, method: str, path: str, **kw: Any) -> requests.Response:
        url = path if path.startswith("https://") else self.base + path
        headers = {"Authorization": f"Bearer {self.token()}", "Prefer": 'outlook.timezone="UTC"',
                   **kw.pop("headers", {})}
        for _ in range(6):
            answer = self.session.request(method, url, headers=headers, timeout=60, **kw)
            if answer.status_code not in (429, 503, 504):
                return answer
            time.sleep(min(float(answer.headers.get("Retry-After") or 5), 60))  # Graph asks us to wait
        return answer

    def ok(self, method: str, path: str, **kw: Any) -> Any:
        answer = self.call(method, path, **kw)
        if answer.status_code >= 400:
            raise RuntimeError(f"Graph {method} {path} answered {answer.status_code}: {answer.text[:300]}")
        return answer.json() if answer.content else None

    def pages(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        page = self.ok("GET", path, params=params)
        while True:
            yield from page.get("value", [])
            if not page.get("@odata.nextLink"):
                return
            page = self.ok("GET", page["@odata.nextLink"])

    def events(self) -> Iterator[dict[str, Any]]:
        """Every event of the user's default calendar, where the service writes."""
        return self.pages("/me/events", **{"$select": "id,subject,start,end,changeKey,isAllDay", "$top": "50"})

    def calendar_view(self, start: str, end: str) -> list[dict[str, Any]]:
        return list(self.pages("/me/calendarView", startDateTime=start, endDateTime=end, **{"$top": "100"}))
