"""The console's server: the CRM's side of the contract, for one demo user.

It plays the CRM backend. It keeps the CRM's activities in memory, signs its calls to the service
(``shared.rules.crm_signature``, secret ``CRM_SHARED_SECRET``), receives the service's signed callbacks
and verifies them, and reads the emulated Outlook mailbox through the Graph emulator's control API.
There is no back door: it never touches the service's tables or queues.

Routes (JSON unless said otherwise):

- ``GET /`` (the page), ``GET /static/<file>``
- ``POST /crm/callbacks``: the service's callbacks (``CRM_CALLBACK_URL``), 401 on a bad signature
- ``GET /crm/api/state``: the CRM's activities (with what the callbacks said about each one), the
  callbacks received, the activity types
- ``POST /crm/api/activities``: "Agregar actividad"; stored in the CRM, then sent as a signed
  ``activity.upserted`` when the user is connected (the CRM only pushes for connected users, so
  activities added before the connection are what "Sincronizar" loads)
- ``POST /crm/api/connect``, ``/crm/api/sync`` (backfill), ``/crm/api/disconnect``,
  ``GET /crm/api/status``: the signed calls of design §3, answered as ``{status, body}`` so the page
  can show the service's own error when there is one
- ``GET /crm/api/outlook?date=YYYY-MM-DD&days=1|7``: the mailbox's events in that window, placed in
  the mailbox's time zone as Outlook shows them, each with its calendar's name and colour
- ``GET /crm/api/calendars``, ``POST /crm/api/calendar`` ``{calendar: "default"|"dedicated"|{"id": ...}}``:
  the calendar picker, through the signed ``GET .../calendars`` and ``PUT .../calendar``
- ``GET /crm/api/settings``, ``POST /crm/api/settings`` ``{field_directions?, capture_meetings?}``: the
  tenant's sync settings, read and replaced through the signed ``GET``/``PUT /api/tenants/{tenant}/settings``
  (the PUT replaces the whole document, so what the page did not send is sent back as it is)
- ``POST /crm/api/meetings/adopt`` ``{outlook_event_id}``: "Registrar como actividad" for a meeting
  captured from Outlook (``outlook_event.*`` callbacks, kept in ``state``): a new activity of type
  meeting with that meeting's subject and times, sent as a signed ``activity.upserted`` carrying
  ``outlook_event_id`` (adoption: the service links the user's event instead of creating one)
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import requests

from shared.rules import crm_signature
from shared.rules.contract import ValidationError, parse_activity
from shared.rules.event_time import graph_all_day_dates, graph_to_utc, windows_to_iana, zone_for

STATIC = Path(__file__).resolve().parent / "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
BACKFILL_PAGE = 500  # design §3: at most 500 activities per backfill page
MAX_BODY = 1024 * 1024
MAX_CALLBACKS = 200

# The CRM's activity types: Llamada, Reunión and Tarea have the calendar flag on; Correo and Nota do not.
ACTIVITY_TYPES: list[dict[str, Any]] = [
    {"id": "call", "name": "Llamada", "show_in_calendar": True},
    {"id": "meeting", "name": "Reunión", "show_in_calendar": True, "online_meeting": True},
    {"id": "task", "name": "Tarea", "show_in_calendar": True},
    {"id": "email", "name": "Correo", "show_in_calendar": False},
    {"id": "note", "name": "Nota", "show_in_calendar": False},
]
TYPES_BY_ID = {t["id"]: t for t in ACTIVITY_TYPES}
STATUSES = ("planned", "completed", "cancelled")
ZONES = (
    "America/Bogota",
    "America/Mexico_City",
    "America/Lima",
    "America/Santiago",
    "America/Argentina/Buenos_Aires",
    "America/Sao_Paulo",
    "America/New_York",
    "America/Los_Angeles",
    "Europe/Madrid",
    "Europe/Paris",
    "Europe/London",
    "Asia/Tokyo",
    "UTC",
)
SETTINGS_KEYS = ("field_directions", "capture_meetings", "capture_body", "internal_domains")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_TIME = re.compile(r"\d{2}:\d{2}")


@dataclass
class Config:
    service_url: str  # the service, e.g. http://127.0.0.1:7071
    secrets: list[str]  # CRM_SHARED_SECRET, comma-separated when rotating: the first signs our calls
    callback_secrets: list[str] = field(default_factory=list)  # CRM_CALLBACK_SECRET: any verifies a callback
    tenant: str = "demo-crm"
    user: str = "ana"
    user_name: str = "Ana Pérez"
    upn: str = "ana@contoso.example"  # login hint, and the emulated mailbox shown in the Outlook view
    crm_time_zone: str = "America/Bogota"
    mailbox_time_zone: str = "Romance Standard Time"
    control_url: str | None = None  # the Graph emulator's control API; None with real Microsoft identity
    ca_path: str | None = None
    public_url: str = ""  # set once the server listens


@dataclass
class Crm:
    """What the CRM knows: its activities and the callbacks the service sent it."""

    activities: dict[str, dict[str, Any]] = field(default_factory=dict)
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    seen_callback_ids: set[str] = field(default_factory=set)
    rejected: int = 0
    next_number: int = 1
    # Meetings captured from Outlook (``outlook_event.*``), by outlook_event_id: the last data reported,
    # ``cancelled`` once the organizer cancelled it, and ``activity_id`` once the CRM adopted it.
    meetings: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Console:
    def __init__(self, config: Config, log: Any = None) -> None:
        self.config = config
        self.crm = Crm()
        self.log = log
        self.http = requests.Session()
        self.http.trust_env = False  # loopback only: no proxy, no REQUESTS_CA_BUNDLE games
        self.account: str | None = None
        self.control = None
        if config.control_url:
            from local.emulator.control import EmulatorControl

            self.control = EmulatorControl(config.control_url, config.ca_path, timeout=10)

    # --- start-up ---------------------------------------------------------------------------------

    def prepare_emulator(self) -> None:
        """The demo mailbox exists, and sign-in shows the consent page (a "Sí" to click)."""
        if self.control is None:
            return
        found = self._emulator_user(self.config.upn)
        if found is None:
            self.control.add_user(
                self.config.upn,
                display_name=self.config.user_name,
                time_zone=self.config.mailbox_time_zone,
                locale="es-ES",
                is_admin=True,  # may also consent for the organisation ("Organización" panel, issue 19)
            )
        self.control.set_identity(consent_mode="interactive")

    def seed_demo_activities(self, today: date) -> None:
        """Activities the CRM had before the user connected: what "Sincronizar" loads."""
        samples = [
            (
                "meeting",
                "Reunión de seguimiento con Contoso",
                2,
                "09:00",
                "10:00",
                "Renovación 2027",
                "Contoso S.A.",
                "Laura Gómez",
            ),
            ("call", "Llamada de presentación", 3, "15:30", "16:00", None, "Fabrikam Ltda.", "Pedro Ruiz"),
            (
                "email",
                "Enviar propuesta por correo",
                3,
                "11:00",
                "11:15",
                "Renovación 2027",
                "Contoso S.A.",
                None,
            ),
        ]
        for type_id, subject, days, start, end, deal, company, contact in samples:
            day = (today + timedelta(days=days)).isoformat()
            self.add_activity(
                {
                    "type_id": type_id,
                    "subject": subject,
                    "status": "planned",
                    "start_date": day,
                    "start_time": start,
                    "end_date": day,
                    "end_time": end,
                    "time_zone": self.config.crm_time_zone,
                    "deal": deal,
                    "company": company,
                    "contact": contact,
                },
                push=False,
            )

    # --- the signed contract ----------------------------------------------------------------------

    def user_path(self, action: str) -> str:
        tenant, user = quote(self.config.tenant, safe=""), quote(self.config.user, safe="")
        return f"/api/tenants/{tenant}/users/{user}/{action}"

    def call_service(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """One signed call; ``{status, body}`` (status 0 when the service cannot be reached)."""
        raw = b"" if body is None else json.dumps(body).encode()
        request_id = uuid.uuid4().hex  # new for every call: the service refuses a repeated one (409)
        signature = crm_signature.sign(self.config.secrets[0], method, path, raw, time.time(), request_id)
        headers = {
            crm_signature.HEADER: signature,
            crm_signature.REQUEST_ID_HEADER: request_id,
            "Content-Type": "application/json",
        }
        try:
            answer = self.http.request(
                method,
                self.config.service_url + path,
                data=raw or None,
                headers=headers,
                timeout=60,
                allow_redirects=False,
            )
        except requests.RequestException as error:
            return {"status": 0, "body": {"message": f"service unreachable: {type(error).__name__}"}}
        try:
            parsed: Any = answer.json()
        except ValueError:
            parsed = {"message": answer.text[:500] or answer.reason}
        return {"status": answer.status_code, "body": parsed}

    def connect(self, locale: str, login_hint: str | None) -> dict[str, Any]:
        body = {
            "return_url": f"{self.config.public_url}/",
            "time_zone": self.config.crm_time_zone,
            "locale": locale,
        }
        if login_hint:
            body["login_hint"] = login_hint
        return self.call_service("POST", self.user_path("connect"), body)

    def status(self) -> dict[str, Any]:
        answer = self.call_service("GET", self.user_path("status"))
        if answer["status"] == 200 and isinstance(answer["body"], dict):
            self.account = answer["body"].get("account") or self.account
        return answer

    def settings_path(self) -> str:
        return f"/api/tenants/{quote(self.config.tenant, safe='')}/settings"

    def settings(self) -> dict[str, Any]:
        return self.call_service("GET", self.settings_path())

    def save_settings(self, body: dict[str, Any]) -> dict[str, Any]:
        """Replace the settings with what the page sent over the current document.

        ``PUT`` replaces the whole document (a key left out takes its default), so the keys the page
        does not edit (``capture_body``, ``internal_domains``, ...) are read first and sent back."""
        current = self.settings()
        if current["status"] != 200 or not isinstance(current["body"], dict):
            return current
        document = {k: v for k, v in current["body"].items() if k in SETTINGS_KEYS}
        document.update({k: v for k, v in body.items() if k in SETTINGS_KEYS and v is not None})
        return self.call_service("PUT", self.settings_path(), document)

    def calendars(self) -> dict[str, Any]:
        """The user's writable calendars and the one in use (signed ``GET .../calendars``)."""
        return self.call_service("GET", self.user_path("calendars"))

    def switch_calendar(self, choice: Any) -> dict[str, Any]:
        """Move our events to another calendar (signed ``PUT .../calendar``)."""
        return self.call_service("PUT", self.user_path("calendar"), {"calendar": choice})

    # --- organisation mode (issue 19) ----------------------------------------------------------------

    def organization_path(self, action: str = "") -> str:
        tenant = quote(self.config.tenant, safe="")
        return f"/api/tenants/{tenant}/organization" + (f"/{action}" if action else "")

    def organization(self) -> dict[str, Any]:
        return self.call_service("GET", self.organization_path())

    def connect_organization(self, locale: str) -> dict[str, Any]:
        body = {"return_url": f"{self.config.public_url}/", "locale": locale}
        return self.call_service("POST", self.organization_path("connect"), body)

    def enable(self, mailbox: str, locale: str) -> dict[str, Any]:
        body = {"mailbox": mailbox, "time_zone": self.config.crm_time_zone, "locale": locale}
        return self.call_service("POST", self.user_path("enable"), body)

    def disconnect(self, remove_events: str) -> dict[str, Any]:
        return self.call_service("POST", self.user_path("disconnect"), {"remove_events": remove_events})

    def sync(self) -> dict[str, Any]:
        """ "Sincronizar": every activity of the user, in pages of 500 tied by the job id."""
        with self.crm.lock:
            activities = [dict(a["payload"]) for a in self.crm.activities.values()]
        pages = [activities[i : i + BACKFILL_PAGE] for i in range(0, len(activities), BACKFILL_PAGE)] or [[]]
        job_id = None
        answer: dict[str, Any] = {}
        for number, page in enumerate(pages):
            body: dict[str, Any] = {
                "activities": page,
                "last_page": number == len(pages) - 1,
                "dry_run": False,
            }
            if job_id:
                body["job_id"] = job_id
            answer = self.call_service("POST", self.user_path("backfill"), body)
            if answer["status"] not in (200, 202):
                return {**answer, "page": number + 1, "pages": len(pages)}
            job_id = (answer["body"] or {}).get("job_id") or job_id
        if job_id:
            with self.crm.lock:
                for activity in self.crm.activities.values():
                    activity["backfill_job"] = job_id
        return {**answer, "pages": len(pages), "sent": len(activities)}

    # --- activities ---------------------------------------------------------------------------------

    def add_activity(
        self, form: dict[str, Any], push: bool = True, outlook_event_id: str | None = None
    ) -> dict[str, Any]:
        """Store a new activity in the CRM; push it when the user is connected.

        With ``outlook_event_id`` the activity adopts that existing Outlook meeting."""
        with self.crm.lock:
            number = self.crm.next_number
            self.crm.next_number += 1
        activity_id = f"act-{number}"
        try:
            payload = build_activity(form, activity_id, 1, self.config)
            if outlook_event_id:
                payload["outlook_event_id"] = outlook_event_id
            parse_activity(payload)  # the CRM's form checks are the contract's
        except ValidationError as error:
            return {"status": 400, "body": error.as_json()}
        record = {"payload": payload, "created_at": _now(), "pushed": None}
        with self.crm.lock:
            self.crm.activities[activity_id] = record
        if not push:
            return {"status": 201, "body": {"activity": payload, "pushed": False}}
        connected = self.status()
        if connected["status"] != 200 or (connected["body"] or {}).get("state") != "connected":
            return {"status": 201, "body": {"activity": payload, "pushed": False}}
        envelope = {
            "id": str(uuid.uuid4()),
            "type": "activity.upserted",
            "tenant_id": self.config.tenant,
            "occurred_at": _now(),
            "data": payload,
        }
        sent = self.call_service("POST", "/api/crm/events", envelope)
        record["pushed"] = {"status": sent["status"], "body": sent["body"]}
        return {
            "status": 201 if sent["status"] == 202 else 502,
            "body": {"activity": payload, "pushed": sent["status"] == 202, "service": sent},
        }

    def adopt_meeting(self, outlook_event_id: str) -> dict[str, Any]:
        """ "Registrar como actividad": the captured meeting becomes a CRM activity linked to its event."""
        with self.crm.lock:
            meeting = self.crm.meetings.get(outlook_event_id)
            if meeting is None:
                return {"status": 404, "body": {"message": "no such captured meeting"}}
            if meeting.get("activity_id"):
                return {"status": 409, "body": {"message": "already recorded", "activity_id": meeting["activity_id"]}}
            if meeting.get("cancelled"):
                return {"status": 409, "body": {"message": "the meeting was cancelled"}}
            data = dict(meeting["data"])
            meeting["activity_id"] = ""  # claimed: a second click while this one runs gets 409
        answer = self.add_activity(meeting_form(data, self.config), outlook_event_id=outlook_event_id)
        activity = (answer["body"] or {}).get("activity") if answer["status"] in (201, 502) else None
        with self.crm.lock:
            current = self.crm.meetings.get(outlook_event_id)
            if current is not None:
                current["activity_id"] = activity["id"] if activity else None
        return answer

    # --- callbacks ------------------------------------------------------------------------------------

    def receive_callback(self, path: str, header: str | None, body: bytes, request_id: str | None = None) -> int:
        try:
            crm_signature.verify(self.config.callback_secrets, header, "POST", path, body, time.time(), request_id)
            callback = json.loads(body)
            if not isinstance(callback, dict):
                raise ValueError("not an object")
        except (crm_signature.SignatureError, ValueError) as error:
            with self.crm.lock:
                self.crm.rejected += 1
            self._print(f"callback rejected: {getattr(error, 'reason', error)}")
            return 401 if isinstance(error, crm_signature.SignatureError) else 400
        if (callback.get("tenant_id"), callback.get("user_id")) != (self.config.tenant, self.config.user):
            self._print(f"callback {callback.get('type')} for another CRM tenant or user: ignored")
            return 200  # verified, so the service did send it: an earlier run's user (the tables persist)
        with self.crm.lock:
            if callback.get("id") in self.crm.seen_callback_ids:
                return 200  # at least once: a repeat changes nothing
            self.crm.seen_callback_ids.add(callback.get("id"))
            self.crm.callbacks.append({**callback, "received_at": _now(), "verified": True})
            del self.crm.callbacks[:-MAX_CALLBACKS]
            keep_meeting(self.crm.meetings, callback)
        self._print(f"callback {callback.get('type')} {callback.get('id')} (signature verified)")
        return 200

    def state(self) -> dict[str, Any]:
        with self.crm.lock:
            callbacks = list(self.crm.callbacks)
            activities = [dict(a) for a in self.crm.activities.values()]
            rejected = self.crm.rejected
            meetings = [{**m, "data": dict(m["data"])} for m in self.crm.meetings.values()]
        outcome: dict[str, dict[str, Any]] = {}
        disconnected = None
        backfilled: dict[str, dict[str, Any]] = {}  # job id -> its backfill.completed counts
        edited: dict[str, dict[str, Any]] = {}  # activity id -> its last Outlook edit with changes
        for callback in callbacks:
            data = callback.get("data") or {}
            if callback.get("type") == "activity.changed_in_outlook" and data.get("changes"):
                edited[data.get("activity_id", "")] = {
                    "fields": sorted(data["changes"]),
                    "changes": data["changes"],
                    "conflict": bool(data.get("conflict")),
                    "changed_at": data.get("changed_at"),
                }
            if callback.get("type") == "backfill.completed" and data.get("job_id"):
                backfilled[data["job_id"]] = {"type": "backfill.completed", **data}
            elif callback.get("type", "").startswith("activity.") and data.get("activity_id"):
                outcome[data["activity_id"]] = {"type": callback["type"], **data}
            elif callback.get("type") == "connection.disconnected":
                outcome, disconnected = {}, {"type": "connection.disconnected", **data}
            elif callback.get("type") == "connection.connected":
                disconnected = None
        for activity in activities:
            activity["outlook_edit"] = edited.get(activity["payload"]["id"])
            activity["outlook"] = (
                outcome.get(activity["payload"]["id"])
                or disconnected
                or backfilled.get(activity.get("backfill_job") or "")
            )
        return {
            "tenant": self.config.tenant,
            "user": self.config.user,
            "user_name": self.config.user_name,
            "upn": self.config.upn,
            "crm_time_zone": self.config.crm_time_zone,
            "types": ACTIVITY_TYPES,
            "zones": sorted(set(ZONES) | {self.config.crm_time_zone}),
            "activities": activities,
            "callbacks": list(reversed(callbacks)),
            "rejected_callbacks": rejected,
            "meetings": sorted(meetings, key=lambda m: (str(m["data"].get("start") or ""), m["outlook_event_id"])),
            "outlook_view": self.control is not None,
        }

    # --- the emulated Outlook calendar ------------------------------------------------------------------

    def _emulator_user(self, key: str) -> dict[str, Any] | None:
        from local.emulator.control import ControlError

        assert self.control is not None
        try:
            return self.control._call("GET", f"/users/{quote(key, safe='')}")
        except ControlError as error:
            if error.status == 404:
                return None
            raise

    def outlook(self, first: date, days: int) -> dict[str, Any]:
        """The mailbox's events from ``first`` for ``days`` days, in the mailbox's time zone."""
        if self.control is None:
            return {"available": False}
        from local.emulator.control import ControlError

        account = self.account or self.config.upn  # the connected account, as status last said
        try:
            user = self._emulator_user(account)
            if user is None:
                return {"available": True, "error": f"no mailbox {account}"}
            events = self.control.events(user["id"])
            calendars = self.control.calendars(user["id"])
        except (ControlError, requests.RequestException) as error:
            return {"available": True, "error": f"emulator: {error}"}
        shown = [{"id": c["id"], "name": c["name"], "colour": calendar_colour(c)} for c in calendars]
        return {
            "available": True,
            "account": user["upn"],
            "display_name": user["display_name"],
            "calendars": shown,
            **place_events(events, user["time_zone"], first, days, calendars=shown),
        }

    def _print(self, line: str) -> None:
        if self.log:
            print(line, file=self.log, flush=True)


