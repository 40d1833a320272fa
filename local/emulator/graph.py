"""Microsoft Graph v1.0 surface: users, mailboxSettings, calendars, events, calendarView(/delta),
subscriptions and $batch, behind authentication, Outlook throttling and fault injection."""

from __future__ import annotations

import json
import math
import random
import re
import secrets
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, unquote, urlsplit

from . import events as ev_rules
from . import faults, timezones
from .identity import normalize_scope
from .notify import Notifier, url_allowed
from .state import Calendar, Mailbox, Store, Subscription, change_key, outlook_id
from .web import HttpError, Request, Response

_USER = re.compile(r"^/(me|users/([^/]+))(/.*)?$")
# Path segments Graph serves, in their canonical spelling: Graph (OData) matches segment names
# case-insensitively, so `/CalendarView/Delta` and `/calendarview/delta` are the same resource.
_NAMES = {n.lower(): n for n in ("me", "users", "mailboxSettings", "timeZone", "calendars", "calendar", "events",
                                 "calendarView", "delta", "subscriptions", "reauthorize", "$batch", "cancel")}
_FUNCTIONS = {"delta"}  # OData functions: `delta()` (what the SDKs send) and `delta` are one call
_KEYED = {"users", "calendars", "events", "subscriptions"}  # `events/{id}` or OData key syntax `events('{id}')`
_CALL = re.compile(r"^(?P<name>[^()]+)\((?P<arg>.*)\)$")
_ROUTES = [
    (re.compile(r"^$"), "user"),
    (re.compile(r"^/mailboxSettings$"), "mailboxSettings"),
    (re.compile(r"^/mailboxSettings/timeZone$"), "mailboxSettings.timeZone"),
    (re.compile(r"^/calendars$"), "calendars"),
    (re.compile(r"^/calendar$"), "calendar"),
    (re.compile(r"^/calendars/(?P<cid>[^/]+)$"), "calendar"),
    (re.compile(r"^(?:/calendar|/calendars/(?P<cid>[^/]+))?/events$"), "events"),
    (re.compile(r"^(?:/calendar|/calendars/(?P<cid>[^/]+))?/events/(?P<eid>[^/]+)$"), "event"),
    (re.compile(r"^(?:/calendar|/calendars/(?P<cid>[^/]+))?/events/(?P<eid>[^/]+)/cancel$"), "event_cancel"),
    (re.compile(r"^(?:/calendar|/calendars/(?P<cid>[^/]+))?/calendarView/delta$"), "delta"),
    (re.compile(r"^(?:/calendar|/calendars/(?P<cid>[^/]+))?/calendarView$"), "calendarView"),
]
READ_SCOPES = {"calendars.read", "calendars.readwrite", "calendars.readbasic"}
WRITE_SCOPES = {"calendars.readwrite"}
USER_SCOPES = {"user.read", "user.readwrite", "user.readbasic.all", "user.read.all", "directory.read.all"}
SETTINGS_SCOPES = {"mailboxsettings.read", "mailboxsettings.readwrite"}
# Exchange's refusal for a mailbox outside the app's RBAC for Applications / application access policy scope
# (graph-facts-2 §3.3: the message seen today; the docs show its first sentence).
RAOP_MESSAGE = "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings."
MAX_EXPIRY_MINUTES = 10080
MIN_EXPIRY_MINUTES = 45


def canonical_path(path: str) -> str:
    """The path as Graph resolves it: segment names in canonical case, `delta()` as `delta`, OData key segments
    (`users('x')`, `events('id')`) as `users/x`, `events/id`. Keys (ids, UPNs) are kept as sent: event ids
    are case-sensitive. Unknown segments are left as they are, for the router's 400."""
    out: list[str] = []
    key_next = False
    for seg in path.split("/")[1:]:
        call = _CALL.match(seg)
        if key_next and not (call and call.group("name").lower() in _FUNCTIONS):
            out.append(seg)
            key_next = False
            continue
        key_next = False
        name, arg = (call.group("name"), call.group("arg").strip()) if call else (seg, None)
        canon = _NAMES.get(name.lower())
        if canon is None:
            out.append(seg)
        elif arg is None:
            out.append(canon)
            key_next = canon in _KEYED
        elif canon in _FUNCTIONS:
            if arg:
                raise HttpError(400, "BadRequest", f"The function '{canon}' has no parameter '{arg}'.")
            out.append(canon)
        elif canon in _KEYED and arg:
            if len(arg) >= 2 and arg[0] == arg[-1] == "'":
                arg = arg[1:-1].replace("''", "'")
            out += [canon, arg]
        else:
            out.append(seg)
    return "/" + "/".join(out)


def _template(method: str, rest: str) -> str:
    rest = re.sub(r"/calendars/[^/]+", "/calendars/{id}", rest or "/")
    rest = re.sub(r"/events/[^/]+", "/events/{id}", rest)
    rest = re.sub(r"/subscriptions/[^/]+", "/subscriptions/{id}", rest)
    return f"{method} {rest}"


def _parse_window_bound(value: str | None, name: str) -> datetime:
    if not value:
        raise HttpError(400, "ErrorInvalidParameter", "This request requires a time window specified by the query "
                                                      "string parameters StartDateTime and EndDateTime.")
    v = value.strip().replace(" ", "+")
    try:
        if v.endswith("Z"):
            v = v[:-1] + "+00:00"
        dt = datetime.fromisoformat(v)
    except ValueError as exc:
        raise HttpError(400, "ErrorInvalidParameter", f"The value '{value}' of parameter '{name}' is invalid.") \
            from exc
    if dt.tzinfo is None:  # "no offset -> UTC"
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


