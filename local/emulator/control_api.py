"""The control API (`/_control/...`, plain JSON, no auth; loopback only) used by tests and developers."""

from __future__ import annotations

import re
import secrets
import uuid

from . import events as ev_rules
from . import faults, timezones
from .state import App, AppCertificate, Store
from .web import HttpError, Request, Response


class ControlAPI:
    def __init__(self, emulator) -> None:
        self.emu = emulator
        self.store: Store = emulator.store
        self.routes = [
            ("POST", r"/reset", self.reset),
            ("GET", r"/state", self.state),
            ("GET", r"/apps", self.list_apps),
            ("POST", r"/apps", self.add_app),
            ("POST", r"/apps/(?P<cid>[^/]+)/certificates", self.add_app_certificate),
            ("GET", r"/admin-consents", self.list_admin_consents),
            ("POST", r"/admin-consents", self.grant_admin_consent),
            ("DELETE", r"/admin-consents/(?P<tid>[^/]+)/(?P<cid>[^/]+)", self.revoke_admin_consent),
            ("PUT", r"/app-scopes/(?P<tid>[^/]+)/(?P<cid>[^/]+)", self.set_app_scope),
            ("GET", r"/users", self.list_users),
            ("POST", r"/users", self.add_user),
            ("GET", r"/users/(?P<uid>[^/]+)", self.get_user),
            ("PATCH", r"/users/(?P<uid>[^/]+)", self.patch_user),
            ("PUT", r"/users/(?P<uid>[^/]+)/time-zone", self.set_time_zone),
            ("POST", r"/identity", self.identity),
            ("GET", r"/settings", self.get_settings),
            ("PATCH", r"/settings", self.patch_settings),
            ("PUT", r"/throttling", self.throttling),
            ("GET", r"/faults", self.list_faults),
            ("POST", r"/faults", self.add_fault),
            ("DELETE", r"/faults", self.clear_faults),
            ("POST", r"/holds/release", self.release_holds),
            ("GET", r"/inflight", self.inflight),
            ("GET", r"/users/(?P<uid>[^/]+)/events", self.list_events),
            ("POST", r"/users/(?P<uid>[^/]+)/events", self.user_create),
            ("PATCH", r"/users/(?P<uid>[^/]+)/events/(?P<eid>[^/]+)", self.user_update),
            ("DELETE", r"/users/(?P<uid>[^/]+)/events/(?P<eid>[^/]+)", self.user_delete),
            ("POST", r"/users/(?P<uid>[^/]+)/events/(?P<eid>[^/]+)/cancel", self.user_cancel),
            ("POST", r"/users/(?P<uid>[^/]+)/events/(?P<eid>[^/]+)/organizer-cancel", self.organizer_cancel),
            ("GET", r"/users/(?P<uid>[^/]+)/calendars", self.list_calendars),
            ("POST", r"/users/(?P<uid>[^/]+)/calendars", self.user_create_calendar),
            ("PATCH", r"/users/(?P<uid>[^/]+)/calendars/(?P<cid>[^/]+)", self.user_update_calendar),
            ("DELETE", r"/users/(?P<uid>[^/]+)/calendars/(?P<cid>[^/]+)", self.user_delete_calendar),
            ("POST", r"/users/(?P<uid>[^/]+)/refresh-tokens/expire", self.expire_refresh_tokens),
            ("POST", r"/users/(?P<uid>[^/]+)/delta/invalidate", self.invalidate_delta),
            ("GET", r"/subscriptions", self.list_subscriptions),
            ("POST", r"/subscriptions/(?P<sid>[^/]+)/lifecycle", self.lifecycle),
            ("GET", r"/deliveries", self.deliveries),
            ("PATCH", r"/notifications", self.notifications),
            ("GET", r"/counters", self.counters),
            ("DELETE", r"/counters", self.reset_counters),
            ("GET", r"/clock", self.clock),
            ("POST", r"/clock/advance", self.advance_clock),
        ]

    def handle(self, req: Request) -> Response:
        sub = req.path[len("/_control"):] or "/"
        for method, pattern, fn in self.routes:
            m = re.fullmatch(pattern, sub)
            if m and method == req.method:
                try:
                    body = req.json() if req.body else {}
                except ValueError:
                    return Response.plain_json({"error": "invalid JSON"}, 400)
                try:
                    return fn(req, body or {}, **m.groupdict())
                except HttpError as exc:
                    return Response.plain_json({"error": exc.code, "message": exc.message}, exc.status)
                except (ValueError, KeyError, TypeError) as exc:
                    return Response.plain_json({"error": type(exc).__name__, "message": str(exc)}, 400)
        return Response.plain_json({"error": "no such control endpoint", "path": req.path,
                                    "method": req.method}, 404)

    def _user(self, uid: str):
        mb = self.store.find_user(uid)
        if mb is None:
            raise HttpError(404, "user_not_found", f"no user {uid!r}")
        return mb

    # --- state ----------------------------------------------------------------------------------------------
    def reset(self, req, body):
        self.emu.reset()
        return Response.plain_json({"ok": True})

    def state(self, req, body):
        return Response.plain_json(self.emu.describe())

    def list_apps(self, req, body):
        with self.store.lock:
            return Response.plain_json({"value": [a.public() for a in self.store.apps.values()]})

    def add_app(self, req, body):
        app = App(client_id=body.get("client_id") or str(uuid.uuid4()),
                  client_secret=body.get("client_secret") or secrets.token_urlsafe(24),
                  redirect_uris=list(body.get("redirect_uris") or []),
                  display_name=body.get("display_name") or "CRM calendar sync",
                  tenant_id=body.get("tenant_id"), public_client=bool(body.get("public_client")))
        if body.get("application_permissions") is not None:
            app.application_permissions = [str(p) for p in body["application_permissions"]]
        self.store.add_app(app)
        return Response.plain_json(app.public(), 201)

    def _app(self, cid: str) -> App:
        app = self.store.apps.get(cid)
        if app is None:
            raise HttpError(404, "app_not_found", f"no app {cid!r}")
        return app

    def add_app_certificate(self, req, body, cid):
        """Upload a public certificate (PEM) to the app registration; answers its SHA-1 and SHA-256
        thumbprints (upper-case hex) as the portal shows them."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        app = self._app(cid)
        cert = x509.load_pem_x509_certificate(str(body["certificate_pem"]).encode())
        made = AppCertificate(thumbprint_sha1=cert.fingerprint(hashes.SHA1()).hex().upper(),  # noqa: S303
                              thumbprint_sha256=cert.fingerprint(hashes.SHA256()).hex().upper(),
                              public_key=cert.public_key(), pem=str(body["certificate_pem"]))
        with self.store.lock:
            app.certificates = [c for c in app.certificates if c.thumbprint_sha1 != made.thumbprint_sha1]
            app.certificates.append(made)
        return Response.plain_json(made.public(), 201)

    def list_admin_consents(self, req, body):
        with self.store.lock:
            return Response.plain_json({"value": [sp.public() for sp in self.store.service_principals.values()
                                                  if sp.granted_at is not None]})

    def grant_admin_consent(self, req, body):
        """What an admin's "Accept" on the adminconsent page records, without the browser."""
        tid, cid = body["tenant_id"], body["client_id"]
        app = self._app(cid)
        sp = self.emu.identity.record_admin_consent(tid, app, body.get("roles"))
        return Response.plain_json(sp.public(), 201)

    def revoke_admin_consent(self, req, body, tid, cid):
        """The admin deletes the enterprise application (service principal) of the app in the tenant."""
        with self.store.lock:
            sp = self.store.service_principals.pop((tid, cid), None)
        if sp is None:
            raise HttpError(404, "no_service_principal", f"app {cid!r} has no service principal in {tid!r}")
        return Response.empty(204)

    def set_app_scope(self, req, body, tid, cid):
        """Exchange Online RBAC for Applications: the mailboxes (UPNs or ids) app-only tokens of the app may
        reach in the tenant; `mailboxes: null` = every mailbox of the tenant."""
        mailboxes = body.get("mailboxes")
        with self.store.lock:
            if mailboxes is None:
                self.store.app_scopes.pop((tid, cid), None)
                return Response.plain_json({"tenant_id": tid, "client_id": cid, "mailboxes": None})
            oids = []
            for key in mailboxes:
                mb = self.store.find_user(str(key))
                if mb is None or mb.tenant_id != tid:
                    raise HttpError(400, "unknown_mailbox", f"no mailbox {key!r} in tenant {tid!r}")
                oids.append(mb.oid)
            self.store.app_scopes[(tid, cid)] = oids
        return Response.plain_json({"tenant_id": tid, "client_id": cid, "mailboxes": oids})

    def list_users(self, req, body):
        with self.store.lock:
            return Response.plain_json({"value": [m.public() for m in self.store.mailboxes.values()]})

    def add_user(self, req, body):
        tz = body.get("time_zone") or "UTC"
        try:
            timezones.windows_name(tz)
        except timezones.TimeZoneNotSupported as exc:
            raise HttpError(400, "bad_time_zone", str(exc)) from exc
        mb = self.store.add_user(upn=body["upn"], display_name=body.get("display_name"), time_zone=tz,
                                 oid=body.get("id") or body.get("oid"), tenant_id=body.get("tenant_id"),
                                 consent=body.get("consent") or "accept", locale=body.get("locale") or "en-US",
                                 account_kind=_account_kind(body.get("account_kind")),
                                 is_admin=bool(body.get("is_admin")))
        return Response.plain_json(mb.public(), 201)

    def get_user(self, req, body, uid):
        return Response.plain_json(self._user(uid).public())

    def patch_user(self, req, body, uid):
        mb = self._user(uid)
        with self.store.lock:
            if "time_zone" in body:
                mb.time_zone = timezones.windows_name(body["time_zone"])
            if "account_kind" in body:
                mb.account_kind = _account_kind(body["account_kind"])
            for k in ("display_name", "consent", "locale", "upn"):
                if k in body:
                    setattr(mb, k, body[k])
            if "is_admin" in body:
                mb.is_admin = bool(body["is_admin"])
        return Response.plain_json(mb.public())

    def set_time_zone(self, req, body, uid):
        return self.patch_user(req, {"time_zone": body["time_zone"]}, uid)

    def identity(self, req, body):
        s = self.store.settings
        with self.store.lock:
            for key in ("consent_mode", "next_user", "default_user", "access_token_lifetime",
                        "refresh_token_inactivity_days"):
                if key in body:
                    setattr(s, key, body[key])
        return Response.plain_json(s.public())

    def get_settings(self, req, body):
        return Response.plain_json(self.store.settings.public())

    def patch_settings(self, req, body):
        s = self.store.settings
        with self.store.lock:
            for k, v in body.items():
                if not hasattr(s, k):
                    raise HttpError(400, "unknown_setting", k)
                setattr(s, k, v)
        return Response.plain_json(s.public())

    def throttling(self, req, body):
        mapping = {"limit": "rate_limit", "window_seconds": "rate_window_seconds",
                   "concurrency": "concurrency_limit", "concurrency_scope": "concurrency_scope",
                   "concurrency_retry_after": "concurrency_retry_after"}
        with self.store.lock:
            for k, v in body.items():
                if k not in mapping:
                    raise HttpError(400, "unknown_setting", k)
                setattr(self.store.settings, mapping[k], v)
            self.store.windows.clear()
        return Response.plain_json(self.store.settings.public())

    # --- faults ---------------------------------------------------------------------------------------------
    def list_faults(self, req, body):
        with self.store.lock:
            return Response.plain_json({"value": [r.public() for r in self.store.faults]})

    def add_fault(self, req, body):
        rules = body.get("rules") if "rules" in body else [body]
        made = [faults.parse_rule(r) for r in rules]
        now = self.store.clock.now()
        for rule in made:
            rule.start(now)
        with self.store.lock:
            if body.get("replace"):
                self.store.faults.clear()
            if body.get("first"):  # tried before the rules already there (an outage beats the dice)
                self.store.faults[:0] = made
            else:
                self.store.faults.extend(made)
        return Response.plain_json({"value": [r.public() for r in made]}, 201)

    def clear_faults(self, req, body):
        with self.store.lock:
            self.store.faults.clear()
        return Response.empty(204)

    def release_holds(self, req, body):
        return Response.plain_json({"released": self.emu.graph.holds.release()})

    def inflight(self, req, body):
        q = req.query
        mailbox = q.get("mailbox", "")
        at_least = int(q.get("at_least", "0"))
        timeout = float(q.get("timeout", "0"))
        n = self.emu.graph.wait_inflight(mailbox, at_least, timeout)
        held = self.emu.graph.holds.waiting
        return Response.plain_json({"mailbox": mailbox, "inflight": n, "held": held})

    # --- mailbox contents / acting as the user ----------------------------------------------------------------
    def list_events(self, req, body, uid):
        mb = self._user(uid)
        include_deleted = req.query.get("include_deleted") in ("1", "true")
        with self.store.lock:
            out = []
            for ev in sorted(mb.events.values(), key=lambda e: e.seq):
                if ev.deleted and not include_deleted:
                    continue
                item = ev_rules.render(ev, mb)
                zone = mb.zone()
                s, e = ev.instants(zone)
                item.update({
                    "transactionId": ev.transaction_id,
                    "singleValueExtendedProperties": [{"id": k, "value": v} for k, v in ev.ext.items()],
                    "calendarId": ev.calendar_id, "deleted": ev.deleted, "seq": ev.seq,
                    "startUtc": timezones.format_utc_z(s), "endUtc": timezones.format_utc_z(e),
                })
                out.append(item)
        return Response.plain_json({"value": out})

    def user_create(self, req, body, uid):
        mb = self._user(uid)
        ev = self.emu.graph.user_create(mb, body.get("event", body), body.get("calendar_id"), bool(body.get("by_app")))
        with self.store.lock:
            return Response.plain_json(ev_rules.render(ev, mb), 201)

    def user_update(self, req, body, uid, eid):
        mb = self._user(uid)
        changes = body.get("event", {k: v for k, v in body.items() if k != "calendar_id"})
        ev = self.emu.graph.user_update(mb, eid, changes, body.get("calendar_id"))
        with self.store.lock:
            return Response.plain_json(ev_rules.render(ev, mb))

    def user_delete(self, req, body, uid, eid):
        self.emu.graph.user_delete(self._user(uid), eid)
        return Response.empty(204)

    def user_cancel(self, req, body, uid, eid):
        self.emu.graph.user_cancel(self._user(uid), eid)
        return Response.empty(204)

    def organizer_cancel(self, req, body, uid, eid):
        mb = self._user(uid)
        ev = self.emu.graph.organizer_cancel(mb, eid, (body or {}).get("subject_prefix", "Canceled: "))
        with self.store.lock:
            return Response.plain_json(ev_rules.render(ev, mb))

    def list_calendars(self, req, body, uid):
        return Response.plain_json({"value": self._user(uid).public()["calendars"]})

    def user_create_calendar(self, req, body, uid):
        cal = self.emu.graph.user_create_calendar(self._user(uid), body)
        return Response.plain_json({"id": cal.id, "name": cal.name}, 201)

    def user_update_calendar(self, req, body, uid, cid):
        """The user renames or recolours a calendar in Outlook."""
        cal = self.emu.graph.user_update_calendar(self._user(uid), cid, body)
        return Response.plain_json({"id": cal.id, "name": cal.name, "color": cal.color})

    def user_delete_calendar(self, req, body, uid, cid):
        """The user deletes a calendar in Outlook (with its events)."""
        self.emu.graph.user_delete_calendar(self._user(uid), cid)
        return Response.empty(204)

    def expire_refresh_tokens(self, req, body, uid):
        mb = self._user(uid)
        client_id = body.get("client_id")
        n = 0
        with self.store.lock:
            for rt in self.store.refresh_tokens.values():
                if rt.oid == mb.oid and (client_id is None or rt.client_id == client_id):
                    rt.expired = True
                    n += 1
        return Response.plain_json({"expired": n})

    def invalidate_delta(self, req, body, uid):
        mb = self._user(uid)
        with self.store.lock:
            mb.delta_generation += 1
        return Response.plain_json({"generation": mb.delta_generation})

    # --- subscriptions and deliveries ---------------------------------------------------------------------
    def list_subscriptions(self, req, body):
        mailbox = req.query.get("mailbox")
        with self.store.lock:
            self.emu.graph._live_subscriptions()
            subs = [dict(s.public(), mailbox=s.mailbox_id) for s in self.store.subscriptions.values()
                    if not mailbox or s.mailbox_id == mailbox]
        return Response.plain_json({"value": subs})

    def lifecycle(self, req, body, sid):
        event = body.get("event")
        if event not in ("reauthorizationRequired", "subscriptionRemoved", "missed"):
            raise HttpError(400, "bad_lifecycle_event", str(event))
        with self.store.lock:
            sub = self.store.subscriptions.get(sid)
            if sub is None:
                raise HttpError(404, "subscription_not_found", sid)
            self.emu.notifier.lifecycle(sub, event)
            if event == "subscriptionRemoved":
                del self.store.subscriptions[sid]
        return Response.plain_json({"queued": True}, 202)

    def deliveries(self, req, body):
        q = req.query
        after = int(q.get("after", "0"))
        at_least = int(q.get("at_least", "0"))
        timeout = float(q.get("timeout", "0"))
        mailbox, sub, kind = q.get("mailbox"), q.get("subscription"), q.get("kind")
        outcome = q.get("outcome")

        def select():
            return [d for d in self.store.deliveries if d["seq"] > after
                    and (not mailbox or d.get("mailbox") == mailbox)
                    and (not sub or sub in d.get("subscription_ids", []))
                    and (not kind or d.get("kind") == kind)
                    and (not outcome or d.get("outcome") == outcome)]

        with self.store.delivery_cond:
            self.store.delivery_cond.wait_for(lambda: len(select()) >= at_least, timeout=timeout)
            return Response.plain_json({"value": select(), "last_seq": len(self.store.deliveries)})

    def notifications(self, req, body):
        mapping = {"paused": "notifications_paused", "drop_next": "drop_notifications_next",
                   "drop_probability": "drop_notifications_probability",
                   "validation_timeout": "validation_timeout", "delivery_timeout": "notification_timeout",
                   "retry_seconds": "notification_retry_seconds", "retry_window": "notification_retry_window"}
        with self.store.lock:
            for k, v in body.items():
                if k not in mapping:
                    raise HttpError(400, "unknown_setting", k)
                setattr(self.store.settings, mapping[k], v)
        self.emu.notifier.wake()
        return Response.plain_json(self.store.settings.public())

    def counters(self, req, body):
        mailbox = req.query.get("mailbox")
        with self.store.lock:
            data = {mb: {kind: dict(c) for kind, c in per.items()} for mb, per in self.store.counters.items()
                    if not mailbox or mb == mailbox}
            summary = {mb: {kind: sum(c.values()) for kind, c in per.items()} for mb, per in data.items()}
            return Response.plain_json({"mailboxes": data, "totals": summary})

    def reset_counters(self, req, body):
        with self.store.lock:
            self.store.counters.clear()
            self.store.totals.clear()
        return Response.empty(204)

    # --- clock ----------------------------------------------------------------------------------------------
    def clock(self, req, body):
        now = self.store.clock.now()
        return Response.plain_json({"now": timezones.format_utc_z(now), "timestamp": now.timestamp(),
                                    "offset_seconds": self.store.clock.offset_seconds})

    def advance_clock(self, req, body):
        seconds = float(body.get("seconds", 0)) + 60 * float(body.get("minutes", 0)) + \
            3600 * float(body.get("hours", 0)) + 86400 * float(body.get("days", 0))
        if seconds < 0:
            raise HttpError(400, "bad_clock", "the emulator clock only moves forward")
        now = self.store.clock.advance(seconds)
        return Response.plain_json({"now": timezones.format_utc_z(now), "timestamp": now.timestamp(),
                                    "offset_seconds": self.store.clock.offset_seconds})


__all__ = ["ControlAPI"]


def _account_kind(value) -> str:
    if value in (None, "work"):
        return "work"
    if value == "personal":
        return "personal"
    raise ValueError("account_kind must be work or personal")