def keep_meeting(meetings: dict[str, dict[str, Any]], callback: dict[str, Any]) -> None:
    """What the CRM keeps of a captured meeting from one ``outlook_event.*`` callback.

    ``created``/``updated`` replace the meeting's data (an older ``changed_at`` than the one kept is a
    late repeat and changes nothing); ``cancelled`` marks it; ``deleted`` drops it unless the CRM
    recorded it as an activity (then it stays, marked gone). The adopting activity is kept throughout."""
    kind = str(callback.get("type") or "")
    data = callback.get("data") or {}
    event_id = data.get("outlook_event_id") if isinstance(data, dict) else None
    if not kind.startswith("outlook_event.") or not event_id:
        return
    kept = meetings.get(event_id)
    if kind in ("outlook_event.created", "outlook_event.updated"):
        if kept and (kept["data"].get("changed_at") or "") > (data.get("changed_at") or ""):
            return
        meetings[event_id] = {
            "outlook_event_id": event_id,
            "data": dict(data),
            "cancelled": False,
            "gone": False,
            "activity_id": (kept or {}).get("activity_id"),
            "received_at": _now(),
        }
    elif kind == "outlook_event.cancelled":
        merged = {**(kept or {}).get("data", {}), **data}
        meetings[event_id] = {
            **(kept or {"outlook_event_id": event_id, "activity_id": None, "gone": False}),
            "data": merged,
            "cancelled": True,
            "received_at": _now(),
        }
    elif kind == "outlook_event.deleted":
        if kept and kept.get("activity_id"):
            kept["gone"] = True
        else:
            meetings.pop(event_id, None)


