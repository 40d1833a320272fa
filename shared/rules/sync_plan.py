r"""Plan, then apply (vdirsyncer): what one CRM change means for one user's Outlook calendar.

Pure. Each ``plan_*`` returns ``Decision(action, link)``: the Graph write to do (or ``Nothing``)
and the ``Link`` row to store once it has succeeded (``after`` fills in what Graph returns).
The worker applies it; redelivery just plans the same thing again.

Rules (design §4):
- Eligible = user connected, owner is this user, status ``planned``, type flag on, activity flag
  on. Losing eligibility deletes our event (only ever one whose id is in our link).
  ``completed`` keeps the event untouched unless ``completed_activities="remove"``.
- Order: an upsert with a version lower than the link's is ignored, an equal one too (a duplicate)
  unless ``replay=True`` (backfill, type flag turned back on): a replay carries the same content,
  so it only re-decides against the current type flag, mailbox and connection.
- Deletions leave a tombstone at their version; an upsert must be strictly newer to bring the
  activity back (so at equal versions a deletion beats an upsert). A deletion older than an
  applied upsert is stale (the activity was restored and changed since).
- Every version seen is recorded, even without an event, so a late older upsert cannot create an
  event for an activity that was already cancelled.
- Unchanged content hash -> no write. A changed one that renders exactly what Outlook already shows
  (``Link.shown``, kept by the push after its writes and by the reconcile after a user's edit)
  -> no write either (``ALREADY_SHOWN``): the CRM sent back an Outlook edit it accepted, so
  answering it with a PATCH would only make Outlook report it again. Creating again after a removal uses a new ``generation``,
  hence a new ``transactionId``.
- Not connected: nothing is written; deletions still record their tombstone (keeping the event
  id, removed by ``pending_deletions`` after reconnecting).
- **Adoption** (issue 17): an upsert carrying ``outlook_event_id`` links the activity to that
  existing event of the user (``Adopt``; ours, if one was created before, goes as a duplicate).
  The link is ``adopted``: later upserts write nothing (``ADOPTED``; ``activity.synced`` still
  answers with the event), and losing eligibility or a deletion only ``Unlink``\ s it: the
  service never PATCHes or DELETEs the user's meeting (a write could send its attendees updates).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from shared.rules.errors import PermanentError
from shared.rules.event_render import (
    ONLINE_UNAVAILABLE,
    meeting_provider,
    patch_body,
    property_value,
    render_event,
    with_join_block,
    written_version,
)
from shared.rules.event_time import TimeNote
from shared.rules.field_diff import shown_of
from shared.rules.model import Activity, ActivityDeleted, ActivityType, ActivityTypeUpdated

CompletedPolicy = Literal["keep", "remove"]

# Reasons carried by Nothing / Delete / Replay (stable strings: they reach callbacks and status).
NOT_CONNECTED = "not_connected"
STALE = "stale_version"
DELETED = "deleted"
UNCHANGED = "unchanged"
ALREADY_SHOWN = "already_shown"  # new content, but exactly what Outlook shows already (an accepted edit)
COMPLETED = "completed"
COMPLETED_KEPT = "completed_kept"
CANCELLED = "cancelled"
OWNER_CHANGED = "owner_changed"
ACTIVITY_HIDDEN = "activity_hidden"
TYPE_HIDDEN = "type_hidden"
TYPE_CHANGED = "type_changed"
ADOPTED = "adopted"  # the activity is linked to the user's own event: nothing is ever written to it
OUTLOOK_EVENT_NOT_FOUND = "outlook_event_not_found"

ONLINE_REQUESTED = "requested"

# Mass-deletion guard: refuse more than MASS_DELETE_MIN deletions that are also more than
# MASS_DELETE_SHARE of the user's linked events, unless confirmed.
MASS_DELETE_MIN = 20
MASS_DELETE_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class Link:
    """What we know about (user, activity): the one row that makes every write idempotent."""

    activity_id: str
    version: int  # highest CRM version seen (upsert or deletion)
    outlook_event_id: str | None = None  # our event, None when there is none
    content_hash: str | None = None  # of the rendered event last written
    change_key: str | None = None  # Graph changeKey after our last write (spots our own echoes)
    generation: int = 0  # of the last create; transactionId input
    tombstone: bool = False  # deleted in the CRM at ``version``
    type_id: str | None = None  # to find a type's events on activity_type.updated
    shown: str | None = None  # what Outlook shows now (field_diff.Shown as JSON); None = unknown
    adopted: bool = False  # the event is the user's (issue 17): never PATCHed nor DELETEd, only unlinked
    online_meeting_url: str | None = None  # the event's online meeting join URL (issue 18), kept across PATCHes


@dataclass(frozen=True, slots=True)
class UserContext:
    tenant_id: str
    user_id: str
    connected: bool
    mailbox_time_zone: str | None = None  # Windows id from mailboxSettings
    locale: str | None = None
    # The calendar's allowedOnlineMeetingProviders (issue 18); only needed, and only read, for online
    # meeting types. None = not known: such an activity is then written without a meeting.
    online_providers: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Create:
    event: dict[str, Any]
    transaction_id: str
    lookup_value: str  # look the event up by our property first: a crash may have left one
    content_hash: str


@dataclass(frozen=True, slots=True)
class Update:
    event_id: str
    patch: dict[str, Any]
    content_hash: str


@dataclass(frozen=True, slots=True)
class Delete:
    event_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Nothing:
    reason: str


@dataclass(frozen=True, slots=True)
class Replay:
    """Re-plan this activity with ``replay=True`` from its latest payload (if the worker keeps one)."""

    activity_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Adopt:
    """Link the activity to the user's existing event ``event_id`` (read it; 404 fails the activity
    with ``outlook_event_not_found``). ``replaces``: an event we created for it before, now a duplicate."""

    event_id: str
    replaces: str | None = None


@dataclass(frozen=True, slots=True)
class Unlink:
    """The activity no longer wants its adopted event: forget the link, leave the event alone."""

    event_id: str
    reason: str


Action = Create | Update | Delete | Nothing | Replay | Adopt | Unlink


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    link: Link | None  # to store once the action succeeded; may equal the input (then skip)
    notes: tuple[TimeNote, ...] = ()
    # Online meeting types (issue 18): ONLINE_REQUESTED, or ONLINE_UNAVAILABLE when the calendar allows
    # no provider (reported in activity.synced); None for every other activity.
    online_meeting: str | None = None


class MassDeletionRefused(PermanentError):
    """A plan would delete most of a user's events at once: hold it and flag it for a human."""

    def __init__(self, deletes: int, linked: int) -> None:
        super().__init__(f"refusing to delete {deletes} of {linked} linked events without confirmation",
                         code="mass_deletion_guard")
        self.deletes, self.linked = deletes, linked


