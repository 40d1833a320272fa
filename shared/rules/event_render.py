"""The Graph event body for an activity, its identity on the event, and its content hash.

Never renders ``attendees``: a CRM mirror must not mail the user's customers (prior-art §6), and a
PATCH without the property leaves whatever the user added in Outlook alone.

Our mark on every event we create is a single-value extended property (graph-facts §3.5):
id ``String {PROPERTY_GUID} Name crmActivity``, value ``<tenant>|<activity id>`` where each part is
percent-encoded, keeping only ``a-z 0-9 . _ ~ -`` literal (UTF-8, upper-case hex). So ``|`` only
ever separates the parts, the value needs no quoting inside an OData string literal, and because
Graph compares the value case-insensitively, no two different (tenant, activity) pairs can match
each other (no literal upper-case letters exist in the encoding).

A second property, ``crmVersion``, holds the activity version our last write carried (on every
create and every PATCH). A worker that finds the event changed under it (412, or a reconcile that
reads it before the push stored its link) can tell another worker's newer write from a user's edit.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from shared.rules.event_notes import BLOCK_END, BLOCK_START
from shared.rules.event_time import TimeNote, to_graph_times
from shared.rules.model import Activity, Party

PROPERTY_GUID = "835ac582-803a-4cbe-8e1f-6eb316b033d1"
PROPERTY_ID = f"String {{{PROPERTY_GUID}}} Name crmActivity"
VERSION_PROPERTY_ID = f"String {{{PROPERTY_GUID}}} Name crmVersion"
# ``$expand`` that returns the version property with an event read (GET by id; delta takes none).
VERSION_EXPAND = f"singleValueExtendedProperties($filter=id eq '{VERSION_PROPERTY_ID}')"
# A lookup of one activity's events by our property (a create whose answer was lost): what a link
# needs to adopt one, and the version each was last written from.
LOOKUP_SELECT = "id,changeKey,webLink,start,end,onlineMeeting"
# Namespace of our transactionIds; fixed forever, or retries after a deploy would duplicate events.
TRANSACTION_NAMESPACE = uuid.UUID("684205ab-e7a1-43c3-9ed5-fe78f76117bd")
CREATE_ONLY_FIELDS = ("transactionId", "singleValueExtendedProperties")
_SAFE = "abcdefghijklmnopqrstuvwxyz0123456789._~-"

LABELS = {
    "es": {"contact": "Contacto", "company": "Empresa", "deal": "Negocio", "open": "Abrir en el CRM",
           "teams": "Reunión de Microsoft Teams", "join": "Unirse a la reunión ahora"},
    "en": {"contact": "Contact", "company": "Company", "deal": "Deal", "open": "Open in CRM",
           "teams": "Microsoft Teams meeting", "join": "Join the meeting now"},
}

# Online meetings (issue 18, graph-facts-2 §5). Teams first: the provider of work accounts.
PREFERRED_PROVIDERS = ("teamsForBusiness", "skypeForBusiness", "skypeForConsumer")
ONLINE_UNAVAILABLE = "unavailable"  # ``activity.synced`` ``online_meeting`` when the calendar allows none


@dataclass(frozen=True, slots=True)
class RenderedEvent:
    event: dict[str, Any]  # the POST body (PATCH bodies drop CREATE_ONLY_FIELDS)
    content_hash: str
    notes: tuple[TimeNote, ...] = ()


def language(locale: str | None) -> str:
    """``es`` or ``en`` from a locale such as ``en-US``; Spanish unless English is asked for."""
    tag = (locale or "").replace("_", "-").lower()
    return "en" if tag == "en" or tag.startswith("en-") else "es"


def _encode(part: str) -> str:
    return "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in part)


def property_value(tenant_id: str, activity_id: str) -> str:
    return f"{_encode(tenant_id)}|{_encode(activity_id)}"


def lookup_params(value: str) -> dict[str, str]:
    """Query parameters of ``GET .../events`` that find our events carrying property ``value``."""
    query = f"singleValueExtendedProperties/Any(ep: ep/id eq '{PROPERTY_ID}' and ep/value eq '{value}')"
    return {"$filter": query, "$select": LOOKUP_SELECT, "$expand": VERSION_EXPAND}


def parse_property_value(value: str) -> tuple[str, str] | None:
    """(tenant, activity id) from our property value, None if it is not one of ours."""
    parts = value.split("|")
    if len(parts) != 2 or not all(parts):
        return None
    try:
        tenant, activity = (unquote(p, errors="strict") for p in parts)
    except UnicodeDecodeError:
        return None
    return (tenant, activity) if property_value(tenant, activity) == value else None


def transaction_id(tenant_id: str, user_id: str, activity_id: str, generation: int) -> str:
    """Graph ``transactionId`` of one create: the same inputs always give the same 36-char UUID.

    ``generation`` grows each time an event is created again after ours was removed, so a new
    create is never mistaken for a retry of the old one.
    """
    name = json.dumps([tenant_id, user_id, activity_id, generation], ensure_ascii=False)
    return str(uuid.uuid5(TRANSACTION_NAMESPACE, name))


def content_hash(event: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of what the user sees (create-only fields left out)."""
    visible = {k: v for k, v in event.items() if k not in CREATE_ONLY_FIELDS}
    canonical = json.dumps(visible, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def patch_body(event: dict[str, Any]) -> dict[str, Any]:
    """The PATCH for a rendered event: what the user sees, and the version property (our mark and
    the transactionId are set once, at the create)."""
    patch = {k: v for k, v in event.items() if k not in CREATE_ONLY_FIELDS}
    version = [p for p in event.get("singleValueExtendedProperties") or [] if p.get("id") == VERSION_PROPERTY_ID]
    if version:
        patch["singleValueExtendedProperties"] = version
    return patch


def written_version(event: dict[str, Any]) -> int | None:
    """The activity version our last write put on ``event`` (read with ``VERSION_EXPAND``); None
    when it carries none (an event written before the property existed, or the user's own)."""
    for prop in event.get("singleValueExtendedProperties") or []:
        if isinstance(prop, dict) and str(prop.get("id", "")).lower() == VERSION_PROPERTY_ID.lower():
            value = str(prop.get("value") or "")
            return int(value) if value.isdigit() else None
    return None


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _party_line(label: str, party: Party) -> str:
    bits = [_esc(party.name)]
    if party.email:
        href = "mailto:" + quote(party.email, safe="@.+-_~")
        bits.append(f'<a href="{_esc(href)}">{_esc(party.email)}</a>')
    if party.phone:
        bits.append(_esc(party.phone))
    return f"<p><b>{label}:</b> {' · '.join(bits)}</p>"


def _body_html(activity: Activity, labels: dict[str, str]) -> str:
    """The description (the user's notes once in Outlook), then our block between two marker lines
    that ``shared.rules.event_notes`` finds again in whatever HTML Outlook makes of this."""
    parts = []
    if activity.description:
        text = _esc(activity.description.replace("\r\n", "\n").replace("\r", "\n"))
        parts.append(f"<p>{text.replace(chr(10), '<br>')}</p>")
    parts.append(f'<p style="color:#888888">{BLOCK_START}</p>')
    for key in ("contact", "company", "deal"):
        party = getattr(activity, key)
        if party is not None:
            parts.append(_party_line(labels[key], party))
    parts.append(f'<p><a href="{_esc(activity.url)}">{labels["open"]}</a></p>')
    parts.append(f'<p style="color:#888888">{BLOCK_END}</p>')
    return "<html><body>" + "".join(parts) + "</body></html>"


def meeting_provider(allowed: Sequence[str]) -> str | None:
    """The online meeting provider to ask for among a calendar's ``allowedOnlineMeetingProviders``
    (Teams when allowed); None when the calendar allows none (personal accounts: ``[]`` or ``unknown``)."""
    usable = [p for p in allowed if p and p != "unknown"]
    for provider in PREFERRED_PROVIDERS:
        if provider in usable:
            return provider
    return usable[0] if usable else None


def providers_cache(calendar_id: str | None, allowed: Sequence[str]) -> str:
    """What a connection keeps of a calendar's allowed providers (read once, not on every push)."""
    return json.dumps({"calendar": calendar_id, "allowed": list(allowed)}, separators=(",", ":"))


def cached_providers(cache: str | None, calendar_id: str | None) -> tuple[str, ...] | None:
    """The allowed providers kept for ``calendar_id``; None when unknown (never read, or read for
    another calendar before a switch), so the caller reads them again."""
    if not cache:
        return None
    try:
        kept = json.loads(cache)
    except ValueError:
        return None
    if not isinstance(kept, dict) or kept.get("calendar") != calendar_id or not isinstance(kept.get("allowed"), list):
        return None
    return tuple(str(p) for p in kept["allowed"])


def join_block_html(join_url: str, locale: str | None) -> str:
    """The Teams block Outlook appends to an online meeting's body, as we write it back when a PATCH
    sends the body: Graph keeps the meeting (and its ``joinUrl``) only while the body still holds
    its join URL (graph-facts-2 §5, observed), so a PATCH that dropped it would get a new link."""
    labels = LABELS[language(locale)]
    return (f'<div><span>{"_" * 40}</span><div><b>{labels["teams"]}</b></div>'
            f'<div><a href="{_esc(join_url)}">{labels["join"]}</a></div></div>')


def with_join_block(patch: dict[str, Any], join_url: str | None, locale: str | None) -> dict[str, Any]:
    """A PATCH body that keeps the meeting's join URL in ``body`` (unchanged when there is none)."""
    body = patch.get("body")
    if not join_url or not isinstance(body, dict):
        return patch
    content = str(body.get("content") or "")
    block = join_block_html(join_url, locale)
    at = content.lower().rfind("</body>")
    content = content[:at] + block + content[at:] if at >= 0 else content + block
    return {**patch, "body": {**body, "content": content}}


def render_event(activity: Activity, *, tenant_id: str, user_id: str, generation: int = 0,
                 mailbox_time_zone: str | None = None, locale: str | None = None,
                 online_provider: str | None = None) -> RenderedEvent:
    """The Graph event for ``activity`` as seen from the mailbox's time zone and the user's locale.
    ``online_provider``: the provider for an online meeting type (``meeting_provider``); without one
    the event is a plain appointment. ``isOnlineMeeting`` is only ever sent as ``true`` (Graph ignores
    ``false`` once a meeting is online, and a plain activity never names it)."""
    times = to_graph_times(activity, mailbox_time_zone)
    subject = re.sub(r"\s*[\r\n]+\s*", " ", activity.subject).strip() or activity.type.name
    reminder = activity.reminder_minutes
    event: dict[str, Any] = {
        "subject": subject,
        "body": {"contentType": "html", "content": _body_html(activity, LABELS[language(locale)])},
        "start": times.start,
        "end": times.end,
        "isAllDay": times.is_all_day,
        "location": {"displayName": activity.location or ""},
        "isReminderOn": reminder is not None,
        "categories": [activity.type.name] if activity.type.name else [],
        "showAs": "busy",
    }
    if reminder is not None:
        event["reminderMinutesBeforeStart"] = reminder
    if activity.type.online_meeting and online_provider:
        event["isOnlineMeeting"] = True
        event["onlineMeetingProvider"] = online_provider
    event["transactionId"] = transaction_id(tenant_id, user_id, activity.id, generation)
    event["singleValueExtendedProperties"] = [
        {"id": PROPERTY_ID, "value": property_value(tenant_id, activity.id)},
        {"id": VERSION_PROPERTY_ID, "value": str(activity.version)},
    ]
    return RenderedEvent(event, content_hash(event), times.adjusted)
