"""Which Outlook calendar a user's events live in, and the Graph paths built from it.

A connection keeps the user's choice (``default``, ``dedicated`` or ``{"id": ...}``) and the calendar
id it resolved to; ``None`` is the user's default calendar. Every Graph path to that calendar is built
here (``graph_path``), so push, backfill, reconcile, subscriptions and removal cannot disagree:

- the default calendar keeps the paths Graph documents for it (``me/events``, ``me/calendarView/delta``);
- any other calendar is ``me/calendars/{id}/...`` (events, calendarView/delta, subscription resource);
- the mailbox itself is ``me`` for a signed-in (delegated) user and ``users/{object id}`` for a user the
  organisation enabled (app-only, issue 19: an app-only token has no ``me``); ``mailbox_base`` says which,
  and every helper takes it as ``mailbox`` (default ``me``, so delegated paths are unchanged).

An event addressed by id (``event_path``) needs no calendar: event ids are unique in the mailbox, Graph
answers ``me/events/{id}`` whatever calendar holds the event, and our immutable ids survive a move
between calendars (graph-facts-2 §6). So an update or delete still reaches an event the user moved,
and the calendar switch deletes the old events without knowing the old calendar.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

DEFAULT: Literal["default"] = "default"
DEDICATED: Literal["dedicated"] = "dedicated"
CHOSEN: Literal["id"] = "id"
Kind = Literal["default", "dedicated", "id"]


@dataclass(frozen=True, slots=True)
class CalendarChoice:
    """What the user chose: ``kind`` and, for ``id``, the calendar they picked."""

    kind: Kind = DEFAULT
    calendar_id: str | None = None


ME = "me"
DELEGATED: Literal["delegated"] = "delegated"
ORGANIZATION: Literal["organization"] = "organization"
MODES = (DELEGATED, ORGANIZATION)


def mailbox_base(mode: str, object_id: str | None) -> str:
    """The mailbox's path segment: ``me`` for a delegated user, ``users/{object id}`` for an app-only one
    (``ValueError`` for an app-only user without its mailbox's object id: never silently ``me``)."""
    if mode != ORGANIZATION:
        return ME
    if not object_id:
        raise ValueError("an organisation-mode connection needs its mailbox's object id")
    return f"users/{quote(object_id, safe='')}"


def graph_path(calendar_id: str | None, rest: str, *, absolute: bool = False, mailbox: str = ME) -> str:
    """``rest`` (``events``, ``calendarView/delta``, ``events?$filter=...``) in the calendar ``calendar_id``
    (``None``: the default calendar) of ``mailbox`` (``mailbox_base``), relative to the Graph v1.0 base;
    ``absolute`` adds the leading slash ``$batch`` URLs and subscription resources carry."""
    rest = rest.lstrip("/")
    base = mailbox if calendar_id is None else f"{mailbox}/calendars/{quote(calendar_id, safe='')}"
    path = f"{base}/{rest}" if rest else base
    return f"/{path}" if absolute else path


def event_path(event_id: str, *, absolute: bool = False, mailbox: str = ME) -> str:
    """One event by id, whatever calendar holds it (see the module note)."""
    return graph_path(None, f"events/{quote(event_id, safe='')}", absolute=absolute, mailbox=mailbox)


def calendar_path(calendar_id: str, *, mailbox: str = ME) -> str:
    """The calendar itself (GET, PATCH, DELETE)."""
    return graph_path(calendar_id, "", mailbox=mailbox)


def parse_choice(value: object) -> CalendarChoice | None:
    """The connect/switch body's ``calendar``: ``"default"``, ``"dedicated"`` or ``{"id": "<calendar id>"}``;
    ``None`` when it is none of these (a validation error for the caller)."""
    if value is None or value == DEFAULT:
        return CalendarChoice()
    if value == DEDICATED:
        return CalendarChoice(DEDICATED)
    if isinstance(value, dict) and set(value) == {"id"} and isinstance(value["id"], str):
        chosen = value["id"].strip()
        if 0 < len(chosen) <= 512:
            return CalendarChoice(CHOSEN, chosen)
    return None


# --- the dedicated calendar ------------------------------------------------------------------------

# Our mark on the dedicated calendar: found again by it, never by name (users rename calendars).
# Same property set GUID as our events' property (shared.rules.event_render), another name.
CALENDAR_PROPERTY_ID = "String {835ac582-803a-4cbe-8e1f-6eb316b033d1} Name crmCalendar"
DEDICATED_NAMES = {"es": "CRM", "en": "CRM"}
MAX_NAME_LENGTH = 255


def dedicated_mark(tenant: str) -> str:
    """The property value on a user's dedicated calendar: which CRM tenant's sync made it."""
    return f"crm-outlook-sync:dedicated:{tenant}"


def dedicated_filter(tenant: str) -> str:
    """``$filter`` finding our dedicated calendar among the user's calendars (graph-facts-2 §6)."""
    return (
        f"singleValueExtendedProperties/Any(ep: ep/id eq '{CALENDAR_PROPERTY_ID}' "
        f"and ep/value eq '{dedicated_mark(tenant)}')"
    )


def dedicated_name(locale: str | None, tenant_setting: str | None, attempt: int = 0) -> str:
    """The name the dedicated calendar is created with: the tenant's setting, else by locale; a later
    ``attempt`` (the name is taken by a calendar of the user's) adds a number: "CRM (2)"."""
    from shared.rules.messages import normalize_locale

    base = tenant_setting or DEDICATED_NAMES[normalize_locale(locale)]
    return base if attempt == 0 else f"{base} ({attempt + 1})"


def new_dedicated_calendar(tenant: str, name: str) -> dict[str, object]:
    """The ``POST me/calendars`` body: the name and our mark."""
    return {
        "name": name,
        "singleValueExtendedProperties": [{"id": CALENDAR_PROPERTY_ID, "value": dedicated_mark(tenant)}],
    }


def choice_json(kind: str, calendar_id: str | None) -> object:
    """How status and callbacks show the choice: ``"default"``, ``"dedicated"`` or ``{"id": ...}``."""
    if kind == CHOSEN:
        return {"id": calendar_id}
    return kind if kind in (DEFAULT, DEDICATED) else DEFAULT
