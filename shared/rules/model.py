"""The CRM's records as the core sees them, once ``shared.rules.contract`` has validated them.

Plain frozen dataclasses, no behaviour. Times keep the shape the CRM sent, because how a
date-time without offset is read is a rule of ``shared.rules.event_time`` (and must be reportable):

- all-day activities: ``start``/``end`` are ``date`` (end exclusive, always after start);
- otherwise ``datetime``: aware when the CRM gave an offset, naive when it is wall-clock time
  to be read in ``time_zone``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

Status = Literal["planned", "completed", "cancelled"]


@dataclass(frozen=True, slots=True)
class ActivityType:
    id: str
    name: str
    show_in_calendar: bool
    online_meeting: bool = False  # issue 18: its activities become online (Teams) meetings


@dataclass(frozen=True, slots=True)
class Party:
    """A deal, company or contact linked to an activity (email/phone only ever set on contacts)."""

    id: str
    name: str
    email: str | None = None
    phone: str | None = None


@dataclass(frozen=True, slots=True)
class Activity:
    id: str
    version: int
    owner_user_id: str
    type: ActivityType
    status: Status
    subject: str
    description: str
    start: date | datetime
    end: date | datetime
    time_zone: str  # IANA, known to zoneinfo
    all_day: bool
    url: str
    show_in_calendar: bool = True
    location: str | None = None
    reminder_minutes: int | None = None
    deal: Party | None = None
    company: Party | None = None
    contact: Party | None = None
    outlook_event_id: str | None = None  # issue 17: adopt this existing Outlook event (never write it)


@dataclass(frozen=True, slots=True)
class ActivityDeleted:
    id: str
    owner_user_id: str
    version: int


@dataclass(frozen=True, slots=True)
class ActivityTypeUpdated:
    id: str
    name: str
    show_in_calendar: bool
    online_meeting: bool = False


@dataclass(frozen=True, slots=True)
class UserUpdated:
    user_id: str
    time_zone: str
    locale: str


EventType = Literal["activity.upserted", "activity.deleted", "activity_type.updated", "user.updated"]
EventData = Activity | ActivityDeleted | ActivityTypeUpdated | UserUpdated


@dataclass(frozen=True, slots=True)
class CrmEvent:
    """One ``POST /api/crm/events`` envelope; ``id`` is the CRM's dedupe key."""

    id: str
    type: EventType
    tenant_id: str
    occurred_at: datetime  # aware
    data: EventData