class GraphService:
    def __init__(self, store: Store, notifier: Notifier, base_url: str) -> None:
        self.store = store
        self.notifier = notifier
        self.base_url = base_url
        self.graph_base = f"{base_url}/v1.0"
        self.holds = faults.Holds()
        self.inflight: dict = {}
        self.inflight_cond = threading.Condition()
        self.batch_pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="emulator-batch")
        self.rng = random.Random(0)  # noqa: S311 - response shuffling

    def stop(self) -> None:
        self.holds.release()
        self.batch_pool.shutdown(wait=False, cancel_futures=True)

    # ==== pipeline ============================================================================================
    def serve(self, req: Request) -> Response:
        """Authenticate, resolve the mailbox, throttle, inject faults, run the handler."""
        try:
            token = self._authenticate(req)
            req.token = token
            path = canonical_path(req.path[len("/v1.0"):] or "/")
            req.path = "/v1.0" + (path if path != "/" else "")  # links (nextLink, deltaLink) use Graph's spelling
            mb, rest = self._resolve_mailbox(path, token)
            req.mailbox_id = mb.oid if mb else (token.oid if token else None)
            endpoint = _template(req.method, rest if mb else path)
            self.store.count(req.mailbox_id, "batch_inner" if req.inner else "requests", endpoint)
            if mb is not None:
                self.store.count_auth(mb.oid, app_only=token.oid is None)
                self._authorize_mailbox(token, mb)
                throttled = self._rate_check(token.client_id, mb.oid)
                if throttled is not None:
                    self.store.count(mb.oid, "throttled", endpoint)
                    return throttled
                key = mb.oid if self.store.settings.concurrency_scope == "mailbox" else (token.client_id, mb.oid)
                if not self._acquire(key):
                    self.store.count(mb.oid, "throttled", endpoint)
                    return faults.concurrency_response(self.store.settings.concurrency_retry_after)
                try:
                    return self._with_faults(req, lambda: self._route(req, mb, rest), endpoint)
                finally:
                    self._release(key)
            return self._with_faults(req, lambda: self._route_global(req, path), endpoint)
        except HttpError as exc:
            return exc.response()

    def _with_faults(self, req: Request, handler, endpoint: str) -> Response:
        rule = faults.pick(self.store, req, "graph")
        lost = False
        if rule is not None:
            if rule.kind == "drop":
                return Response(drop=True)
            if rule.kind in ("503", "500", "429"):
                if rule.kind == "429" and req.mailbox_id:
                    self.store.count(req.mailbox_id, "throttled", endpoint)
                return faults.status_response(rule)
            if rule.kind == "latency":
                time.sleep(rule.latency_ms / 1000.0)
            elif rule.kind == "hold":
                self.holds.wait()
            elif rule.kind == "lost_response":
                lost = True
        try:
            resp = handler()
        except HttpError as exc:
            resp = exc.response()
        if lost:
            resp.drop = True
        return resp

    def _authenticate(self, req: Request):
        header = req.headers.get("Authorization") or ""
        www = {"WWW-Authenticate": f'Bearer realm="", authorization_uri="{self.base_url}/common/oauth2/authorize", '
                                   'client_id="00000003-0000-0000-c000-000000000000"'}
        if not header.lower().startswith("bearer ") or not header[7:].strip():
            raise HttpError(401, "InvalidAuthenticationToken", "Access token is empty.", www)
        raw = header[7:].strip()
        with self.store.lock:
            token = self.store.access_tokens.get(raw)
            if token is None:
                raise HttpError(401, "InvalidAuthenticationToken",
                                "IDX14100: JWT is not well formed, there are no dots (.) or the token is not "
                                "issued by this service.", www)
            if self.store.clock.now() >= token.expires_at:
                raise HttpError(401, "InvalidAuthenticationToken",
                                "Lifetime validation failed, the token is expired.", www)
            if token.oid is None:
                # The emulator drops app-only tokens at once when the admin removes the app's service principal
                # (real Graph may honour a token until it expires; README "Documented choices").
                sp = self.store.service_principals.get((token.tenant_id, token.client_id))
                if sp is None or sp.id != token.service_principal_id:
                    raise HttpError(401, "InvalidAuthenticationToken", "Access token validation failure. The "
                                                                        "application's service principal no longer "
                                                                        "exists in the tenant.", www)
            return token

    def _resolve_mailbox(self, path: str, token) -> tuple[Mailbox | None, str]:
        """`/me/...` or `/users/{id | userPrincipalName}/...` -> (mailbox, rest of the path). Who may reach it is
        `_authorize_mailbox`; the handlers below serve both forms alike."""
        m = _USER.match(path)
        if not m:
            return None, path
        rest = m.group(3) or ""
        with self.store.lock:
            if m.group(1) == "me":
                if token.oid is None:
                    raise HttpError(400, "BadRequest", "/me request is only valid with delegated authentication "
                                                       "flow.")
                mb = self.store.mailboxes.get(token.oid)
                if mb is None:
                    raise HttpError(404, "ErrorInvalidUser", "The requested user is invalid.")
                return mb, rest
            key = unquote(m.group(2))
            mb = self.store.find_user(key)
            if mb is None or mb.tenant_id != token.tenant_id:
                code = "Request_ResourceNotFound" if not rest else "ErrorInvalidUser"
                raise HttpError(404, code, f"The requested user '{key}' is invalid.")
            return mb, rest

    def _mailbox_refusal(self, token, mb: Mailbox) -> str | None:
        """None when the token may reach the mailbox; "denied" (a delegated token of another user) or "raop"
        (an app-only token and a mailbox outside the app's Exchange RBAC for Applications scope)."""
        if token.oid is not None:
            return None if mb.oid == token.oid else "denied"
        with self.store.lock:
            scope = self.store.app_scopes.get((token.tenant_id, token.client_id))
        return None if scope is None or mb.oid in scope else "raop"

    def _authorize_mailbox(self, token, mb: Mailbox) -> None:
        refusal = self._mailbox_refusal(token, mb)
        if refusal == "denied":
            raise HttpError(403, "ErrorAccessDenied", "Access is denied. Check credentials and try again.")
        if refusal == "raop":
            raise HttpError(403, "ErrorAccessDenied", RAOP_MESSAGE)

    # ---- throttling -------------------------------------------------------------------------------------
    def _rate_check(self, client_id: str, oid: str) -> Response | None:
        s = self.store.settings
        with self.store.lock:
            now = self.store.clock.timestamp()
            window = self.store.windows.setdefault((client_id, oid), deque())
            while window and window[0] <= now - s.rate_window_seconds:
                window.popleft()
            if len(window) >= s.rate_limit:
                wait = max(1, math.ceil(window[0] + s.rate_window_seconds - now))
                return faults.throttled_response(str(wait))
            window.append(now)
            return None

    def _acquire(self, key) -> bool:
        with self.inflight_cond:
            n = self.inflight.get(key, 0)
            if n >= self.store.settings.concurrency_limit:
                return False
            self.inflight[key] = n + 1
            self.inflight_cond.notify_all()
            return True

    def _release(self, key) -> None:
        with self.inflight_cond:
            self.inflight[key] = self.inflight.get(key, 1) - 1
            self.inflight_cond.notify_all()

    def wait_inflight(self, mailbox: str, at_least: int, timeout: float) -> int:
        def count() -> int:
            return sum(v for k, v in self.inflight.items() if k == mailbox or (isinstance(k, tuple) and
                                                                                 k[1] == mailbox))

        with self.inflight_cond:
            self.inflight_cond.wait_for(lambda: count() >= at_least, timeout=timeout)
            return count()

    # ---- scopes -----------------------------------------------------------------------------------------
    @staticmethod
    def _require(token, allowed: set[str], code: str = "ErrorAccessDenied",
                 message: str = "Access is denied. Check credentials and try again.") -> None:
        if token.oid is None:  # app-only: the application permissions (roles) granted by the admin consent
            if {r.lower() for r in token.roles} & allowed:
                return
            raise HttpError(403, code, message)
        have = {normalize_scope(s).lower() for s in token.scopes}
        if ".default" in have or have & allowed:
            return
        raise HttpError(403, code, message)

    # ==== routing =============================================================================================
    def _route_global(self, req: Request, path: str) -> Response:
        if path == "/$batch" and req.method == "POST":
            return self.batch(req)
        if path == "/subscriptions":
            if req.method == "POST":
                return self.create_subscription(req)
            if req.method == "GET":
                return self.list_subscriptions(req)
        m = re.match(r"^/subscriptions/([^/]+)(/reauthorize)?$", path)
        if m:
            return self.subscription_item(req, m.group(1), bool(m.group(2)))
        raise HttpError(400, "BadRequest", f"Resource not found for the segment '{path.strip('/').split('/')[0]}'.")

    def _route(self, req: Request, mb: Mailbox, rest: str) -> Response:
        for pattern, name in _ROUTES:
            m = pattern.match(rest)
            if m:
                return getattr(self, "h_" + name.replace(".", "_"))(req, mb, **m.groupdict())
        seg = rest.strip("/").split("/")[0]
        raise HttpError(400, "BadRequest", f"Resource not found for the segment '{seg}'.")

    def _method(self, req: Request, *allowed: str) -> None:
        if req.method not in allowed:
            raise HttpError(405, "Request_BadRequest", f"The HTTP method '{req.method}' is not allowed.")

    def _ctx(self, mb: Mailbox, what: str) -> str:
        return f"{self.graph_base}/$metadata#users('{mb.oid}')/{what}"

    # ---- users / settings -------------------------------------------------------------------------------
    def h_user(self, req, mb: Mailbox) -> Response:
        self._method(req, "GET")
        self._require(req.token, USER_SCOPES, "Authorization_RequestDenied",
                      "Insufficient privileges to complete the operation.")
        given, _, family = mb.display_name.partition(" ")
        return Response.json({
            "@odata.context": f"{self.graph_base}/$metadata#users/$entity",
            "businessPhones": [], "displayName": mb.display_name, "givenName": given, "jobTitle": None,
            "mail": mb.upn, "mobilePhone": None, "officeLocation": None, "preferredLanguage": mb.locale,
            "surname": family or None, "userPrincipalName": mb.upn, "id": mb.oid})

    def h_mailboxSettings(self, req, mb: Mailbox) -> Response:
        self._method(req, "GET")
        self._require(req.token, SETTINGS_SCOPES)
        out = {
            "@odata.context": self._ctx(mb, "mailboxSettings"),
            "archiveFolder": outlook_id(), "timeZone": mb.time_zone,
            "delegateMeetingMessageDeliveryOptions": "sendToDelegateOnly", "dateFormat": "dd/MM/yyyy",
            "timeFormat": "H:mm", "userPurpose": "user",
            "automaticRepliesSetting": {"status": "disabled", "externalAudience": "all",
                                        "internalReplyMessage": "", "externalReplyMessage": "",
                                        "scheduledStartDateTime": {"dateTime": "2020-01-01T00:00:00.0000000",
                                                                   "timeZone": "UTC"},
                                        "scheduledEndDateTime": {"dateTime": "2020-01-02T00:00:00.0000000",
                                                                 "timeZone": "UTC"}},
            "language": {"locale": mb.locale, "displayName": mb.locale},
            "workingHours": {"daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
                             "startTime": "08:00:00.0000000", "endTime": "17:00:00.0000000",
                             "timeZone": {"name": mb.time_zone}}}
        select = req.query.get("$select")
        if select:  # what connect sends (`$select=timeZone`); names compare case-insensitively
            wanted = {s.strip().lower() for s in select.split(",") if s.strip()}
            unknown = wanted - {k.lower() for k in out if not k.startswith("@")}
            if unknown:
                raise HttpError(400, "RequestBroker--ParseUri", f"Could not find a property named "
                                                                f"'{sorted(unknown)[0]}' on type "
                                                                "'microsoft.graph.mailboxSettings'.")
            out = {k: v for k, v in out.items() if k.startswith("@") or k.lower() in wanted}
        return Response.json(out)

    def h_mailboxSettings_timeZone(self, req, mb: Mailbox) -> Response:
        self._method(req, "GET")
        self._require(req.token, SETTINGS_SCOPES)
        return Response.json({"@odata.context": self._ctx(mb, "mailboxSettings/timeZone"), "value": mb.time_zone})

    # ---- calendars --------------------------------------------------------------------------------------
    def _calendar_json(self, mb: Mailbox, cal: Calendar, expand: list[str] | None = None) -> dict:
        providers = ev_rules.online_providers(mb)  # personal accounts: none (graph-facts-2 §5)
        out = {"@odata.id": f"{self.graph_base}/users('{mb.oid}')/calendars('{cal.id}')", "id": cal.id,
               "name": cal.name, "color": cal.color, "hexColor": cal.hex_color, "isDefaultCalendar": cal.is_default,
               "changeKey": cal.change_key, "canShare": True, "canViewPrivateItems": True, "canEdit": True,
               "allowedOnlineMeetingProviders": providers,
               "defaultOnlineMeetingProvider": providers[0] if providers else "unknown",
               "isTallyingResponses": cal.is_default, "isRemovable": not cal.is_default,
               "owner": {"name": mb.display_name, "address": mb.upn}}
        if expand is not None:  # responses carry extended properties only when $expand asks (graph-facts-2 §6)
            wanted = {ev_rules.ext_key(i) for i in expand}
            matched = [{"id": pid, "value": v} for pid, v in cal.ext.items() if ev_rules.ext_key(pid) in wanted]
            if matched:
                out["singleValueExtendedProperties"] = matched
        return out

    _CALENDAR_FIELDS = {"name", "color", "hexColor", "isDefaultCalendar", "singleValueExtendedProperties"}

    def h_calendars(self, req, mb: Mailbox) -> Response:
        self._method(req, "GET", "POST")
        if req.method == "GET":
            self._require(req.token, READ_SCOPES)
            pred = ev_rules.parse_filter(req.query.get("$filter"))
            expand = ev_rules.parse_expand(req.query.get("$expand"))
            with self.store.lock:
                cals = [self._calendar_json(mb, c, expand) for c in mb.calendars.values() if not pred or pred(c)]
            return Response.json({"@odata.context": self._ctx(mb, "calendars"), "value": cals})
        self._require(req.token, WRITE_SCOPES)
        body = self._json(req)
        unknown = set(body) - self._CALENDAR_FIELDS - {k for k in body if k.startswith("@")}
        if unknown:
            raise HttpError(400, "RequestBodyRead", f"The property '{sorted(unknown)[0]}' does not exist on type "
                                                    "'microsoft.graph.calendar'.")
        name = body.get("name")
        if not isinstance(name, str) or not name.strip():
            raise HttpError(400, "ErrorInvalidRequest", "The calendar name is required.")
        with self.store.lock:
            if any(c.name.lower() == name.lower() for c in mb.calendars.values()):
                raise HttpError(409, "ErrorFolderExists", "A folder with the specified name already exists.")
            cal = Calendar(id=outlook_id(b"\x00\x00\x00\x01"), name=name)
            self._set_calendar(cal, body)
            mb.calendars[cal.id] = cal
            out = self._calendar_json(mb, cal)
        out["@odata.context"] = self._ctx(mb, "calendars/$entity")
        return Response.json(out, 201)

    @staticmethod
    def _set_calendar(cal: Calendar, body: dict) -> None:
        if isinstance(body.get("name"), str) and body["name"].strip():
            cal.name = body["name"]
        if isinstance(body.get("color"), str):
            cal.color = body["color"]
        if isinstance(body.get("hexColor"), str):
            cal.hex_color = body["hexColor"]
        ev_rules._set_ext(cal, ev_rules._ext_list(body.get("singleValueExtendedProperties")))
        cal.change_key = change_key()

    def h_calendar(self, req, mb: Mailbox, cid: str | None = None) -> Response:
        self._method(req, "GET", "PATCH", "DELETE")
        if req.method == "GET":
            self._require(req.token, READ_SCOPES)
            expand = ev_rules.parse_expand(req.query.get("$expand"))
            with self.store.lock:
                out = self._calendar_json(mb, self._calendar(mb, cid), expand)
            out["@odata.context"] = self._ctx(mb, "calendars/$entity")
            return Response.json(out)
        self._require(req.token, WRITE_SCOPES)
        if req.method == "DELETE":
            with self.store.lock:
                self._delete_calendar(mb, self._calendar(mb, cid))
            return Response.empty(204)
        body = self._json(req)
        unknown = set(body) - self._CALENDAR_FIELDS - {k for k in body if k.startswith("@")}
        if unknown:
            raise HttpError(400, "RequestBodyRead", f"The property '{sorted(unknown)[0]}' does not exist on type "
                                                    "'microsoft.graph.calendar'.")
        with self.store.lock:
            cal = self._calendar(mb, cid)
            self._set_calendar(cal, body)
            out = self._calendar_json(mb, cal)
        out["@odata.context"] = self._ctx(mb, "calendars/$entity")
        return Response.json(out)

    def _delete_calendar(self, mb: Mailbox, cal: Calendar) -> None:
        """`DELETE /calendars/{id}` -> 204 with the events it holds; the default calendar cannot be deleted
        (`isRemovable`; the exact error code is UNCONFIRMED). Caller holds the lock."""
        if cal.is_default:
            raise HttpError(400, "ErrorInvalidRequest", "The default calendar cannot be deleted.")
        for ev in [e for e in mb.events.values() if not e.deleted and e.calendar_id == cal.id]:
            ev_rules.delete(self.store, mb, ev)
            self.notifier.event_changed(mb, ev, "deleted")
        del mb.calendars[cal.id]

    def _calendar(self, mb: Mailbox, cid: str | None) -> Calendar:
        if cid is None:
            return mb.default_calendar()
        cal = mb.calendars.get(unquote(cid))
        if cal is None:
            raise HttpError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return cal

    # ---- events -----------------------------------------------------------------------------------------
    def _json(self, req: Request) -> dict:
        try:
            body = req.json()
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, "RequestBodyRead", "Invalid JSON in the request body.") from exc
        if not isinstance(body, dict):
            raise HttpError(400, "RequestBodyRead", "The request body must be a JSON object.")
        return body

    def _render_opts(self, req: Request) -> tuple[str, str, dict]:
        prefer = req.prefer()
        applied = {}
        tz = "UTC"
        wanted = prefer.get("outlook.timezone")
        if wanted and timezones.is_supported(wanted):
            tz = wanted
            applied["outlook.timezone"] = f'outlook.timezone="{wanted}"'
        body_type = "html"
        if (prefer.get("outlook.body-content-type") or "").lower() == "text":
            body_type = "text"
            applied["outlook.body-content-type"] = 'outlook.body-content-type="text"'
        if "idtype" in prefer:
            applied["IdType"] = f'IdType="{prefer["idtype"]}"'
        return tz, body_type, applied

    def _headers(self, applied: dict, extra: dict | None = None) -> dict:
        h = dict(extra or {})
        if applied:
            h["Preference-Applied"] = ", ".join(applied.values())
        return h

    def _event(self, mb: Mailbox, eid: str, cid: str | None = None):
        """An event by id. Under `calendars/{cid}/` the calendar must exist, but the event may be in any calendar:
        ids are unique in the mailbox and Graph answers the event whatever calendar the path names
        (microsoftgraph/microsoft-graph-docs#391)."""
        if cid is not None:
            self._calendar(mb, cid)
        ev = mb.events.get(unquote(eid))
        if ev is None or ev.deleted:
            raise HttpError(404, "ErrorItemNotFound", "The specified object was not found in the store.")
        return ev

    def h_events(self, req, mb: Mailbox, cid: str | None = None) -> Response:
        self._method(req, "GET", "POST")
        tz, body_type, applied = self._render_opts(req)
        if req.method == "POST":
            self._require(req.token, WRITE_SCOPES)
            body = self._json(req)
            with self.store.lock:
                cal = self._calendar(mb, cid)
                ev, created = ev_rules.create(self.store, mb, cal.id, body)
                if created:
                    self.notifier.event_changed(mb, ev, "created")
                out = ev_rules.render(ev, mb, tz=tz, body_type=body_type)
            out = {"@odata.context": self._ctx(mb, "events/$entity"), **out}
            return Response.json(out, 201, self._headers(applied, {"Location": f"{self.graph_base}/users('{mb.oid}')"
                                                                              f"/events('{ev.id}')"}))
        self._require(req.token, READ_SCOPES)
        select = ev_rules.parse_select(req.query.get("$select"))
        expand = ev_rules.parse_expand(req.query.get("$expand"))
        pred = ev_rules.parse_filter(req.query.get("$filter"))
        with self.store.lock:
            cal = self._calendar(mb, cid)
            items = [e for e in mb.events.values() if not e.deleted and e.calendar_id == cal.id]
            if pred:
                items = [e for e in items if pred(e)]
            items = self._order(items, req.query.get("$orderby"), mb)
            return self._page(req, mb, items, "events", tz, body_type, applied, select, expand)

    def _order(self, items, orderby: str | None, mb: Mailbox):
        if not orderby:
            return sorted(items, key=lambda e: (e.created, e.id))
        field, _, direction = orderby.strip().partition(" ")
        desc = direction.strip().lower() == "desc"
        zone = mb.zone()
        keys = {
            "start/datetime": lambda e: e.instants(zone)[0],
            "end/datetime": lambda e: e.instants(zone)[1],
            "createddatetime": lambda e: e.created,
            "lastmodifieddatetime": lambda e: e.modified,
            "subject": lambda e: (e.props.get("subject") or "").lower(),
        }
        key = keys.get(field.lower())
        if key is None:
            raise HttpError(400, "ErrorInvalidProperty", f"$orderby on '{field}' is not supported by this emulator.")
        return sorted(items, key=key, reverse=desc)

    def _page(self, req, mb, items, what, tz, body_type, applied, select, expand) -> Response:
        prefer = req.prefer()
        try:
            top = int(req.query.get("$top") or prefer.get("odata.maxpagesize") or self.store.settings.list_page_size)
            skip = int(req.query.get("$skip") or 0)
        except ValueError as exc:
            raise HttpError(400, "BadRequest", "Invalid $top or $skip.") from exc
        top = max(1, min(top, 1000))
        if "odata.maxpagesize" in prefer and "$top" not in req.query:
            applied["odata.maxpagesize"] = f"odata.maxpagesize={top}"
        page = items[skip: skip + top]
        out = {"@odata.context": self._ctx(mb, what),
               "value": [ev_rules.render(e, mb, tz=tz, body_type=body_type, select=select, expand_ext=expand,
                                         base=self.graph_base) for e in page]}
        if skip + top < len(items):
            params = {k: v for k, v in req.query.items() if k not in ("$skip",)}
            params["$top"] = str(top)
            params["$skip"] = str(skip + top)
            query = "&".join(f"{quote(k, safe='$')}={quote(v, safe='')}" for k, v in params.items())
            out["@odata.nextLink"] = f"{self.base_url}{req.path}?{query}"
        return Response.json(out, 200, self._headers(applied))

    def h_event(self, req, mb: Mailbox, eid: str, cid: str | None = None) -> Response:
        self._method(req, "GET", "PATCH", "DELETE")
        tz, body_type, applied = self._render_opts(req)
        if req.method == "GET":
            self._require(req.token, READ_SCOPES)
            select = ev_rules.parse_select(req.query.get("$select"))
            expand = ev_rules.parse_expand(req.query.get("$expand"))
            with self.store.lock:
                ev = self._event(mb, eid, cid)
                out = ev_rules.render(ev, mb, tz=tz, body_type=body_type, select=select, expand_ext=expand,
                                      base=self.graph_base)
            return Response.json({"@odata.context": self._ctx(mb, "events/$entity"), **out}, 200,
                                 self._headers(applied))
        self._require(req.token, WRITE_SCOPES)
        if req.method == "DELETE":
            with self.store.lock:
                ev = self._event(mb, eid, cid)
                ev_rules.check_if_match(ev, req.headers.get("If-Match"))
                ev_rules.delete(self.store, mb, ev)
                self.notifier.event_changed(mb, ev, "deleted")
            return Response.empty(204)
        body = self._json(req)
        with self.store.lock:
            ev = self._event(mb, eid, cid)
            ev_rules.check_if_match(ev, req.headers.get("If-Match"))
            ev_rules.update(self.store, mb, ev, body)
            self.notifier.event_changed(mb, ev, "updated")
            out = ev_rules.render(ev, mb, tz=tz, body_type=body_type)
        return Response.json({"@odata.context": self._ctx(mb, "events/$entity"), **out}, 200,
                             self._headers(applied))

    def h_event_cancel(self, req, mb: Mailbox, eid: str, cid: str | None = None) -> Response:
        """`POST /events/{id}/cancel` `{comment?}` (event-cancel): only the organizer may cancel; the event goes to
        Deleted Items (gone from the calendar: 404 by id, `@removed` in delta, a `deleted` notification) and the
        attendees get a cancellation (not emulated: their mailboxes are not this one). An attendee -> 400."""
        self._method(req, "POST")
        self._require(req.token, WRITE_SCOPES)
        body = self._json(req) if req.body else {}
        if not isinstance(body.get("comment") or "", str):
            raise HttpError(400, "RequestBodyRead", "The 'comment' property must be a string.")
        with self.store.lock:
            ev = self._event(mb, eid, cid)
            if not ev_rules.is_organizer(ev, mb):
                raise HttpError(400, "ErrorInvalidRequest", "Your request can't be completed. You need to be an "
                                                            "organizer to cancel a meeting.")
            ev_rules.delete(self.store, mb, ev)
            self.notifier.event_changed(mb, ev, "deleted")
        return Response.empty(202)

    @staticmethod
    def _query(req, name: str) -> str:
        """A function parameter (`startDateTime`, `endDateTime`); Graph reads their names case-insensitively."""
        low = name.lower()
        return next((v for k, v in req.query.items() if k.lower() == low), "")

    def _window(self, req) -> tuple[datetime, datetime]:
        start = _parse_window_bound(self._query(req, "startDateTime"), "startDateTime")
        end = _parse_window_bound(self._query(req, "endDateTime"), "endDateTime")
        return start, end

    @staticmethod
    def _in_window(ev, zone, start: datetime, end: datetime) -> bool:
        s, e = ev.instants(zone)
        if s == e:
            return start <= s < end
        return s < end and e > start

    def h_calendarView(self, req, mb: Mailbox, cid: str | None = None) -> Response:
        self._method(req, "GET")
        self._require(req.token, READ_SCOPES)
        tz, body_type, applied = self._render_opts(req)
        start, end = self._window(req)
        if (end - start).days > 1825:
            raise HttpError(400, "ErrorInvalidRequest", "The range between the start and end dates is greater than "
                                                        "the allowed range. Maximum number of days: 1825")
        select = ev_rules.parse_select(req.query.get("$select"))
        pred = ev_rules.parse_filter(req.query.get("$filter"))
        with self.store.lock:
            cal = self._calendar(mb, cid)
            zone = mb.zone()
            items = [e for e in mb.events.values() if not e.deleted and e.calendar_id == cal.id
                     and self._in_window(e, zone, start, end)]
            if pred:
                items = [e for e in items if pred(e)]
            items = sorted(items, key=lambda e: (e.instants(zone)[0], e.id))
            return self._page(req, mb, items, "calendarView", tz, body_type, applied, select, None)

    # ---- delta ------------------------------------------------------------------------------------------
    def h_delta(self, req, mb: Mailbox, cid: str | None = None) -> Response:
        self._method(req, "GET")
        self._require(req.token, READ_SCOPES)
        for bad in ("$select", "$expand", "$filter", "$orderby", "$search", "$top"):
            if bad in req.query:
                raise HttpError(400, "ErrorInvalidUrlQuery", f"The query parameter '{bad}' is not supported with "
                                                             "delta on calendarView.")
        tz, body_type, applied = self._render_opts(req)
        prefer = req.prefer()
        try:
            page_size = int(prefer.get("odata.maxpagesize") or self.store.settings.delta_page_size)
        except ValueError:
            page_size = self.store.settings.delta_page_size
        page_size = max(1, min(page_size, 1000))
        if "odata.maxpagesize" in prefer:
            applied["odata.maxpagesize"] = f"odata.maxpagesize={page_size}"
        link_base = f"{self.base_url}{req.path}"
        with self.store.lock:
            zone = mb.zone()
            skip, dtok = req.query.get("$skiptoken"), req.query.get("$deltatoken")
            if skip or dtok:
                st = self.store.delta_states.get(skip or dtok)
                if st is None or st["mailbox"] != mb.oid or st["generation"] != mb.delta_generation \
                        or st["kind"] != ("skip" if skip else "delta"):
                    location = link_base
                    if st is not None:
                        location += (f"?startDateTime={quote(st['start_raw'], safe='')}"
                                     f"&endDateTime={quote(st['end_raw'], safe='')}")
                    raise HttpError(410, "syncStateNotFound", "The sync state generation is not found or has "
                                                              "expired. Restart the synchronization without a "
                                                              "delta token.", {"Location": location})
                if skip:
                    round_ = st
                else:
                    changed = [e for e in mb.events.values() if e.seq > st["seq"]]
                    changed.sort(key=lambda e: e.seq)
                    ids = [i for e in changed for i in self._delta_ids(e, zone, st["start"], st["end"])]
                    round_ = {**st, "ids": ids, "offset": 0, "new_seq": mb.seq}
            else:
                start, end = self._window(req)
                cal = self._calendar(mb, cid)
                items = [e for e in mb.events.values() if not e.deleted and e.calendar_id == cal.id
                         and self._in_window(e, zone, start, end)]
                series = [e for e in mb.events.values() if not e.deleted and e.calendar_id == cal.id
                          and ev_rules.is_series(e)]
                listed = [(e.instants(zone)[0], e.id) for e in items if not ev_rules.is_series(e)]
                listed += [(s, ev_rules.occurrence_id(e.id, d)) for e in series for d, s, f in ev_rules.occurrences(e)
                           if (s < end and f > start)]
                listed.sort()
                round_ = {"mailbox": mb.oid, "generation": mb.delta_generation, "calendar": cal.id,
                          "start": start, "end": end, "start_raw": self._query(req, "startDateTime"),
                          "end_raw": self._query(req, "endDateTime"), "ids": [i for _, i in listed], "offset": 0,
                          "new_seq": mb.seq}
            ids = round_["ids"][round_["offset"]: round_["offset"] + page_size]
            value = []
            for eid in ids:
                occurrence = self._occurrence(mb, eid, round_, tz, body_type)
                if occurrence is not None:
                    value.append({"@odata.type": "#microsoft.graph.event", **occurrence} if occurrence else
                                 {"@odata.type": "#microsoft.graph.event", "id": eid, "@removed": {"reason": "deleted"}})
                    continue
                e = mb.events.get(eid)
                if e is None or e.deleted or e.calendar_id != round_["calendar"] \
                        or not self._in_window(e, zone, round_["start"], round_["end"]):
                    value.append({"@odata.type": "#microsoft.graph.event", "id": eid,
                                  "@removed": {"reason": "deleted"}})
                else:
                    value.append({"@odata.type": "#microsoft.graph.event",
                                  **ev_rules.render(e, mb, tz=tz, body_type=body_type)})
            out = {"@odata.context": self._ctx(mb, "calendarView"), "value": value}
            next_offset = round_["offset"] + page_size
            if next_offset < len(round_["ids"]):
                tok = secrets.token_urlsafe(24)
                self.store.delta_states[tok] = {**round_, "kind": "skip", "offset": next_offset}
                out["@odata.nextLink"] = f"{link_base}?$skiptoken={tok}"
            else:
                tok = secrets.token_urlsafe(24)
                self.store.delta_states[tok] = {k: v for k, v in round_.items() if k not in ("ids", "offset")} | {
                    "kind": "delta", "seq": round_["new_seq"]}
                out["@odata.deltaLink"] = f"{link_base}?$deltatoken={tok}"
        return Response.json(out, 200, self._headers(applied))

    def _delta_ids(self, ev, zone, start: datetime, end: datetime) -> list[str]:
        """What an incremental round lists for a changed event: a series as its occurrences in the window (all
        of them @removed when the series was deleted), anything else as itself."""
        if not ev_rules.is_series(ev):
            return [ev.id]
        return [ev_rules.occurrence_id(ev.id, d) for d, s, f in ev_rules.occurrences(ev) if s < end and f > start]

    def _occurrence(self, mb: Mailbox, eid: str, round_: dict, tz: str, body_type: str) -> dict | None:
        """An occurrence id of the round: its rendering ({} when it is gone), or None for any other id."""
        calendar, start, end = round_["calendar"], round_["start"], round_["end"]
        parsed = ev_rules.parse_occurrence_id(eid)
        if parsed is None:
            return None
        master = mb.events.get(parsed[0])
        if master is None or master.deleted or master.calendar_id != calendar or not ev_rules.is_series(master):
            return {}
        for day, s, f in ev_rules.occurrences(master):
            if day == parsed[1] and s < end and f > start:
                return ev_rules.render_occurrence(master, mb, day, s, f, tz=tz, body_type=body_type)
        return {}

    # ---- subscriptions ----------------------------------------------------------------------------------
    _RESOURCE = re.compile(r"^/?(me|users/([^/]+))(/calendars/([^/]+)|/calendar)?/events$", re.I)

    def create_subscription(self, req: Request) -> Response:
        token = req.token
        body = self._json(req)
        allowed = set(ev_rules.schema.properties("subscription")) - {"id"}
        for k in body:
            if not k.startswith("@") and k not in allowed:
                raise HttpError(400, "RequestBodyRead", f"The property '{k}' does not exist on type "
                                                        "'microsoft.graph.subscription'.")
        change_types = [c.strip() for c in str(body.get("changeType") or "").split(",") if c.strip()]
        if not change_types or any(c not in ("created", "updated", "deleted") for c in change_types):
            raise HttpError(400, "InvalidRequest", "changeType must be a combination of created, updated, deleted.")
        resource = str(body.get("resource") or "")
        m = self._RESOURCE.match(canonical_path("/" + resource.split("?")[0].lstrip("/")))
        if not m:
            raise HttpError(400, "InvalidRequest", f"The resource '{resource}' is not supported by this emulator "
                                                   "(events of a mailbox or calendar only).")
        if body.get("includeResourceData"):
            raise HttpError(400, "InvalidRequest", "includeResourceData (rich notifications) is not supported by "
                                                   "this emulator.")
        url = body.get("notificationUrl")
        lifecycle_url = body.get("lifecycleNotificationUrl")
        for u in [url, lifecycle_url] if lifecycle_url else [url]:
            reason = url_allowed(str(u or ""))
            if reason:
                raise HttpError(400, "ValidationError", reason)
        client_state = body.get("clientState")
        if client_state is not None and len(str(client_state)) > 128:
            raise HttpError(400, "InvalidRequest", "clientState must be at most 128 characters.")
        now = self.store.clock.now()
        try:
            raw_exp = str(body.get("expirationDateTime") or "")
            expires = datetime.fromisoformat(raw_exp.replace("Z", "+00:00"))
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=UTC)
        except ValueError as exc:
            raise HttpError(400, "InvalidRequest", "expirationDateTime is required and must be a DateTimeOffset.") \
                from exc
        expires = self._check_expiry(expires, now, "Create")
        with self.store.lock:
            if m.group(1).lower() == "me":
                if token.oid is None:
                    raise HttpError(400, "BadRequest", "/me request is only valid with delegated authentication "
                                                       "flow.")
                mb = self.store.mailboxes.get(token.oid)
            else:
                mb = self.store.find_user(unquote(m.group(2)))
            if mb is None or mb.tenant_id != token.tenant_id:
                raise HttpError(404, "ExtensionError", "Operation: Create; Exception: [Status Code: NotFound; "
                                                       "Reason: The user was not found.]")
            refusal = self._mailbox_refusal(token, mb)
            if refusal is not None:
                reason = "Access to OData is disabled." if refusal == "raop" else "Access is denied."
                raise HttpError(403, "ExtensionError", "Operation: Create; Exception: [Status Code: Forbidden; "
                                                       f"Reason: {reason}]")
            calendar_id = None
            if m.group(4):
                calendar_id = self._calendar(mb, m.group(4)).id
            elif m.group(3):
                calendar_id = mb.default_calendar().id
        self._require(token, READ_SCOPES)
        sub_id = str(uuid.uuid4())
        for u in [url, lifecycle_url] if lifecycle_url else [url]:
            failure = self.notifier.validate(u, sub_id)
            if failure:
                raise HttpError(400, "ValidationError", failure)
        with self.store.lock:
            sub = Subscription(id=sub_id, client_id=token.client_id, tenant_id=mb.tenant_id, mailbox_id=mb.oid,
                               creator_id=token.oid, resource=resource, calendar_id=calendar_id,
                               change_types=change_types, notification_url=url, lifecycle_url=lifecycle_url,
                               client_state=client_state, expires_at=expires)
            self.store.subscriptions[sub.id] = sub
            return Response.json(sub.public(), 201)

    def _check_expiry(self, expires: datetime, now: datetime, op: str) -> datetime:
        if expires <= now:
            raise HttpError(400, "ExtensionError", f"Operation: {op}; Exception: [Status Code: BadRequest; Reason: "
                                                   "Subscription expiration date time must be in the future.]")
        if expires > now + timedelta(minutes=MAX_EXPIRY_MINUTES):
            raise HttpError(400, "ExtensionError", f"Operation: {op}; Exception: [Status Code: BadRequest; Reason: "
                                                   f"Subscription expiration can only be {MAX_EXPIRY_MINUTES} "
                                                   "minutes in the future.]")
        return max(expires, now + timedelta(minutes=MIN_EXPIRY_MINUTES))

    def _live_subscriptions(self) -> None:
        now = self.store.clock.now()
        for sid, sub in list(self.store.subscriptions.items()):
            if sub.expires_at <= now:
                del self.store.subscriptions[sid]

    def list_subscriptions(self, req: Request) -> Response:
        with self.store.lock:
            self._live_subscriptions()
            subs = [s.public() for s in self.store.subscriptions.values() if s.client_id == req.token.client_id
                    and s.tenant_id == req.token.tenant_id
                    and (req.token.oid is None or s.creator_id == req.token.oid)]
        for s in subs:
            s.pop("@odata.context", None)
        return Response.json({"@odata.context": f"{self.graph_base}/$metadata#subscriptions", "value": subs})

    def subscription_item(self, req: Request, sid: str, reauthorize: bool) -> Response:
        with self.store.lock:
            self._live_subscriptions()
            sub = self.store.subscriptions.get(sid)
            if sub is None or sub.client_id != req.token.client_id or sub.tenant_id != req.token.tenant_id:
                raise HttpError(404, "ResourceNotFound", f"The object was not found. Subscription '{sid}'.")
            if reauthorize:
                self._method(req, "POST")
                return Response.empty(204)
            if req.method == "GET":
                return Response.json(sub.public())
            if req.method == "DELETE":
                del self.store.subscriptions[sid]
                return Response.empty(204)
            if req.method == "PATCH":
                body = self._json(req)
                extra = set(body) - {"expirationDateTime", "notificationUrl"}
                if extra:
                    raise HttpError(400, "InvalidRequest", f"Only expirationDateTime can be updated "
                                                           f"(got {sorted(extra)[0]}).")
                if "expirationDateTime" in body:
                    try:
                        exp = datetime.fromisoformat(str(body["expirationDateTime"]).replace("Z", "+00:00"))
                    except ValueError as exc:
                        raise HttpError(400, "InvalidRequest", "expirationDateTime must be a DateTimeOffset.") \
                            from exc
                    if exp.tzinfo is None:
                        exp = exp.replace(tzinfo=UTC)
                    sub.expires_at = self._check_expiry(exp, self.store.clock.now(), "Update")
                return Response.json(sub.public())
        raise HttpError(405, "BadRequest", f"The HTTP method '{req.method}' is not allowed.")

    # ---- $batch -----------------------------------------------------------------------------------------
    def batch(self, req: Request) -> Response:
        body = self._json(req)
        items = body.get("requests")
        if not isinstance(items, list) or not items:
            raise HttpError(400, "BadRequest", "Invalid batch payload format.")
        if len(items) > 20:
            raise HttpError(400, "BadRequest", "Number of requests in the batch exceeds the limit of 20.")
        ids = []
        for it in items:
            if not isinstance(it, dict) or not it.get("id") or not it.get("method") or not it.get("url"):
                raise HttpError(400, "BadRequest", "Each batch request needs id, method and url.")
            ids.append(str(it["id"]).lower())
        if len(set(ids)) != len(ids):
            raise HttpError(400, "BadRequest", "Batch request ids must be unique.")
        for it in items:
            for dep in it.get("dependsOn") or []:
                if str(dep).lower() not in ids or ids.index(str(dep).lower()) >= ids.index(str(it["id"]).lower()):
                    raise HttpError(400, "BadRequest", f"Request '{it['id']}' depends on an unknown or later "
                                                       f"request '{dep}'.")
        auth = req.headers.get("Authorization")
        sequential = any(it.get("dependsOn") for it in items)
        results: dict[str, dict] = {}
        if sequential:
            for it in items:
                deps = [str(d).lower() for d in it.get("dependsOn") or []]
                if any(results[d]["status"] >= 400 for d in deps):
                    results[str(it["id"]).lower()] = {"id": it["id"], "status": 424, "body": {"error": {
                        "code": "BadRequest", "message": "Failed dependency."}}}
                    continue
                results[str(it["id"]).lower()] = self._batch_item(it, auth)
        else:
            # Outlook runs at most four items of a batch at a time (includes/throttling-outlook.md).
            with ThreadPoolExecutor(max_workers=4, thread_name_prefix="emulator-batch-item") as pool:
                futures = {str(it["id"]).lower(): pool.submit(self._batch_item, it, auth) for it in items}
                for k, f in futures.items():
                    results[k] = f.result()
        responses = list(results.values())
        if self.store.settings.shuffle_batch_responses:
            self.rng.shuffle(responses)
        return Response.plain_json({"responses": responses})

    def _batch_item(self, it: dict, auth: str | None) -> dict:
        url = str(it["url"])
        if "://" in url:
            return {"id": it["id"], "status": 400, "body": {"error": {"code": "BadRequest", "message":
                    "Batch request URLs must be relative."}}}
        if not url.startswith("/"):
            url = "/" + url
        parts = urlsplit(url)
        headers = {k: v for k, v in (it.get("headers") or {}).items()}
        if auth:
            headers["Authorization"] = auth
        raw_body = b""
        if it.get("body") is not None:
            if not any(k.lower() == "content-type" for k in headers):
                return {"id": it["id"], "status": 400, "body": {"error": {"code": "BadRequest", "message":
                        "Content-Type header must be specified when a body is present."}}}
            raw_body = json.dumps(it["body"]).encode()
        inner = Request.build(str(it["method"]), "/v1.0" + unquote(parts.path), parts.query, headers, raw_body,
                              inner=True)
        resp = self.serve(inner)
        out = {"id": it["id"], "status": resp.status,
               "headers": {k: v for k, v in resp.headers.items() if k.lower() in ("content-type", "retry-after",
                                                                                 "location", "preference-applied")}}
        if resp.body:
            try:
                out["body"] = json.loads(resp.body)
            except ValueError:
                out["body"] = resp.body.decode("utf-8", "replace")
        return out

    # ==== "as the user" (control API) =========================================================================
    def user_create(self, mb: Mailbox, body: dict, calendar_id: str | None = None, by_app: bool = False):
        """An event the user adds in Outlook (``by_app``: another app added it through Graph, e.g. a booking
        tool: it keeps the ``transactionId`` that app sent, as Graph does)."""
        with self.store.lock:
            cal = self._calendar(mb, calendar_id)
            body = dict(body)
            if not by_app:
                body.pop("transactionId", None)
            organizer = body.pop("organizer", None)  # a meeting someone else organised (an invitation)
            ev, _ = ev_rules.create(self.store, mb, cal.id, body)
            if isinstance(organizer, dict) and isinstance(organizer.get("emailAddress"), dict):
                ev.props["organizer"] = {"emailAddress": dict(organizer["emailAddress"])}
            self.notifier.event_changed(mb, ev, "created")
            return ev

    def user_update(self, mb: Mailbox, eid: str, body: dict, calendar_id: str | None = None):
        with self.store.lock:
            ev = self._event(mb, eid)
            body = dict(body)
            if calendar_id:
                ev.calendar_id = self._calendar(mb, calendar_id).id
            if body:
                ev_rules.update(self.store, mb, ev, body)
            else:
                ev_rules.touch(self.store, mb, ev)
            self.notifier.event_changed(mb, ev, "updated")
            return ev

    def user_create_calendar(self, mb: Mailbox, body: dict) -> Calendar:
        with self.store.lock:
            cal = Calendar(id=outlook_id(b"\x00\x00\x00\x01"), name=str(body.get("name") or "Calendar"))
            self._set_calendar(cal, body)
            mb.calendars[cal.id] = cal
            return cal

    def user_update_calendar(self, mb: Mailbox, cid: str, body: dict) -> Calendar:
        with self.store.lock:
            cal = self._calendar(mb, cid)
            self._set_calendar(cal, body)
            return cal

    def user_delete_calendar(self, mb: Mailbox, cid: str) -> None:
        with self.store.lock:
            self._delete_calendar(mb, self._calendar(mb, cid))

    def user_cancel(self, mb: Mailbox, eid: str):
        """The user cancels a meeting they organise ("Cancel meeting" in Outlook): as `POST /events/{id}/cancel`."""
        with self.store.lock:
            ev = self._event(mb, eid)
            if not ev_rules.is_organizer(ev, mb):
                raise HttpError(400, "ErrorInvalidRequest", "Your request can't be completed. You need to be an "
                                                            "organizer to cancel a meeting.")
            ev_rules.delete(self.store, mb, ev)
            self.notifier.event_changed(mb, ev, "deleted")
            return ev

    def organizer_cancel(self, mb: Mailbox, eid: str, subject_prefix: str = "Canceled: "):
        """The (external) organizer cancelled a meeting this mailbox was invited to: Exchange processes the
        cancellation into the attendee's copy, which stays in the calendar with `isCancelled: true` (and, as
        Outlook shows it, the subject prefixed "Canceled: ") until the user removes it; a change like any other
        (new changeKey and lastModifiedDateTime, in delta, an `updated` notification)."""
        with self.store.lock:
            ev = self._event(mb, eid)
            if ev_rules.is_organizer(ev, mb):
                raise HttpError(400, "ErrorInvalidRequest", "The mailbox organises this meeting: it cancels it with "
                                                            "POST /events/{id}/cancel.")
            if not ev.props.get("isCancelled"):
                ev.props["isCancelled"] = True
                subject = ev.props.get("subject") or ""
                if subject_prefix and not subject.startswith(subject_prefix):
                    ev.props["subject"] = subject_prefix + subject
                ev_rules.touch(self.store, mb, ev)
                self.notifier.event_changed(mb, ev, "updated")
            return ev

    def user_delete(self, mb: Mailbox, eid: str):
        with self.store.lock:
            ev = self._event(mb, eid)
            ev_rules.delete(self.store, mb, ev)
            self.notifier.event_changed(mb, ev, "deleted")
            return ev


__all__ = ["GraphService", "change_key"]