def _without_event(link: Link) -> Link:
    return replace(link, outlook_event_id=None, content_hash=None, change_key=None, shown=None, adopted=False,
                   online_meeting_url=None)


def _remove(link: Link, event_id: str, reason: str) -> Action:
    """Our event goes; an adopted one (the user's) is only unlinked."""
    return Unlink(event_id, reason) if link.adopted else Delete(event_id, reason)


def _ineligible(activity: Activity, type_: ActivityType, user: UserContext) -> str | None:
    if activity.owner_user_id != user.user_id:
        return OWNER_CHANGED
    if activity.status == "cancelled":
        return CANCELLED
    if not activity.show_in_calendar:
        return ACTIVITY_HIDDEN
    if not type_.show_in_calendar:
        return TYPE_HIDDEN
    if activity.status == "completed":
        return COMPLETED
    return None


def plan_upsert(activity: Activity, link: Link | None, user: UserContext, *,
                completed_activities: CompletedPolicy = "keep", activity_type: ActivityType | None = None,
                replay: bool = False) -> Decision:
    """Decide for ``activity.upserted`` (or a backfill item). ``activity_type``: the latest type
    record the worker knows, which overrides the (possibly older) copy inside the activity."""
    if not user.connected:
        return Decision(Nothing(NOT_CONNECTED), link)
    if link is not None:
        if link.tombstone and activity.version <= link.version:
            return Decision(Nothing(DELETED), link)
        if activity.version < link.version or (activity.version == link.version and not replay):
            return Decision(Nothing(STALE), link)

    type_ = activity_type or activity.type
    event_id = link.outlook_event_id if link else None
    seen = replace(link or Link(activity.id, activity.version), version=activity.version,
                   tombstone=False, type_id=type_.id)
    reason = _ineligible(activity, type_, user)
    if reason == COMPLETED and completed_activities == "keep" and event_id:
        return Decision(Nothing(COMPLETED_KEPT), seen)
    if reason is not None:
        if event_id:
            return Decision(_remove(seen, event_id, reason), _without_event(seen))
        return Decision(Nothing(reason), seen)
    wanted = activity.outlook_event_id
    if wanted and (event_id != wanted or not seen.adopted):
        # Adoption (issue 17): the CRM recorded the user's own Outlook meeting as this activity.
        replaces = event_id if event_id and not seen.adopted else None
        return Decision(Adopt(wanted, replaces), replace(_without_event(seen), adopted=True))
    if seen.adopted and event_id:
        return Decision(Nothing(ADOPTED), seen)  # the user's event: the CRM's content is never written

    generation = seen.generation if event_id else seen.generation + 1
    provider, online = online_meeting_of(type_, user)
    rendered = render_event(replace(activity, type=type_), tenant_id=user.tenant_id, user_id=user.user_id,
                            generation=generation, mailbox_time_zone=user.mailbox_time_zone,
                            locale=user.locale, online_provider=provider)
    new_hash = rendered.content_hash
    shown = shown_of(rendered.event).to_json()
    if event_id is None:
        create = Create(rendered.event, rendered.event["transactionId"],
                        property_value(user.tenant_id, activity.id), new_hash)
        return Decision(create, replace(_without_event(seen), generation=generation, content_hash=new_hash,
                                        shown=shown), rendered.notes, online)
    if new_hash == seen.content_hash:
        return Decision(Nothing(UNCHANGED), seen, rendered.notes, online)
    # The view (field_diff) has no online meeting in it: an event that should become one is never "shown".
    becomes_meeting = provider is not None and not seen.online_meeting_url
    if seen.shown == shown and not becomes_meeting:
        return Decision(Nothing(ALREADY_SHOWN), replace(seen, content_hash=new_hash), rendered.notes, online)
    # An online meeting's PATCH carries its join URL back in the body, or Graph would make a new meeting.
    join_url = seen.online_meeting_url if provider else None
    patch = with_join_block(patch_body(rendered.event), join_url, user.locale)
    return Decision(Update(event_id, patch, new_hash),
                    replace(seen, content_hash=new_hash, shown=shown), rendered.notes, online)


