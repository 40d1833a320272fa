"""Change and lifecycle notifications: validation handshake, a background delivery worker with retries,
and a record of every delivery attempt."""

from __future__ import annotations

import random
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from urllib.parse import quote, urlsplit

import requests

from .state import Event, Mailbox, Store, Subscription
from .timezones import format_utc_z

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def url_allowed(url: str) -> str | None:
    """None if acceptable, else the reason. Real Graph requires HTTPS; the emulator also accepts plain http on
    loopback so that tests and the local dev host need no certificate."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "The notification URL is not a valid URL."
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS:
        return None
    return "Subscription validation request failed. The notification URL must use https."


class Notifier:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.pending: list[dict] = []
        self.cond = threading.Condition(store.lock)
        self.stopping = False
        self.rng = random.Random(0)  # noqa: S311 - test fault injection
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="emulator-notify")
        self.http = requests.Session()
        self.thread = threading.Thread(target=self._run, name="emulator-notifier", daemon=True)
        store.clock.listeners.append(self.wake)
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        self.thread.join(timeout=5)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.http.close()

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def reset(self) -> None:
        with self.cond:
            self.pending.clear()

    # --- handshake ----------------------------------------------------------------------------------------
    def validate(self, url: str, sub_hint: str) -> str | None:
        """POST {url}?validationToken=...; None when the endpoint echoed the token as documented."""
        token = f"Validation: Testing client application reachability for subscription Request-Id: {uuid.uuid4()}"
        sep = "&" if urlsplit(url).query else "?"
        target = f"{url}{sep}validationToken={quote(token, safe='')}"
        timeout = self.store.settings.validation_timeout
        started = time.monotonic()
        entry = {"kind": "validation", "url": url, "subscription_ids": [sub_hint], "attempt": 1,
                 "at": format_utc_z(self.store.clock.now()), "payload": {"validationToken": token}}
        try:
            resp = self.http.post(target, data=b"", timeout=timeout,
                                  headers={"Content-Type": "text/plain; charset=utf-8"})
        except requests.Timeout:
            self._record(entry, "timeout", None, started)
            return "Subscription validation request timed out."
        except requests.RequestException as exc:
            self._record(entry, "connection_error", None, started)
            return f"Subscription validation request failed. {type(exc).__name__}."
        elapsed = time.monotonic() - started
        ctype = resp.headers.get("Content-Type", "")
        if elapsed > timeout:
            self._record(entry, "timeout", resp.status_code, started)
            return "Subscription validation request timed out."
        if resp.status_code != 200:
            self._record(entry, "http_error", resp.status_code, started)
            return ("Subscription validation request failed. Notification endpoint must respond with 200 OK to "
                    "validation request.")
        if not ctype.lower().startswith("text/plain") or resp.text != token:
            self._record(entry, "bad_echo", resp.status_code, started)
            return ("Subscription validation request failed. Response must exactly match validationToken query "
                    "parameter.")
        self._record(entry, "delivered", resp.status_code, started)
        return None

    def _record(self, entry: dict, outcome: str, status: int | None, started: float) -> None:
        entry = dict(entry, outcome=outcome, status=status,
                     elapsed_ms=round((time.monotonic() - started) * 1000, 1))
        self.store.record_delivery(entry)

    # --- enqueue ------------------------------------------------------------------------------------------
    def event_changed(self, mb: Mailbox, ev: Event, change_type: str) -> None:
        """Call with the store lock held, after the change is stored."""
        now = self.store.clock.now()
        for sub in list(self.store.subscriptions.values()):
            if sub.mailbox_id != mb.oid or change_type not in sub.change_types:
                continue
            if sub.expires_at <= now:
                continue
            if sub.calendar_id and sub.calendar_id != ev.calendar_id:
                continue
            path = f"Users/{mb.oid}/Events/{ev.id}"
            item = {
                "id": uuid.uuid4().hex,
                "subscriptionId": sub.id,
                "subscriptionExpirationDateTime": format_utc_z(sub.expires_at),
                "changeType": change_type,
                "resource": path,
                "resourceData": {"@odata.type": "#Microsoft.Graph.Event", "@odata.id": path,
                                 "@odata.etag": f'W/"{ev.change_key}"', "id": ev.id},
                "clientState": sub.client_state,
                "tenantId": sub.tenant_id,
            }
            self._enqueue(sub, sub.notification_url, item, "notification")

    def lifecycle(self, sub: Subscription, event: str) -> None:
        item = {
            "subscriptionId": sub.id,
            "subscriptionExpirationDateTime": format_utc_z(sub.expires_at),
            "tenantId": sub.tenant_id,
            "clientState": sub.client_state,
            "lifecycleEvent": event,
        }
        self._enqueue(sub, sub.lifecycle_url or sub.notification_url, item, "lifecycle", check_sub=False)

    def _enqueue(self, sub: Subscription, url: str, item: dict, kind: str, check_sub: bool = True) -> None:
        s = self.store.settings
        now = self.store.clock.now()
        drop = False
        if s.drop_notifications_next > 0:
            s.drop_notifications_next -= 1
            drop = True
        elif s.drop_notifications_probability and self.rng.random() < s.drop_notifications_probability:
            drop = True
        if drop:
            self.store.record_delivery({"kind": kind, "url": url, "subscription_ids": [sub.id],
                                        "mailbox": sub.mailbox_id, "attempt": 0, "outcome": "dropped",
                                        "status": None, "elapsed_ms": 0, "payload": {"value": [item]},
                                        "at": format_utc_z(now)})
            return
        with self.cond:
            self.pending.append({"url": url, "item": item, "kind": kind, "sub": sub.id, "mailbox": sub.mailbox_id,
                                 "due": now, "first": now, "attempts": 0, "busy": False, "check_sub": check_sub})
            self.cond.notify_all()

    def _drop_pending(self, p: dict) -> None:
        self.pending[:] = [x for x in self.pending if x is not p]

    # --- worker -------------------------------------------------------------------------------------------
    def _run(self) -> None:
        with self.cond:
            while not self.stopping:
                now = self.store.clock.now()
                paused = self.store.settings.notifications_paused
                # One POST in flight per URL at a time, so a URL sees its notifications in order.
                busy_urls = {p["url"] for p in self.pending if p["busy"]}
                due = [p for p in self.pending if not p["busy"] and p["due"] <= now
                       and p["url"] not in busy_urls] if not paused else []
                if not due:
                    waits = [(p["due"] - now).total_seconds() for p in self.pending if not p["busy"]]
                    timeout = min([w for w in waits if w > 0] + [1.0]) if not paused else 1.0
                    self.cond.wait(timeout=max(0.01, min(timeout, 1.0)))
                    continue
                groups: dict[tuple[str, str], list[dict]] = {}
                for p in due:
                    p["busy"] = True
                    groups.setdefault((p["url"], p["kind"]), []).append(p)
                for batch in groups.values():
                    self.pool.submit(self._deliver, batch)

    def _deliver(self, batch: list[dict]) -> None:
        store = self.store
        with store.lock:
            now = store.clock.now()
            live = []
            for p in batch:
                sub = store.subscriptions.get(p["sub"])
                if p["check_sub"] and (sub is None or sub.expires_at <= now):
                    self._drop_pending(p)
                    store.record_delivery({"kind": p["kind"], "url": p["url"], "subscription_ids": [p["sub"]],
                                           "mailbox": p["mailbox"], "attempt": p["attempts"] + 1,
                                           "outcome": "discarded_subscription_gone", "status": None,
                                           "elapsed_ms": 0, "payload": {"value": [p["item"]]},
                                           "at": format_utc_z(now)})
                    continue
                live.append(p)
            timeout = store.settings.notification_timeout
        if not live:
            return
        payload = {"value": [p["item"] for p in live]}
        url = live[0]["url"]
        started = time.monotonic()
        status, outcome = None, "delivered"
        try:
            resp = self.http.post(url, json=payload, timeout=timeout)
            status = resp.status_code
            if time.monotonic() - started > timeout:
                outcome = "timeout"
            elif not 200 <= status < 300:
                outcome = "http_error"
        except requests.Timeout:
            outcome = "timeout"
        except requests.RequestException:
            outcome = "connection_error"
        elapsed = round((time.monotonic() - started) * 1000, 1)
        with self.cond:
            now = store.clock.now()
            s = store.settings
            for p in live:
                p["attempts"] += 1
                store.record_delivery({"kind": p["kind"], "url": url, "subscription_ids": [p["sub"]],
                                       "mailbox": p["mailbox"], "attempt": p["attempts"], "outcome": outcome,
                                       "status": status, "elapsed_ms": elapsed, "payload": payload,
                                       "at": format_utc_z(now)})
                if outcome == "delivered":
                    self._drop_pending(p)
                elif (now - p["first"]).total_seconds() >= s.notification_retry_window:
                    self._drop_pending(p)
                    store.record_delivery({"kind": p["kind"], "url": url, "subscription_ids": [p["sub"]],
                                           "mailbox": p["mailbox"], "attempt": p["attempts"],
                                           "outcome": "discarded_after_retries", "status": None, "elapsed_ms": 0,
                                           "payload": payload, "at": format_utc_z(now)})
                else:
                    delay = min(s.notification_retry_seconds * (2 ** (p["attempts"] - 1)), 600.0)
                    p["due"] = now + timedelta(seconds=delay)
                    p["busy"] = False
            self.cond.notify_all()