def meeting_form(data: dict[str, Any], config: Config) -> dict[str, Any]:
    """The "Agregar actividad" form for a captured meeting: type meeting, its subject and times.

    Times are the meeting's wall-clock times in the mailbox's zone (``start_local``/``end_local`` in
    ``time_zone``), so the activity is the same instant Outlook shows."""
    start_local, end_local = str(data.get("start_local") or ""), str(data.get("end_local") or "")
    form: dict[str, Any] = {
        "type_id": "meeting",
        "status": "planned",
        "subject": str(data.get("subject") or "").strip() or "(sin asunto)",
        "time_zone": data.get("time_zone") or "UTC",
        "location": data.get("location") or "",
        "all_day": bool(data.get("all_day")),
    }
    if form["all_day"]:
        first, after = start_local[:10], end_local[:10]
        last = (date.fromisoformat(after) - timedelta(days=1)).isoformat() if _DATE.fullmatch(after) else after
        form.update(start_date=first, end_date=max(first, last))  # the form's end day is inclusive
    else:
        form.update(
            start_date=start_local[:10],
            start_time=start_local[11:16],
            end_date=end_local[:10],
            end_time=end_local[11:16],
        )
    return form


def build_activity(form: dict[str, Any], activity_id: str, version: int, config: Config) -> dict[str, Any]:
    """The contract's activity (design §3) from the "Agregar actividad" form."""
    errors: list[tuple[str, str]] = []
    type_ = TYPES_BY_ID.get(str(form.get("type_id")))
    if type_ is None:
        errors.append(("type", "choose an activity type"))
    status = form.get("status") or "planned"
    all_day = bool(form.get("all_day"))
    start_date, end_date = (
        str(form.get("start_date") or ""),
        str(form.get("end_date") or form.get("start_date") or ""),
    )
    for name, value in (("start", start_date), ("end", end_date)):
        if not _DATE.fullmatch(value):
            errors.append((name, "must be a date"))
    if all_day:
        start: str = start_date
        end = end_date
        if not errors and end_date >= start_date:
            end = (
                date.fromisoformat(end_date) + timedelta(days=1)
            ).isoformat()  # the form's end day is inclusive
    else:
        start_time, end_time = str(form.get("start_time") or ""), str(form.get("end_time") or "")
        for name, value in (("start", start_time), ("end", end_time)):
            if not _TIME.fullmatch(value):
                errors.append((name, "must have a time"))
        start, end = f"{start_date}T{start_time}:00", f"{end_date}T{end_time}:00"
    if errors:
        raise ValidationError(errors)
    activity: dict[str, Any] = {
        "id": activity_id,
        "version": version,
        "owner_user_id": config.user,
        "type": dict(type_),
        "status": status,
        "show_in_calendar": form.get("show_in_calendar", True) is not False,
        "subject": str(form.get("subject") or "").strip(),
        "description": str(form.get("description") or ""),
        "start": start,
        "end": end,
        "time_zone": form.get("time_zone") or config.crm_time_zone,
        "all_day": all_day,
        "url": f"{config.public_url}/#/activities/{activity_id}",
    }
    if form.get("location"):
        activity["location"] = str(form["location"])
    for key in ("deal", "company", "contact"):
        name = str(form.get(key) or "").strip()
        if name:
            activity[key] = {"id": f"{key}-{_slug(name)}", "name": name}
    email = str(form.get("contact_email") or "").strip()
    if email and "contact" in activity:
        activity["contact"]["email"] = email
    return activity


