"""Event model rules: create/update validation, time zones, all-day, transactionId, extended properties,
rendering ($select, $expand, Prefer: outlook.timezone / outlook.body-content-type) and $filter."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
from datetime import date, datetime, timedelta

from . import schema, timezones
from .state import Event, Mailbox, Store, change_key, ical_uid, outlook_id
from .web import HttpError

READ_ONLY = {
    "id", "changeKey", "createdDateTime", "lastModifiedDateTime", "iCalUId", "webLink", "type", "seriesMasterId",
    "isOrganizer", "hasAttachments", "bodyPreview", "onlineMeeting", "onlineMeetingUrl", "organizer",
    "responseStatus", "originalStart", "originalStartTimeZone", "originalEndTimeZone", "cancelledOccurrences",
    "isCancelled", "isDraft",
}
# Ordered as Graph writes an event.
EVENT_FIELDS = [
    "id", "createdDateTime", "lastModifiedDateTime", "changeKey", "categories", "transactionId",
    "originalStartTimeZone", "originalEndTimeZone", "iCalUId", "reminderMinutesBeforeStart", "isReminderOn",
    "hasAttachments", "subject", "bodyPreview", "importance", "sensitivity", "isAllDay", "isCancelled",
    "isOrganizer", "responseRequested", "seriesMasterId", "showAs", "type", "webLink", "onlineMeetingUrl",
    "isOnlineMeeting", "onlineMeetingProvider", "allowNewTimeProposals", "isDraft", "hideAttendees",
    "responseStatus", "body", "start", "end", "location", "locations", "recurrence", "attendees", "organizer",
    "onlineMeeting",
]
SELECTABLE = {f.lower(): f for f in list(schema.properties("event")) + ["id"]}

_EXT_ID = re.compile(
    r"^\s*(?P<type>[A-Za-z]+)\s+(?:(?P<guid>\{[0-9a-fA-F-]{36}\})\s+(?P<kind>Name|Id)\s+(?P<name>.+?)|"
    r"(?P<tag>0x[0-9a-fA-F]{1,4}))\s*$"
)


def ext_key(prop_id: str) -> tuple:
    """Extended-property identity: type and GUID case-insensitive, the name case-sensitive."""
    m = _EXT_ID.match(prop_id or "")
    if not m:
        raise HttpError(400, "ErrorInvalidProperty", f"The extended property id '{prop_id}' is not valid.")
    if m.group("tag"):
        return (m.group("type").lower(), int(m.group("tag"), 16))
    kind = m.group("kind").lower()
    name = m.group("name") if kind == "name" else m.group("name").lower()
    return (m.group("type").lower(), m.group("guid").lower(), kind, name)


def _bad(code: str, message: str, status: int = 400) -> HttpError:
    return HttpError(status, code, message)


def _parse_side(spec, label: str) -> tuple[datetime, str]:
    if not isinstance(spec, dict) or spec.get("dateTime") is None:
        raise _bad("ErrorInvalidRequest", f"The '{label}' property must include dateTime and timeZone.")
    tz = spec.get("timeZone") or "UTC"
    try:
        timezones.resolve(tz)
    except timezones.TimeZoneNotSupported as exc:
        raise _bad("TimeZoneNotSupportedException", str(exc)) from exc
    try:
        wall = timezones.parse_wall_clock(spec["dateTime"])
    except timezones.BadDateTime as exc:
        raise _bad("RequestBodyRead", str(exc)) from exc
    return wall, tz


def apply_times(ev: Event, start_spec, end_spec, is_all_day: bool) -> None:
    (s_wall, s_tz), (e_wall, e_tz) = _parse_side(start_spec, "start"), _parse_side(end_spec, "end")
    if is_all_day:
        if any((w.hour, w.minute, w.second, w.microsecond) != (0, 0, 0, 0) for w in (s_wall, e_wall)):
            raise _bad("ErrorInvalidRequest", "If the event is an all-day event (isAllDay true), its start and "
                                              "end time must be set to midnight.")
        if s_tz.lower() != e_tz.lower():
            raise _bad("ErrorInvalidRequest", "If the event is an all-day event (isAllDay true), its start and "
                                              "end must be in the same time zone.")
        if e_wall.date() <= s_wall.date():
            raise _bad("ErrorInvalidRequest", "The duration of an event marked as All day must be at least 24 "
                                              "hours.")
        ev.start_date, ev.end_date, ev.start, ev.end = s_wall.date(), e_wall.date(), None, None
    else:
        start = timezones.to_utc(s_wall, timezones.resolve(s_tz))
        end = timezones.to_utc(e_wall, timezones.resolve(e_tz))
        if end < start:
            raise _bad("ErrorCalendarEndDateIsEarlierThanStartDate", "The end date is earlier than the start "
                                                                     "date.")
        ev.start, ev.end, ev.start_date, ev.end_date = start, end, None, None
    ev.is_all_day = is_all_day
    ev.start_tz, ev.end_tz = s_tz, e_tz


def current_spec(ev: Event, side: str) -> dict:
    tz = ev.start_tz if side == "start" else ev.end_tz
    if ev.is_all_day:
        d = ev.start_date if side == "start" else ev.end_date
        return {"dateTime": d.isoformat() + "T00:00:00", "timeZone": tz}
    inst = ev.start if side == "start" else ev.end
    return timezones.render(inst, tz)


def _validated(body) -> dict:
    try:
        return schema.validate_entity(body, "event")
    except schema.SchemaError as exc:
        raise _bad("RequestBodyRead", exc.message) from exc


def _ext_list(value) -> list[tuple[str, str]]:
    out = []
    for item in value or []:
        if not isinstance(item, dict) or "id" not in item:
            raise _bad("ErrorInvalidProperty", "Each extended property needs an id and a value.")
        ext_key(item["id"])
        out.append((item["id"], "" if item.get("value") is None else str(item["value"])))
    return out


def _set_ext(ev: Event, pairs: list[tuple[str, str]]) -> None:
    for pid, value in pairs:
        key = ext_key(pid)
        for existing in list(ev.ext):
            if ext_key(existing) == key:
                del ev.ext[existing]
        ev.ext[pid] = value


def check_if_match(ev: Event, if_match: str | None) -> None:
    """`If-Match` on PATCH/DELETE: the item's etag (`W/"<changeKey>"`, the bare changeKey accepted too) or `*`;
    anything else -> 412 ErrorIrresolvableConflict, Exchange's answer when the changeKey moved on
    (seen in Graph logs, e.g. mguessan/davmail#491)."""
    if not if_match or if_match.strip() == "*":
        return
    wanted = {v.strip().removeprefix("W/").strip('"') for v in if_match.split(",")}
    if ev.change_key not in wanted:
        raise _bad("ErrorIrresolvableConflict", "The send or update operation could not be performed because the "
                                                "change key passed in the request does not match the current change "
                                                "key for the item.", 412)


# --- how Exchange stores an HTML body ------------------------------------------------------------------
# Graph never returns the HTML it was given. Exchange wraps it in its own document (graph-facts-2 §7:
# `<html>\r\n<head>\r\n<meta http-equiv="Content-Type" content="text/html; charset=utf-8">…`), and Outlook on
# the web rewrites the markup: bare `<div>`/`<p>` become `elementToProof` elements with inline styles
# (OfficeDev/office-js#5482), ids get an `x_` prefix (OfficeDev/office-js#828), line breaks and double spaces
# come back as `<br>\r\n` and `&nbsp; `. The emulator does the same, idempotently, so a client that diffs
# bodies byte for byte sees a change on every read-back, as it would against Outlook.
OUTLOOK_HEAD = ('<html>\r\n<head>\r\n<meta http-equiv="Content-Type" content="text/html; charset=utf-8">\r\n'
                '<style type="text/css" style="display:none">\r\n<!--\r\np\r\n\t{margin-top:0;\r\n'
                '\tmargin-bottom:0}\r\n-->\r\n</style>\r\n</head>\r\n<body dir="ltr">\r\n')
OUTLOOK_FONT = ("font-family: Aptos, Aptos_EmbeddedFont, Aptos_MSFontService, Calibri, Helvetica, sans-serif; "
                "font-size: 12pt; color: rgb(0, 0, 0);")
_BODY_INNER = re.compile(r"<body\b[^>]*>(?P<inner>.*)</body\s*>", re.I | re.S)


def outlook_html(content: str) -> str:
    found = _BODY_INNER.search(content)
    inner = found.group("inner") if found else re.sub(r"(?is)</?html\b[^>]*>|<head\b.*?</head\s*>", "", content)
    inner = re.sub(r"(?i)<div>", f'<div class="elementToProof" style="{OUTLOOK_FONT}">', inner)
    inner = re.sub(r"(?i)<p>", f'<p class="elementToProof" style="{OUTLOOK_FONT}">', inner)
    inner = re.sub(r'(?i)(<[a-z][^>]*\s)id="(?!x_)', r'\1id="x_', inner)
    inner = re.sub(r"(?i)(<br\s*/?>)(?!\r\n)", "\\1\r\n", inner)
    inner = re.sub(r"(?i)(</(?:p|div)>)(?!\r\n)", "\\1\r\n", inner)
    inner = re.sub(r"(?<=\S)  (?=\S)", "&nbsp; ", inner)
    return OUTLOOK_HEAD + inner.strip("\r\n") + "\r\n</body>\r\n</html>\r\n"


def stored_body(body):
    """The body as Exchange keeps it: HTML rewritten (above); text kept as text (answered as wrapped HTML)."""
    if not isinstance(body, dict) or (body.get("contentType") or "text").lower() != "html":
        return body
    return {"contentType": "html", "content": outlook_html(body.get("content") or "")}


def online_providers(mb: Mailbox) -> list[str]:
    """`allowedOnlineMeetingProviders` of the mailbox's calendars: Teams for work accounts, none for personal."""
    return ["teamsForBusiness"] if getattr(mb, "account_kind", "work") == "work" else []


def _join_block(join_url: str) -> str:
    return ('<div style="width:100%"><span style="white-space:nowrap">________________________________________'
            '</span><div><b>Microsoft Teams meeting</b></div><div><a href="' + join_url + '">Join the meeting now'
            '</a></div></div>')


def _online_meeting(mb: Mailbox, ev: Event, body: dict, *, created: bool) -> None:
    """`isOnlineMeeting`/`onlineMeetingProvider` (graph-facts-2 §5): with a provider the calendar allows, the event
    gets `onlineMeeting.joinUrl` and Outlook appends the Teams join block to the body. Once on, it cannot be turned
    off (a PATCH with `false` is ignored). A PATCH whose body drops the join URL gets a new link (observed,
    microsoftgraph/microsoft-graph-docs-contrib#311/#1895). Personal accounts: no provider allowed, the event is
    created without a link (observed, Microsoft Q&A 5645130)."""
    meeting = ev.props.get("onlineMeeting")
    if meeting and "body" in body and meeting["joinUrl"] not in str((ev.props.get("body") or {}).get("content")):
        meeting = None  # the body lost the join block: Outlook makes a new meeting
    wants = body.get("isOnlineMeeting") is True or (meeting is not None)
    if not wants:
        if created or not ev.props.get("onlineMeeting"):
            ev.props["isOnlineMeeting"] = False
        return
    allowed = online_providers(mb)
    provider = body.get("onlineMeetingProvider") or (allowed[0] if allowed else "unknown")
    if provider not in allowed:
        ev.props["isOnlineMeeting"], ev.props["onlineMeetingProvider"] = False, "unknown"
        ev.props["onlineMeeting"] = None
        return
    if meeting is None:
        token = secrets.token_hex(16)
        meeting = {"joinUrl": f"https://teams.microsoft.com/l/meetup-join/19%3ameeting_{token}%40thread.v2/0"
                              f"?context=%7b%22Tid%22%3a%22{mb.tenant_id}%22%2c%22Oid%22%3a%22{mb.oid}%22%7d",
                   "conferenceId": str(secrets.randbelow(10 ** 9)), "tollNumber": None}
        current = ev.props.get("body") or {"contentType": "html", "content": ""}
        content = current.get("content") or ""
        if (current.get("contentType") or "text").lower() != "html":
            content = "<html><body><p>" + html.escape(content).replace("\n", "<br>") + "</p></body></html>"
        block = _join_block(meeting["joinUrl"])
        at = content.lower().rfind("</body>")
        content = content[:at] + block + content[at:] if at >= 0 else content + block
        ev.props["body"] = {"contentType": "html", "content": outlook_html(content)}
    ev.props["isOnlineMeeting"], ev.props["onlineMeetingProvider"] = True, provider
    ev.props["onlineMeeting"] = meeting


def _apply_props(ev: Event, body: dict) -> None:
    for k, v in body.items():
        if k in READ_ONLY or k in ("start", "end", "isAllDay", "transactionId", "singleValueExtendedProperties",
                                   "multiValueExtendedProperties", "extensions", "attachments",
                                   "isOnlineMeeting", "onlineMeetingProvider"):
            continue
        if k == "body":
            v = stored_body(v)
        ev.props[k] = v
        if k == "location":
            ev.props["locations"] = [v] if v and v.get("displayName") else []


def fingerprint(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def create(store: Store, mb: Mailbox, calendar_id: str, raw_body) -> tuple[Event, bool]:
    """Returns (event, created). created=False when a repeated transactionId returned the existing event."""
    body = _validated(raw_body)
    if "start" not in body or "end" not in body or body["start"] is None or body["end"] is None:
        raise _bad("ErrorInvalidRequest", "An event must have both start and end.")
    tx = body.get("transactionId")
    fp = fingerprint(body)
    if tx and store.settings.transaction_id_mode == "dedupe":
        for other in mb.events.values():
            if not other.deleted and other.transaction_id == tx:
                if other.creation_fingerprint == fp:
                    return other, False
                raise _bad("ErrorDuplicateTransactionId", "Your request can't be completed. The TransactionId "
                                                          "specified in the request has already been used to "
                                                          "create a different event.")
    now = store.clock.now()
    mb.seq += 1
    ev = Event(id=outlook_id(), mailbox_id=mb.oid, calendar_id=calendar_id, ical_uid=ical_uid(), created=now,
               modified=now, change_key=change_key(), seq=mb.seq, props={}, start_tz="UTC", end_tz="UTC",
               is_all_day=False, transaction_id=tx, creation_fingerprint=fp)
    apply_times(ev, body["start"], body["end"], bool(body.get("isAllDay")))
    _apply_props(ev, body)
    _online_meeting(mb, ev, body, created=True)
    _set_ext(ev, _ext_list(body.get("singleValueExtendedProperties")))
    mb.events[ev.id] = ev
    return ev, True


def update(store: Store, mb: Mailbox, ev: Event, raw_body) -> Event:
    body = _validated(raw_body)
    if "transactionId" in body and body["transactionId"] != ev.transaction_id:
        raise _bad("ErrorInvalidRequest", "The transactionId of an event cannot be changed after it is created.")
    if {"start", "end", "isAllDay"} & body.keys():
        is_all_day = bool(body["isAllDay"]) if body.get("isAllDay") is not None else ev.is_all_day
        start = body.get("start") or current_spec(ev, "start")
        end = body.get("end") or current_spec(ev, "end")
        apply_times(ev, start, end, is_all_day)
    _apply_props(ev, body)
    _online_meeting(mb, ev, body, created=False)
    _set_ext(ev, _ext_list(body.get("singleValueExtendedProperties")))
    touch(store, mb, ev)
    return ev


def touch(store: Store, mb: Mailbox, ev: Event) -> None:
    mb.seq += 1
    ev.seq = mb.seq
    ev.modified = store.clock.now()
    ev.change_key = change_key()


def delete(store: Store, mb: Mailbox, ev: Event) -> None:
    touch(store, mb, ev)
    ev.deleted = True


# --- rendering ------------------------------------------------------------------------------------------
def _text_of(body: dict) -> str:
    content = body.get("content") or ""
    if (body.get("contentType") or "text").lower() == "html":
        content = re.sub(r"(?is)<head\b.*?</head\s*>|<style\b.*?</style\s*>", " ", content)
        content = re.sub(r"<[^>]+>", " ", content)
        content = html.unescape(re.sub(r"\s+", " ", content)).strip()
    return content


def _body_as(body: dict, wanted: str) -> dict:
    ctype = (body.get("contentType") or "text").lower()
    if wanted == "text":
        return {"contentType": "text", "content": _text_of(body)}
    if ctype == "html":
        return {"contentType": "html", "content": body.get("content") or ""}
    escaped = html.escape(body.get("content") or "").replace("\n", "<br>\r\n")
    return {"contentType": "html", "content": "<html>\r\n<head>\r\n<meta http-equiv=\"Content-Type\" "
            "content=\"text/html; charset=utf-8\">\r\n</head>\r\n<body>\r\n" + escaped + "\r\n</body>\r\n</html>\r\n"}


# --- recurring series (calendarView/delta expands them) -----------------------------------------------------
_OCCURRENCE = b"\x10"  # an occurrence id: the master's id bytes + this marker + the ISO date
_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MAX_OCCURRENCES = 1000


def is_series(ev: Event) -> bool:
    """A series calendarView/delta expands (timed, a daily or weekly pattern); any other is listed as itself."""
    rec = ev.props.get("recurrence")
    pattern = rec.get("pattern") if isinstance(rec, dict) else None
    return isinstance(pattern, dict) and pattern.get("type") in ("daily", "weekly") and not ev.is_all_day


def occurrence_id(master_id: str, day) -> str:
    return base64.urlsafe_b64encode(base64.urlsafe_b64decode(master_id) + _OCCURRENCE + day.isoformat().encode()
                                    ).decode("ascii")


def parse_occurrence_id(eid: str):
    """(master id, date) of an occurrence id, else None."""
    try:
        raw = base64.urlsafe_b64decode(eid)
    except (ValueError, TypeError):
        return None
    master, marker, day = raw[:-11], raw[-11:-10], raw[-10:]
    if marker != _OCCURRENCE:
        return None
    try:
        return base64.urlsafe_b64encode(master).decode("ascii"), date.fromisoformat(day.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None


def occurrences(ev: Event) -> list[tuple[date, datetime, datetime]]:
    """The occurrences of a timed series (daily or weekly patterns; endDate, numbered or noEnd ranges, noEnd
    stopping at MAX_OCCURRENCES): (date, start UTC, end UTC), at the master's wall-clock time in its zone."""
    rec = ev.props.get("recurrence") or {}
    pattern, rng = rec.get("pattern") or {}, rec.get("range") or {}
    zone = timezones.resolve(ev.start_tz)
    first = ev.start.astimezone(zone)
    length = ev.end - ev.start
    interval = max(1, int(pattern.get("interval") or 1))
    kind = str(pattern.get("type") or "daily")
    start_day = date.fromisoformat(rng["startDate"]) if rng.get("startDate") else first.date()
    end_day = date.fromisoformat(rng["endDate"]) if rng.get("type") == "endDate" and rng.get("endDate") else None
    count = int(rng.get("numberOfOccurrences") or 0) if rng.get("type") == "numbered" else 0
    wanted = {_WEEKDAYS.index(d.lower()) for d in pattern.get("daysOfWeek") or [] if d.lower() in _WEEKDAYS}
    out: list[tuple[date, datetime, datetime]] = []
    day = start_day
    while len(out) < (count or MAX_OCCURRENCES) and (end_day is None or day <= end_day):
        if kind == "daily":
            hit = (day - start_day).days % interval == 0
        elif kind == "weekly":
            weeks = ((day - timedelta(days=day.weekday())) - (start_day - timedelta(days=start_day.weekday()))).days // 7
            hit = weeks % interval == 0 and day.weekday() in (wanted or {start_day.weekday()})
        else:
            return []
        if hit:
            start = timezones.to_utc(datetime.combine(day, first.time()), zone)
            out.append((day, start, start + length))
        day += timedelta(days=1)
    return out


def render_occurrence(ev: Event, mb: Mailbox, day: date, start: datetime, end: datetime, *, tz: str = "UTC",
                      body_type: str = "html") -> dict:
    """One occurrence as calendarView returns it: type occurrence, its master's id, its own id and iCalUId."""
    out = render(ev, mb, tz=tz, body_type=body_type)
    out.update({
        "id": occurrence_id(ev.id, day), "type": "occurrence", "seriesMasterId": ev.id, "recurrence": None,
        "iCalUId": hashlib.sha256(f"{ev.ical_uid}/{day.isoformat()}".encode()).hexdigest().upper(),
        "start": timezones.render(start, tz), "end": timezones.render(end, tz),
        "originalStart": timezones.format_utc_z(start),
    })
    return out


def organizer_of(ev: Event, mb: Mailbox) -> dict:
    owner = {"emailAddress": {"name": mb.display_name, "address": mb.upn}}
    return ev.props.get("organizer") or owner  # set only by the control API's user_create (an invitation)


def is_organizer_of(organizer: dict, mb: Mailbox) -> bool:
    return str(organizer["emailAddress"].get("address") or "").lower() == mb.upn.lower()


def is_organizer(ev: Event, mb: Mailbox) -> bool:
    return is_organizer_of(organizer_of(ev, mb), mb)


def render(ev: Event, mb: Mailbox, *, tz: str = "UTC", body_type: str = "html", select: list[str] | None = None,
           expand_ext: list[str] | None = None, base: str = "") -> dict:
    p = ev.props
    body = p.get("body") or {"contentType": "text", "content": ""}
    if ev.is_all_day:
        start, end = timezones.render_date(ev.start_date, tz), timezones.render_date(ev.end_date, tz)
    else:
        start, end = timezones.render(ev.start, tz), timezones.render(ev.end, tz)
    location = p.get("location") or {"displayName": "", "locationType": "default", "uniqueIdType": "unknown",
                                     "address": {}, "coordinates": {}}
    organizer = organizer_of(ev, mb)
    is_organizer = is_organizer_of(organizer, mb)
    full = {
        "id": ev.id,
        "createdDateTime": timezones.format_utc_z(ev.created),
        "lastModifiedDateTime": timezones.format_utc_z(ev.modified),
        "changeKey": ev.change_key,
        "categories": p.get("categories") or [],
        "transactionId": ev.transaction_id,
        "originalStartTimeZone": ev.start_tz,
        "originalEndTimeZone": ev.end_tz,
        "iCalUId": ev.ical_uid,
        "reminderMinutesBeforeStart": p.get("reminderMinutesBeforeStart", 15),
        "isReminderOn": p.get("isReminderOn", True),
        "hasAttachments": False,
        "subject": p.get("subject") or "",
        "bodyPreview": _text_of(body)[:255],
        "importance": p.get("importance") or "normal",
        "sensitivity": p.get("sensitivity") or "normal",
        "isAllDay": ev.is_all_day,
        "isCancelled": bool(p.get("isCancelled")),  # set only by the control API's organizer_cancel
        "isOrganizer": is_organizer,
        "responseRequested": p.get("responseRequested", True),
        "seriesMasterId": None,
        "showAs": p.get("showAs") or "busy",
        "type": "seriesMaster" if p.get("recurrence") else "singleInstance",  # occurrences are not expanded
        "webLink": f"https://outlook.office365.com/owa/?itemid={ev.id}&exvsurl=1&path=/calendar/item",
        "onlineMeetingUrl": None,
        "isOnlineMeeting": p.get("isOnlineMeeting", False),
        "onlineMeetingProvider": p.get("onlineMeetingProvider") or "unknown",
        "allowNewTimeProposals": p.get("allowNewTimeProposals", True),
        "isDraft": False,
        "hideAttendees": p.get("hideAttendees", False),
        "responseStatus": {"response": "organizer" if is_organizer else "notResponded",
                           "time": "0001-01-01T00:00:00Z"},
        "body": _body_as(body, body_type),
        "start": start,
        "end": end,
        "location": location,
        "locations": p.get("locations") or [],
        "recurrence": p.get("recurrence"),
        "attendees": p.get("attendees") or [],
        "organizer": organizer,
        "onlineMeeting": p.get("onlineMeeting"),
    }
    if ev.transaction_id is None:
        del full["transactionId"]  # "only returned in a response payload if an app has set it"
    out = {"@odata.etag": f'W/"{ev.change_key}"'}
    if select:
        out["id"] = ev.id
        for name in select:
            if name in full:
                out[name] = full[name]
            elif name == "transactionId":
                pass
            else:
                out[name] = p.get(name)
    else:
        out.update(full)
    if expand_ext is not None:
        wanted = {ext_key(i) for i in expand_ext}
        matched = [{"id": pid, "value": v} for pid, v in ev.ext.items() if ext_key(pid) in wanted]
        if matched:
            out["singleValueExtendedProperties@odata.context"] = (
                f"{base}/$metadata#users('{mb.oid}')/events('{ev.id}')/singleValueExtendedProperties")
            out["singleValueExtendedProperties"] = matched
    return out


def parse_select(raw: str | None) -> list[str] | None:
    if not raw:
        return None
    out = []
    for name in (n.strip() for n in raw.split(",")):
        if not name:
            continue
        canon = SELECTABLE.get(name.lower())
        if canon is None:
            raise _bad("RequestBroker--ParseUri", f"Could not find a property named '{name}' on type "
                                                  "'microsoft.graph.event'.")
        out.append(canon)
    return out


_EXPAND = re.compile(r"^singleValueExtendedProperties\s*\(\s*\$filter\s*=\s*(?P<f>.+)\)\s*$", re.I)
_ID_EQ = re.compile(r"id\s+eq\s+'((?:[^']|'')*)'", re.I)


def parse_expand(raw: str | None) -> list[str] | None:
    """Only `singleValueExtendedProperties($filter=id eq '...' [or id eq '...'])` is accepted: Graph documents
    no way to read all extended properties of an item in one call."""
    if not raw:
        return None
    m = _EXPAND.match(raw.strip())
    if not m:
        raise _bad("ErrorInvalidRequest", "Only $expand=singleValueExtendedProperties($filter=id eq '...') is "
                                          "supported on events by this emulator.")
    ids = [v.replace("''", "'") for v in _ID_EQ.findall(m.group("f"))]
    if not ids:
        raise _bad("ErrorInvalidUrlQueryFilter", "The $filter inside $expand must compare id.")
    return ids


_ANY = re.compile(
    r"^\s*singleValueExtendedProperties/any\(\s*(?P<v>\w+)\s*:\s*(?P<body>.+)\)\s*$", re.I | re.S)


def parse_filter(raw: str | None):
    """Returns a predicate over events. Supports the documented extended-property forms:
    `singleValueExtendedProperties/Any(ep: ep/id eq '{id}' and ep/value eq|ne '{v}')` and the
    `contains(ep/value, '..')` / `startswith(ep/value, '..')` variants (value comparison case-insensitive)."""
    if not raw:
        return None
    m = _ANY.match(raw)
    if not m:
        raise _bad("ErrorInvalidUrlQueryFilter", f"The $filter '{raw}' is not supported by this emulator.")
    v = re.escape(m.group("v"))
    body = m.group("body")
    id_m = re.search(rf"{v}/id\s+eq\s+'((?:[^']|'')*)'", body, re.I)
    if not id_m:
        raise _bad("ErrorInvalidUrlQueryFilter", "The extended-property filter must compare the id.")
    key = ext_key(id_m.group(1).replace("''", "'"))
    val_m = re.search(rf"{v}/value\s+(eq|ne)\s+'((?:[^']|'')*)'", body, re.I)
    fn_m = re.search(rf"(contains|startswith)\(\s*{v}/value\s*,\s*'((?:[^']|'')*)'\s*\)", body, re.I)
    op, operand = None, None
    if val_m:
        op, operand = val_m.group(1).lower(), val_m.group(2).replace("''", "'").lower()
    elif fn_m:
        op, operand = fn_m.group(1).lower(), fn_m.group(2).replace("''", "'").lower()

    def pred(ev: Event) -> bool:
        for pid, value in ev.ext.items():
            if ext_key(pid) != key:
                continue
            val = value.lower()
            if op is None:
                return True
            if op == "eq":
                return val == operand
            if op == "ne":
                return val != operand
            if op == "contains":
                return operand in val
            return val.startswith(operand)
        return False

    return pred
