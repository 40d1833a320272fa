"""Python client for the emulator's control API (used by this project's integration and e2e tests).

    from local.emulator.control import EmulatorControl
    ctl = EmulatorControl("https://127.0.0.1:PORT/_control", ca_path)
    ctl.reset()
    app = ctl.add_app(redirect_uris=["http://localhost:7071/api/auth/callback"])
    user = ctl.add_user("ana@contoso.example", time_zone="Romance Standard Time")
"""

from __future__ import annotations

from datetime import UTC, datetime

import requests


class ControlError(RuntimeError):
    def __init__(self, status: int, body) -> None:
        super().__init__(f"control API answered {status}: {body}")
        self.status = status
        self.body = body


class EmulatorControl:
    def __init__(self, control_url: str, ca_path: str | None = None, timeout: float = 30.0) -> None:
        self.url = control_url.rstrip("/")
        self.session = requests.Session()
        self.session.trust_env = False  # never let REQUESTS_CA_BUNDLE / proxies redirect the control channel
        self.session.verify = ca_path if ca_path else True
        self.timeout = timeout

    def close(self) -> None:
        self.session.close()

    def _call(self, method: str, path: str, json=None, params=None, timeout: float | None = None):
        resp = self.session.request(method, self.url + path, json=json, params=params,
                                    timeout=timeout or self.timeout)
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = resp.text
            raise ControlError(resp.status_code, body)
        return resp.json() if resp.content else None

    # --- state ----------------------------------------------------------------------------------------------
    def reset(self) -> None:
        self._call("POST", "/reset")

    def state(self) -> dict:
        return self._call("GET", "/state")

    def add_app(self, client_id: str | None = None, client_secret: str | None = None,
                redirect_uris: list[str] | None = None, display_name: str | None = None,
                tenant_id: str | None = None, public_client: bool | None = None,
                application_permissions: list[str] | None = None) -> dict:
        """``public_client=True``: "Allow public client flows" (device code without a secret).
        ``application_permissions``: the app roles an admin consent grants (default ``Calendars.ReadWrite``,
        ``MailboxSettings.Read``)."""
        body = {"client_id": client_id, "client_secret": client_secret, "redirect_uris": redirect_uris or [],
                "display_name": display_name, "tenant_id": tenant_id, "public_client": public_client,
                "application_permissions": application_permissions}
        return self._call("POST", "/apps", {k: v for k, v in body.items() if v is not None})

    def add_app_certificate(self, client_id: str, certificate_pem: str) -> dict:
        """Register a public certificate on the app: {"thumbprint_sha1", "thumbprint_sha256"} (upper-case hex)."""
        return self._call("POST", f"/apps/{client_id}/certificates", {"certificate_pem": certificate_pem})

    # --- admin consent (service principals) and mailbox scope ------------------------------------------------
    def admin_consents(self) -> list[dict]:
        """[{tenant_id, client_id, roles, granted_at, service_principal_id}] of every admin consent in force."""
        return self._call("GET", "/admin-consents")["value"]

    def grant_admin_consent(self, tenant_id: str, client_id: str, roles: list[str] | None = None) -> dict:
        """Record an admin consent without the browser (roles default to the app's application permissions)."""
        body = {"tenant_id": tenant_id, "client_id": client_id, "roles": roles}
        return self._call("POST", "/admin-consents", {k: v for k, v in body.items() if v is not None})

    def revoke_admin_consent(self, tenant_id: str, client_id: str) -> None:
        """The admin deletes the app's enterprise application (service principal) in the tenant."""
        self._call("DELETE", f"/admin-consents/{tenant_id}/{client_id}")

    def set_app_scope(self, tenant_id: str, client_id: str, mailboxes: list[str] | None) -> dict:
        """Exchange RBAC for Applications: mailboxes (UPNs or ids) app-only tokens may reach; None = all."""
        return self._call("PUT", f"/app-scopes/{tenant_id}/{client_id}", {"mailboxes": mailboxes})

    def add_user(self, upn: str, display_name: str | None = None, time_zone: str = "UTC", id: str | None = None,
                 tenant_id: str | None = None, consent: str = "accept", locale: str = "en-US",
                 account_kind: str | None = None, is_admin: bool = False) -> dict:
        """``account_kind``: ``work`` (default; Teams meetings allowed) or ``personal`` (no online meetings).
        ``is_admin``: the user may grant tenant-wide admin consent (adminconsent endpoint)."""
        body = {"upn": upn, "display_name": display_name, "time_zone": time_zone, "id": id,
                "tenant_id": tenant_id, "consent": consent, "locale": locale, "account_kind": account_kind,
                "is_admin": is_admin or None}
        return self._call("POST", "/users", {k: v for k, v in body.items() if v is not None})

    def update_user(self, user: str, **changes) -> dict:
        return self._call("PATCH", f"/users/{user}", changes)

    def set_time_zone(self, user: str, time_zone: str) -> dict:
        return self._call("PUT", f"/users/{user}/time-zone", {"time_zone": time_zone})

    def set_identity(self, **settings) -> dict:
        """consent_mode ('auto' | 'interactive'), next_user, default_user, access_token_lifetime,
        refresh_token_inactivity_days."""
        return self._call("POST", "/identity", settings)

    def settings(self) -> dict:
        return self._call("GET", "/settings")

    def update_settings(self, **settings) -> dict:
        return self._call("PATCH", "/settings", settings)

    # --- throttling and faults ------------------------------------------------------------------------------
    def set_throttling(self, limit: int | None = None, window_seconds: float | None = None,
                       concurrency: int | None = None, concurrency_scope: str | None = None,
                       concurrency_retry_after: int | None = None) -> dict:
        body = {"limit": limit, "window_seconds": window_seconds, "concurrency": concurrency,
                "concurrency_scope": concurrency_scope, "concurrency_retry_after": concurrency_retry_after}
        return self._call("PUT", "/throttling", {k: v for k, v in body.items() if v is not None})

    def add_fault(self, kind: str, **rule) -> dict:
        """kind: '503', '500', '429', 'drop', 'latency', 'lost_response', 'hold'. Options: count, probability,
        seed, retry_after, latency_ms, method, path_contains, mailbox, area ('graph'|'identity'|'any'), inner,
        duration_seconds (the rule ends by itself that long after it is added, on the emulator clock:
        ``outage``)."""
        return self._call("POST", "/faults", {"kind": kind, **rule})["value"][0]

    def outage(self, seconds: float, retry_after: float = 5) -> dict:
        """Graph goes down for ``seconds``: every request, ``$batch`` items included, answers 503
        ``serviceNotAvailable`` with ``Retry-After`` (before any other fault rule is tried); then it
        is back by itself."""
        rule = {"kind": "503", "retry_after": retry_after, "duration_seconds": seconds}
        return self._call("POST", "/faults", {"rules": [rule], "first": True})["value"][0]

    def faults(self) -> list[dict]:
        return self._call("GET", "/faults")["value"]

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def release_holds(self) -> int:
        return self._call("POST", "/holds/release")["released"]

    def wait_inflight(self, mailbox: str, at_least: int, timeout: float = 10.0) -> dict:
        return self._call("GET", "/inflight", params={"mailbox": mailbox, "at_least": at_least,
                                                       "timeout": timeout}, timeout=timeout + 10)

    # --- mailbox --------------------------------------------------------------------------------------------
    def events(self, user: str, include_deleted: bool = False) -> list[dict]:
        params = {"include_deleted": "1"} if include_deleted else None
        return self._call("GET", f"/users/{user}/events", params=params)["value"]

    def user_create_event(self, user: str, event: dict, calendar_id: str | None = None, by_app: bool = False) -> dict:
        """``by_app``: another app (a booking tool) created it through Graph; its ``transactionId`` is kept."""
        body = {"event": event, "calendar_id": calendar_id, **({"by_app": True} if by_app else {})}
        return self._call("POST", f"/users/{user}/events", body)

    def user_update_event(self, user: str, event_id: str, changes: dict | None = None,
                          calendar_id: str | None = None) -> dict:
        return self._call("PATCH", f"/users/{user}/events/{event_id}", {"event": changes or {},
                                                                        "calendar_id": calendar_id})

    def user_move_event(self, user: str, event_id: str, start: dict, end: dict) -> dict:
        return self.user_update_event(user, event_id, {"start": start, "end": end})

    def user_delete_event(self, user: str, event_id: str) -> None:
        self._call("DELETE", f"/users/{user}/events/{event_id}")

    def user_cancel_event(self, user: str, event_id: str) -> None:
        """The user cancels a meeting they organise (as Graph's `POST /events/{id}/cancel`: it leaves the calendar)."""
        self._call("POST", f"/users/{user}/events/{event_id}/cancel", {})

    def organizer_cancel_event(self, user: str, event_id: str, subject_prefix: str = "Canceled: ") -> dict:
        """The external organizer cancels a meeting the user was invited to: the user's copy stays, isCancelled."""
        return self._call("POST", f"/users/{user}/events/{event_id}/organizer-cancel",
                          {"subject_prefix": subject_prefix})

    def calendars(self, user: str) -> list[dict]:
        """The user's calendars: id, name, is_default, color, hex_color and ext (extended properties)."""
        return self._call("GET", f"/users/{user}/calendars")["value"]

    def user_create_calendar(self, user: str, name: str, **fields) -> dict:
        return self._call("POST", f"/users/{user}/calendars", {"name": name, **fields})

    def user_update_calendar(self, user: str, calendar_id: str, **changes) -> dict:
        return self._call("PATCH", f"/users/{user}/calendars/{calendar_id}", changes)

    def user_delete_calendar(self, user: str, calendar_id: str) -> None:
        """The user deletes a calendar in Outlook, with its events."""
        self._call("DELETE", f"/users/{user}/calendars/{calendar_id}")

    def expire_refresh_tokens(self, user: str, client_id: str | None = None) -> int:
        body = {"client_id": client_id} if client_id else {}
        return self._call("POST", f"/users/{user}/refresh-tokens/expire", body)["expired"]

    def invalidate_delta_tokens(self, user: str) -> None:
        self._call("POST", f"/users/{user}/delta/invalidate")

    # --- subscriptions --------------------------------------------------------------------------------------
    def subscriptions(self, mailbox: str | None = None) -> list[dict]:
        return self._call("GET", "/subscriptions", params={"mailbox": mailbox} if mailbox else None)["value"]

    def send_lifecycle(self, subscription_id: str, event: str) -> None:
        self._call("POST", f"/subscriptions/{subscription_id}/lifecycle", {"event": event})

    def deliveries(self, after: int = 0, at_least: int = 0, timeout: float = 0.0, mailbox: str | None = None,
                   subscription: str | None = None, kind: str | None = None, outcome: str | None = None) -> dict:
        """{"value": [...], "last_seq": n}; long-polls until `at_least` matching deliveries exist or timeout."""
        params = {"after": after, "at_least": at_least, "timeout": timeout, "mailbox": mailbox,
                  "subscription": subscription, "kind": kind, "outcome": outcome}
        return self._call("GET", "/deliveries", params={k: v for k, v in params.items() if v is not None},
                          timeout=timeout + 10)

    def set_notifications(self, **settings) -> dict:
        """paused, drop_next, drop_probability, validation_timeout, delivery_timeout, retry_seconds,
        retry_window."""
        return self._call("PATCH", "/notifications", settings)

    # --- counters and clock ---------------------------------------------------------------------------------
    def counters(self, mailbox: str | None = None) -> dict:
        return self._call("GET", "/counters", params={"mailbox": mailbox} if mailbox else None)

    def reset_counters(self) -> None:
        self._call("DELETE", "/counters")

    def clock(self) -> datetime:
        return datetime.fromtimestamp(self._call("GET", "/clock")["timestamp"], UTC)

    def clock_timestamp(self) -> float:
        return self._call("GET", "/clock")["timestamp"]

    def advance_clock(self, seconds: float = 0, minutes: float = 0, hours: float = 0, days: float = 0) -> float:
        return self._call("POST", "/clock/advance", {"seconds": seconds, "minutes": minutes, "hours": hours,
                                                     "days": days})["timestamp"]