def online_meeting_of(type_: ActivityType, user: UserContext) -> tuple[str | None, str | None]:
    """(the provider to ask for, what ``activity.synced`` says) for an activity of ``type_``: only
    online meeting types get one, the calendar must allow one (``meeting_provider``), and a calendar
    that allows none makes the meeting ``unavailable``."""
    if not type_.online_meeting or user.online_providers is None:
        return None, None
    provider = meeting_provider(user.online_providers)
    return provider, (ONLINE_REQUESTED if provider else ONLINE_UNAVAILABLE)


def plan_deletion(deleted: ActivityDeleted, link: Link | None, user: UserContext) -> Decision:
    """Decide for ``activity.deleted``: remove our event and leave a tombstone."""
    if link is not None and not link.tombstone and deleted.version < link.version:
        return Decision(Nothing(STALE), link)
    version = max(deleted.version, link.version) if link else deleted.version
    tomb = replace(link or Link(deleted.id, version), version=version, tombstone=True)
    event_id = link.outlook_event_id if link else None
    if event_id is None:
        return Decision(Nothing(DELETED), tomb)
    if link is not None and link.adopted:
        return Decision(Unlink(event_id, DELETED), _without_event(tomb))  # the user's event stays
    if not user.connected:
        return Decision(Nothing(NOT_CONNECTED), tomb)  # keeps the id for pending_deletions
    return Decision(Delete(event_id, DELETED), _without_event(tomb))


def pending_deletions(links: Iterable[Link], user: UserContext) -> list[Decision]:
    """Events of activities deleted while the user was not connected."""
    if not user.connected:
        return []
    return [Decision(Delete(link.outlook_event_id, DELETED), _without_event(link))
            for link in links if link.tombstone and link.outlook_event_id and not link.adopted]


def plan_type_update(update: ActivityTypeUpdated, links: Iterable[Link], user: UserContext) -> list[Decision]:
    """Decide for ``activity_type.updated`` over the user's links.

    Flag off: delete the events of that type. Flag on (or a rename): the events need the
    activities' content, so each live link of that type gets a ``Replay``.
    """
    decisions = []
    for link in links:
        if link.type_id != update.id or link.tombstone:
            continue
        if update.show_in_calendar:
            decisions.append(Decision(Replay(link.activity_id, TYPE_CHANGED), link))
        elif link.outlook_event_id and user.connected:
            action = _remove(link, link.outlook_event_id, TYPE_HIDDEN)
            decisions.append(Decision(action, _without_event(link)))
    return decisions