# Outlook's colours for a calendar left on "automatic" (no hexColor): the first one, as Outlook on the web.
AUTO_COLOUR = "#0f6cbd"
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")


def calendar_colour(calendar: dict[str, Any]) -> str:
    """The calendar's ``hexColor`` as Outlook shows it; automatic (empty) is Outlook's first colour."""
    colour = str(calendar.get("hex_color") or calendar.get("hexColor") or "")
    return colour if _HEX.match(colour) else AUTO_COLOUR


def place_events(
    events: list[dict[str, Any]],
    mailbox_zone: str,
    first: date,
    days: int,
    calendars: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Events cut into per-day pieces, wall-clock in the mailbox zone, as Outlook's day and week views;
    each in its calendar's colour (``calendars``: id, name, colour)."""
    by_id = {c["id"]: c for c in calendars or []}
    zone = zone_for(mailbox_zone)
    last = first + timedelta(days=days)
    window = (
        datetime.combine(first, datetime.min.time(), zone),
        datetime.combine(last, datetime.min.time(), zone),
    )
    placed: list[dict[str, Any]] = []
    for event in events:
        if event.get("isCancelled") or event.get("deleted"):
            continue
        common = {
            "id": event["id"],
            "subject": event.get("subject") or "",
            "location": (event.get("location") or {}).get("displayName") or "",
            "preview": (event.get("bodyPreview") or "")[:300],
            "ours": bool(event.get("singleValueExtendedProperties")),
            "web_link": event.get("webLink"),
            "calendar_id": event.get("calendarId"),
            "calendar": (by_id.get(event.get("calendarId")) or {}).get("name") or "",
            "colour": (by_id.get(event.get("calendarId")) or {}).get("colour") or AUTO_COLOUR,
            "join_url": (event.get("onlineMeeting") or {}).get("joinUrl"),
        }
        if event.get("isAllDay"):
            start_day, end_day = graph_all_day_dates(event["start"], event["end"])
            if end_day <= first or start_day >= last:
                continue
            placed.append(
                {
                    **common,
                    "all_day": True,
                    "first_day": max(start_day, first).isoformat(),
                    "last_day": (min(end_day, last) - timedelta(days=1)).isoformat(),
                    "start_label": start_day.isoformat(),
                    "end_label": (end_day - timedelta(days=1)).isoformat(),
                }
            )
            continue
        start = graph_to_utc(event["start"]).astimezone(zone)
        end = graph_to_utc(event["end"]).astimezone(zone)
        if end < window[0] or start >= window[1] or (end == window[0] and end > start):
            continue
        for offset in range(days):
            day = first + timedelta(days=offset)
            day_start = datetime.combine(day, datetime.min.time(), zone)
            day_end = datetime.combine(day + timedelta(days=1), datetime.min.time(), zone)
            piece_start, piece_end = max(start, day_start), min(end, day_end)
            if piece_start < piece_end or (start == end and day_start <= start < day_end):
                placed.append(
                    {
                        **common,
                        "all_day": False,
                        "day": day.isoformat(),
                        "start_minute": piece_start.hour * 60 + piece_start.minute,
                        "end_minute": 1440
                        if piece_end == day_end
                        else piece_end.hour * 60 + piece_end.minute,
                        "start_local": start.replace(tzinfo=None).isoformat(timespec="minutes"),
                        "end_local": end.replace(tzinfo=None).isoformat(timespec="minutes"),
                        "start_label": start.strftime("%H:%M"),
                        "end_label": end.strftime("%H:%M"),
                    }
                )
    placed.sort(
        key=lambda e: (e.get("day") or e.get("first_day"), not e["all_day"], e.get("start_minute", 0))
    )
    return {
        "time_zone": mailbox_zone,
        "iana_zone": windows_to_iana(mailbox_zone) or mailbox_zone,
        "first_day": first.isoformat(),
        "days": days,
        "events": placed,
    }


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "x"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Handler(BaseHTTPRequestHandler):
    console: Console  # set on the subclass made by ``serve``
    server_version = "crm-console"

    def log_message(self, *_: object) -> None:
        pass

    # --- plumbing ---------------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, value: Any, status: int = 200) -> None:
        self._send(status, json.dumps(value, ensure_ascii=False).encode(), "application/json; charset=utf-8")

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("too large")
        return self.rfile.read(length)

    # --- GET ----------------------------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/":
            self._static("index.html")
        elif url.path.startswith("/static/"):
            self._static(url.path.removeprefix("/static/"))
        elif url.path == "/crm/api/state":
            self._json(self.console.state())
        elif url.path == "/crm/api/status":
            self._json(self.console.status())
        elif url.path == "/crm/api/settings":
            self._json(self.console.settings())
        elif url.path == "/crm/api/calendars":
            self._json(self.console.calendars())
        elif url.path == "/crm/api/organization":
            self._json(self.console.organization())
        elif url.path == "/crm/api/outlook":
            try:
                first = date.fromisoformat(query.get("date") or "")
                days = int(query.get("days") or 1)
                if days not in (1, 7):
                    raise ValueError(days)
            except ValueError:
                self._json({"message": "date=YYYY-MM-DD and days=1|7"}, 400)
                return
            if days == 7:
                first -= timedelta(days=first.weekday())  # Outlook's work week starts on Monday here
            self._json(self.console.outlook(first, days))
        else:
            self._send(404, b"not found", "text/plain; charset=utf-8")

    def _static(self, name: str) -> None:
        files = {p.name: p for p in STATIC.iterdir() if p.is_file()}
        path = files.get(name)  # only the files in static/, by exact name: no traversal
        if path is None:
            self._send(404, b"not found", "text/plain; charset=utf-8")
            return
        self._send(200, path.read_bytes(), CONTENT_TYPES.get(path.suffix, "application/octet-stream"))

    # --- POST ---------------------------------------------------------------------------------------------

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        try:
            raw = self._body()
        except ValueError:
            self._json({"message": "body too large"}, 413)
            return
        if url.path == "/crm/callbacks":
            status = self.console.receive_callback(
                self.path,
                self.headers.get(crm_signature.HEADER),
                raw,
                self.headers.get(crm_signature.REQUEST_ID_HEADER),
            )
            self._send(status, b"", "text/plain; charset=utf-8")
            return
        # The page's own calls: JSON only, so another site's form cannot post here (CORS preflight).
        if not (self.headers.get("Content-Type") or "").startswith("application/json"):
            self._json({"message": "JSON only"}, 415)
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._json({"message": "not JSON"}, 400)
            return
        if not isinstance(body, dict):
            self._json({"message": "a JSON object, please"}, 400)
            return
        console = self.console
        if url.path == "/crm/api/connect":
            locale = body.get("locale") if body.get("locale") in ("es", "en") else "es"
            self._json(console.connect(locale, body.get("login_hint") or console.config.upn))
        elif url.path == "/crm/api/activities":
            self._json(console.add_activity(body))
        elif url.path == "/crm/api/sync":
            self._json(console.sync())
        elif url.path == "/crm/api/settings":
            sent = {k: body[k] for k in ("field_directions", "capture_meetings") if k in body}
            self._json(console.save_settings(sent))
        elif url.path == "/crm/api/calendar":
            choice = body.get("calendar")
            if choice in ("default", "dedicated") or (
                isinstance(choice, dict) and isinstance(choice.get("id"), str) and choice["id"]
            ):
                self._json(console.switch_calendar(choice))
            else:
                self._json({"status": 400, "body": {"message": "calendar: default, dedicated or {id}"}})
        elif url.path == "/crm/api/meetings/adopt":
            event_id = body.get("outlook_event_id")
            if not isinstance(event_id, str) or not event_id:
                self._json({"status": 400, "body": {"message": "outlook_event_id, please"}})
            else:
                self._json(console.adopt_meeting(event_id))
        elif url.path == "/crm/api/organization/connect":
            self._json(console.connect_organization(body.get("locale") if body.get("locale") in ("es", "en") else "es"))
        elif url.path == "/crm/api/enable":
            mailbox = body.get("mailbox")
            locale = body.get("locale") if body.get("locale") in ("es", "en") else "es"
            if not isinstance(mailbox, str) or not mailbox.strip():
                self._json({"status": 400, "body": {"message": "mailbox, please"}})
            else:
                self._json(console.enable(mailbox.strip(), locale))
        elif url.path == "/crm/api/disconnect":
            choice = (
                body.get("remove_events")
                if body.get("remove_events") in ("none", "future", "all")
                else "none"
            )
            self._json(console.disconnect(choice))
        else:
            self._json({"message": "not found"}, 404)


def serve(console: Console, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    handler = type("ConsoleHandler", (Handler,), {"console": console})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    console.config.public_url = f"http://{host}:{server.server_port}"
    return server
