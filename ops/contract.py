"""Calls to the service through the CRM's signed contract (v2 signature, a new X-Request-Id)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from shared.rules import crm_signature


def user_path(tenant: str, user: str, action: str) -> str:
    return f"/api/tenants/{quote(tenant, safe='')}/users/{quote(user, safe='')}/{action}"


def signed(service_url: str, secret: str, method: str, path: str, body: Any = None) -> requests.Response:
    data = b"" if body is None else json.dumps(body).encode()
    url = service_url.rstrip("/") + path
    target = urlsplit(url)
    signed_path = target.path + (f"?{target.query}" if target.query else "")
    request_id = uuid.uuid4().hex
    headers = {
        crm_signature.HEADER: crm_signature.sign(secret, method, signed_path, data, time.time(), request_id),
        crm_signature.REQUEST_ID_HEADER: request_id,
        "Content-Type": "application/json",
    }
    return requests.request(method, url, data=data, headers=headers, timeout=60)


def release_held(service_url: str, secret: str, tenant: str, user: str) -> requests.Response:
    """The user meant those Outlook deletions: one reconcile pass with the guard off (202)."""
    return signed(
        service_url, secret, "POST", user_path(tenant, user, "reconcile"), {"confirm_deletions": True}
    )


def status(service_url: str, secret: str, tenant: str, user: str) -> requests.Response:
    return signed(service_url, secret, "GET", user_path(tenant, user, "status"))