def check_mass_deletion(decisions: Iterable[Decision], linked_events: int, *, confirmed: bool = False,
                        min_count: int = MASS_DELETE_MIN, max_share: float = MASS_DELETE_SHARE) -> None:
    """Raise ``MassDeletionRefused`` if the plan deletes more than ``min_count`` events that are
    also more than ``max_share`` of ``linked_events`` (the user's events we link to).
    ``confirmed`` is for explicit user requests, e.g. "Remove sync" with ``remove_events=all``."""
    deletes = sum(isinstance(d.action, Delete) for d in decisions)
    if not confirmed and deletes > min_count and deletes > max_share * linked_events:
        raise MassDeletionRefused(deletes, linked_events)


def after(decision: Decision, *, event_id: str | None = None, change_key: str | None = None,
          join_url: str | None = None) -> Link | None:
    """The link to store once the action succeeded, with what Graph answered (``join_url``: the
    answer's ``onlineMeeting.joinUrl``, kept only for online meeting types)."""
    link = decision.link
    if link is None or not isinstance(decision.action, Create | Update):
        return link
    if isinstance(decision.action, Create):
        if not event_id:
            raise ValueError("a created event needs its id")
        link = replace(link, outlook_event_id=event_id)
    online = (join_url or link.online_meeting_url) if decision.online_meeting == ONLINE_REQUESTED else None
    return replace(link, change_key=change_key, online_meeting_url=online)


def join_url_of(event: dict[str, Any] | None) -> str | None:
    """``onlineMeeting.joinUrl`` of a Graph event (never the deprecated ``onlineMeetingUrl``)."""
    meeting = (event or {}).get("onlineMeeting")
    url = meeting.get("joinUrl") if isinstance(meeting, dict) else None
    return url if isinstance(url, str) and url else None


def adopt(decision: Decision, event_id: str, *, join_url: str | None = None, locale: str | None = None) -> Decision:
    """A ``Create`` whose lookup by our property found ``event_id`` (a create that crashed before its
    link was stored): PATCH that event instead of creating a duplicate (keeping its meeting's
    ``join_url``, if it became one)."""
    create = decision.action
    if not isinstance(create, Create) or decision.link is None:
        raise ValueError("only a planned Create can adopt an existing event")
    keep = join_url if decision.online_meeting == ONLINE_REQUESTED else None
    patch = with_join_block(patch_body(create.event), keep, locale)
    return Decision(Update(event_id, patch, create.content_hash),
                    replace(decision.link, outlook_event_id=event_id), decision.notes, decision.online_meeting)


def after_lookup(decision: Decision, found: list[dict[str, Any]]) -> tuple[Decision | None, list[str]]:
    """What a ``Create`` becomes once the lookup by our property answered ``found`` (our events
    for this activity, read with ``lookup_params``), and the ids of duplicates to delete:

    - an event written from a newer version is there (that worker has not stored its link yet):
      None, and nothing to delete; this older version must neither write over it nor delete it;
    - nothing found: the create itself;
    - else an Update of the first event, ``If-Match`` the changeKey the lookup saw (so a newer
      version written there meanwhile answers 412 instead of being overwritten); the others go."""
    mine = decision.link.version if decision.link else -1
    for event in found:
        written = written_version(event)
        if written is not None and written > mine:
            return None, []
    if not found:
        return decision, []
    adopted = adopt(decision, found[0]["id"], join_url=join_url_of(found[0]))
    assert adopted.link is not None
    adopted = replace(adopted, link=replace(adopted.link, change_key=found[0].get("changeKey")))
    return adopted, [event["id"] for event in found[1:]]


BackfillCategory = Literal["create", "update", "unchanged", "ineligible"]


def backfill_category(decision: Decision) -> BackfillCategory:
    """How a backfill dry run reports a decision."""
    action = decision.action
    if isinstance(action, Create):
        return "create"
    if isinstance(action, Update):
        return "update"
    if isinstance(action, Nothing) and action.reason in (UNCHANGED, ALREADY_SHOWN, STALE, COMPLETED_KEPT, ADOPTED):
        return "unchanged"
    return "ineligible"