def register_local_app(ready: dict, secrets: dict[str, str], redirect_uri: str,
                       demo_user: str | None = "ana@contoso.example",
                       time_zone: str = "Romance Standard Time") -> dict[str, str | None]:
    """Register the local app (MS_CLIENT_ID / MS_CLIENT_SECRET from `secrets`, generated when missing) with
    a running emulator described by its ready line, add a demo user, and return the settings the dev host
    needs: {"authority_host", "graph_api_base", "ca_bundle"}."""
    import secrets as _secrets
    import uuid

    secrets.setdefault("MS_CLIENT_ID", str(uuid.uuid4()))
    secrets.setdefault("MS_CLIENT_SECRET", _secrets.token_urlsafe(32))
    ctl = EmulatorControl(ready["control_url"], ready["ca_path"])
    try:
        ctl.add_app(client_id=secrets["MS_CLIENT_ID"], client_secret=secrets["MS_CLIENT_SECRET"],
                    redirect_uris=[redirect_uri, redirect_uri.replace("127.0.0.1", "localhost")])
        if demo_user:
            ctl.add_user(demo_user, display_name="Ana Pérez", time_zone=time_zone, locale="es-ES")
    finally:
        ctl.close()
    return {"authority_host": ready["authority_host"], "graph_api_base": ready["graph_base"],
            "ca_bundle": ready["ca_path"]}
