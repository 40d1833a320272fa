"""Meetings booked in Outlook, captured for the CRM (issue 17), decided. Pure; the delta reconcile
(``shared.flows.reconcile``) reads Graph and the ``CapturedEvents`` table and applies what is
decided here.

The same delta pass that reconciles our events reads every other event of the window; each one
is decided here:

- **Scope** (``scope_of``): the tenant's ``capture_meetings`` (``off`` -> nothing at all), the
  user's opt-out at connect (``capture: false`` -> nothing at all), the owner's domains (the
  domains of the connected account's UPN and primary address, plus the tenant's
  ``internal_domains``), the sync window and the mailbox's time zone.
- **What is a captured meeting** (``skip_reason``): never one of ours (the flow leaves out every
  event a link names, and checks our extended property on any event carrying a ``transactionId``),
  never ``private``/``confidential`` (``sensitivity``), never outside the window, never an
  appointment without attendees, and with ``external`` only a meeting with at least one attendee
  or an organizer whose address is outside the owner's domains.
- **A series** is reported as its master, with its ``recurrence``; delta lists occurrences
  (``seriesMasterId``), which the flow replaces by their master read once per pass
  (``master_id_of``). Occurrences are never expanded.
- **Once per real change**: per captured event the table remembers the ``changeKey`` and the hash
  of what was last reported (``Reported``). The same changeKey -> nothing (a replayed delta page,
  a new round after a resync or a restart); another changeKey with the same reported content (an
  Exchange-internal bump) -> only the changeKey is remembered; otherwise ``created`` (never
  reported) or ``updated``. ``isCancelled`` -> ``cancelled`` once; a 404 on a removed one ->
  ``deleted`` (``reason: deleted``); a reported meeting that no longer qualifies (made private,
  moved out of the window, no outsider left) -> ``deleted`` with ``reason: no_longer_captured``,
  and the row is forgotten, so it is ``created`` again if it qualifies again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared.rules.event_notes import body_text
from shared.rules.event_time import graph_to_utc, is_iana_zone, windows_to_iana, zone_for
from shared.rules.field_diff import times_of
from shared.rules.tenant_settings import CAPTURE_ALL, CAPTURE_EXTERNAL, TenantSettings

CREATED = "outlook_event.created"
UPDATED = "outlook_event.updated"
CANCELLED = "outlook_event.cancelled"
DELETED = "outlook_event.deleted"
KINDS = (CREATED, UPDATED, CANCELLED, DELETED)

ACTIVE = "active"
CANCELLED_STATE = "cancelled"

# Why an event is not (or no longer) captured; stable strings for logs and tests.
PRIVATE = "private"
NO_ATTENDEES = "no_attendees"
INTERNAL = "internal_only"
OUTSIDE_WINDOW = "outside_window"
UNREADABLE = "unreadable"
HIDDEN_SENSITIVITY = frozenset({"private", "confidential"})


@dataclass(frozen=True, slots=True)
class CaptureScope:
    mode: str  # external | all
    body: bool
    owner_domains: frozenset[str]
    window: tuple[datetime, datetime]
    time_zone: str | None  # the mailbox's zone, IANA (None when unknown: local times are UTC)


def domain_of(address: Any) -> str | None:
    if not isinstance(address, str) or "@" not in address:
        return None
    return address.rsplit("@", 1)[1].strip().lower().rstrip(".") or None


def scope_of(
    settings: TenantSettings,
    *,
    opted_in: bool,
    account_addresses: tuple[str | None, ...],
    window: tuple[datetime, datetime],
    mailbox_time_zone: str | None,
) -> CaptureScope | None:
    """What this pass captures for one user; None = nothing at all."""
    if not opted_in or settings.capture_meetings not in (CAPTURE_EXTERNAL, CAPTURE_ALL):
        return None
    domains = {d for d in (domain_of(a) for a in account_addresses) if d}
    domains.update(settings.internal_domains)
    zone = windows_to_iana(mailbox_time_zone) or (mailbox_time_zone if is_iana_zone(mailbox_time_zone) else None)
    return CaptureScope(settings.capture_meetings, settings.capture_body, frozenset(domains), window, zone)


def scope_key(scope: CaptureScope | None) -> str:
    """What the delta position was read with: a different key starts a new round (initial capture)."""
    if scope is None:
        return "off"
    return f"{scope.mode}:{','.join(sorted(scope.owner_domains))}"


@dataclass(frozen=True, slots=True)
class Reported:
    """What was last reported about one captured event (a ``CapturedEvents`` row)."""

    event_id: str
    change_key: str | None
    content_hash: str
    state: str = ACTIVE
    series: bool = False  # a series master: delta lists only its occurrences, and their removals by id alone


@dataclass(frozen=True, slots=True)
class Report:
    """Send ``kind`` with ``data``; then remember ``remember`` (None: forget the row)."""

    kind: str
    event_id: str
    data: dict[str, Any]
    remember: Reported | None


@dataclass(frozen=True, slots=True)
class Remember:
    """Nothing to report; store the new changeKey so the next pass skips the event at once."""

    reported: Reported


@dataclass(frozen=True, slots=True)
class Skip:
    reason: str


@dataclass(frozen=True, slots=True)
class VerifyRemoved:
    """Delta says removed (deleted, or moved out of the window): read it by id first."""

    event_id: str


CapturePlan = Report | Remember | Skip | VerifyRemoved


def master_id_of(item: dict[str, Any]) -> str | None:
    """The series master an occurrence or exception belongs to (None for anything else)."""
    if item.get("type") in ("occurrence", "exception") and item.get("seriesMasterId"):
        return str(item["seriesMasterId"])
    return None


def needs_ownership_check(item: dict[str, Any], reported: Reported | None) -> bool:
    """An event never reported that an app created through Graph (it carries a ``transactionId``)
    may be one of ours whose link is not stored yet: the flow reads our property before capturing."""
    return reported is None and bool(item.get("transactionId"))


def _address(party: Any) -> dict[str, Any]:
    email = party.get("emailAddress") if isinstance(party, dict) else None
    if not isinstance(email, dict):
        email = {}
    return {"name": email.get("name") or None, "address": (email.get("address") or "").strip().lower() or None}


def _attendees(item: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for attendee in item.get("attendees") or []:
        if not isinstance(attendee, dict):
            continue
        status = attendee.get("status") or {}
        out.append(
            {
                **_address(attendee),
                "type": attendee.get("type") or "required",
                "response": (status.get("response") if isinstance(status, dict) else None) or "none",
            }
        )
    return out


def skip_reason(item: dict[str, Any], scope: CaptureScope) -> str | None:
    """Why this event (not ours) is not captured; None when it is."""
    if str(item.get("sensitivity") or "normal").lower() in HIDDEN_SENSITIVITY:
        return PRIVATE
    attendees = _attendees(item)
    if not attendees:
        return NO_ATTENDEES
    try:
        times = times_of(item)
    except (KeyError, TypeError, ValueError):
        return UNREADABLE
    start, end = scope.window
    series = bool(item.get("recurrence"))  # a master starts at its first occurrence, maybe long ago
    if times.start_instant() >= end or (not series and times.end_instant() <= start):
        return OUTSIDE_WINDOW
    if scope.mode == CAPTURE_EXTERNAL:
        parties = [a["address"] for a in attendees] + [_address(item.get("organizer"))["address"]]
        if not any((d := domain_of(p)) and d not in scope.owner_domains for p in parties):
            return INTERNAL
    return None


def _local(value: dict[str, str], zone: str | None) -> str:
    moment = graph_to_utc(value).astimezone(zone_for(zone) if zone else UTC)
    return moment.replace(tzinfo=None).isoformat(timespec="seconds")


def _recurrence(item: dict[str, Any]) -> dict[str, Any] | None:
    value = item.get("recurrence")
    if not isinstance(value, dict):
        return None
    return {"pattern": value.get("pattern"), "range": value.get("range")}


def callback_data(item: dict[str, Any], scope: CaptureScope) -> dict[str, Any]:
    """The ``outlook_event.created``/``updated``/``cancelled`` payload of one captured meeting."""
    times = times_of(item)
    location = item.get("location") or {}
    online = item.get("onlineMeeting") or {}
    join = (online.get("joinUrl") if isinstance(online, dict) else None) or item.get("onlineMeetingUrl")
    data: dict[str, Any] = {
        "outlook_event_id": item["id"],
        "ical_uid": item.get("iCalUId"),
        "subject": " ".join(str(item.get("subject") or "").split()),
        "start": times.start,
        "end": times.end,
        "all_day": times.all_day,
        "time_zone": scope.time_zone or "UTC",
        "start_local": times.start if times.all_day else _local(item["start"], scope.time_zone),
        "end_local": times.end if times.all_day else _local(item["end"], scope.time_zone),
        "location": (" ".join(str(location.get("displayName") or "").split()) or None)
        if isinstance(location, dict)
        else None,
        "organizer": _address(item.get("organizer")),
        "attendees": _attendees(item),
        "is_organizer": bool(item.get("isOrganizer")),
        "web_link": item.get("webLink"),
        "changed_at": item.get("lastModifiedDateTime"),
    }
    if join:
        data["online_meeting_url"] = join
    recurrence = _recurrence(item)
    if recurrence is not None:
        data["recurrence"] = recurrence
    if scope.body:
        data["body_text"] = body_text(item.get("body"))
    return data


def content_hash(data: dict[str, Any]) -> str:
    """What counts as a real change: everything reported except when it changed."""
    content = {k: v for k, v in data.items() if k != "changed_at"}
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _no_longer(reported: Reported, reason: str) -> Report:
    return Report(DELETED, reported.event_id, {"outlook_event_id": reported.event_id, "reason": reason}, None)


def decide(item: dict[str, Any], reported: Reported | None, scope: CaptureScope) -> CapturePlan:
    """What one delta item (or GET answer) about an event that is not ours means."""
    event_id = str(item.get("id") or "")
    if "@removed" in item:
        return VerifyRemoved(event_id) if reported is not None else Skip("removed")
    if reported is not None and item.get("changeKey") and item.get("changeKey") == reported.change_key:
        return Skip("unchanged")
    if item.get("isCancelled"):
        if reported is None or reported.state == CANCELLED_STATE:
            return Skip("cancelled")
        try:
            data = callback_data(item, scope)
        except (KeyError, TypeError, ValueError):
            data = {"outlook_event_id": event_id, "changed_at": item.get("lastModifiedDateTime")}
        return Report(
            CANCELLED,
            event_id,
            data,
            Reported(event_id, item.get("changeKey"), content_hash(data), CANCELLED_STATE, _is_series(item)),
        )
    reason = skip_reason(item, scope)
    if reason is not None:
        if reported is not None and reason != UNREADABLE:
            return _no_longer(reported, "no_longer_captured")
        return Skip(reason)
    data = callback_data(item, scope)
    digest = content_hash(data)
    remember = Reported(event_id, item.get("changeKey"), digest, series=_is_series(item))
    if reported is None:
        return Report(CREATED, event_id, data, remember)
    if digest == reported.content_hash and reported.state == ACTIVE:
        return Remember(remember)
    return Report(UPDATED, event_id, data, remember)


def _is_series(item: dict[str, Any]) -> bool:
    return item.get("type") == "seriesMaster" or bool(item.get("recurrence"))


def masters_to_verify(
    items: dict[str, dict[str, Any]], known: dict[str, Reported], ours: set[str]
) -> list[str]:
    """The captured series masters to read again in this pass: delta removes a deleted series as
    ``@removed`` items of its occurrences, which carry nothing but their own ids, so when a pass has
    removals of ids never reported (and not ours), every captured series not listed otherwise is
    verified by id like a removed meeting (a 404 -> one ``deleted`` for the master)."""
    if not any("@removed" in item and i not in known and i not in ours for i, item in items.items()):
        return []
    return [r.event_id for r in known.values() if r.series and r.event_id not in items]


def after_read(event_id: str, event: dict[str, Any] | None, reported: Reported, scope: CaptureScope) -> CapturePlan:
    """A ``VerifyRemoved`` resolved by reading the event: None (404) -> deleted."""
    if event is None:
        return Report(DELETED, event_id, {"outlook_event_id": event_id, "reason": "deleted"}, None)
    return decide({**event, "id": event_id}, reported, scope)
