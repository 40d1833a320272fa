"""The calendar a user's events live in: chosen at connect, the dedicated "CRM" calendar created,
found again and recreated, and deleted by "Remove sync" with ``all``.

- ``default``: the user's default calendar (``calendar_id`` None), paths as Graph documents them.
- ``dedicated``: a calendar of ours, created once per user and marked with an extended property
  (``shared.rules.calendars.CALENDAR_PROPERTY_ID``); found again by that mark, never by its name, so a
  rename in Outlook changes nothing. A name the user already uses (409 ``ErrorFolderExists``) gets a
  number: "CRM (2)".
- ``{"id": ...}``: one of the user's calendars; it must exist and be writable.

If the user deletes the dedicated calendar in Outlook, the next reconcile (``before_reconcile``, run by
the reconcile trigger before the delta pass) creates it again: the links forget the events that went
with it (so the delta of the new calendar does not report them as deleted to the CRM), the delta
position and the subscription move to the new calendar, every kept activity is replayed into it, and
the CRM hears ``calendar.recreated``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import datetime
from typing import Any

from shared.flows import callbacks
from shared.ports import Services
from shared.rules.calendars import (
    CHOSEN,
    DEDICATED,
    DEFAULT,
    ME,
    CalendarChoice,
    calendar_path,
    choice_json,
    dedicated_filter,
    dedicated_name,
    graph_path,
    new_dedicated_calendar,
)
from shared.rules.callback_messages import CALENDAR_RECREATED
from shared.rules.errors import ConflictError, PermanentError, SyncError
from shared.store import connections, links, mailbox_sync, tenant_settings
from shared.store.connections import CONNECTED, Connection

log = logging.getLogger(__name__)
MAX_NAME_ATTEMPTS = 5


class CalendarUnavailable(Exception):
    """The chosen calendar does not exist or cannot be written to; ``reason`` is the sign-in error key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def resolve(services: Services, token: str, connection: Connection, choice: CalendarChoice) -> Connection:
    """The connection with the calendar ``choice`` resolved to an id (the dedicated one found or created);
    ``CalendarUnavailable`` when a chosen calendar is missing or read-only."""
    if choice.kind == DEFAULT:
        return replace(connection, calendar=DEFAULT, calendar_id=None)
    if choice.kind == DEDICATED:
        calendar_id, _ = ensure_dedicated(
            services, token, connection.tenant, connection.user, connection.locale, mailbox=connection.mailbox_path
        )
        return replace(connection, calendar=DEDICATED, calendar_id=calendar_id)
    from shared.outlook.graph import NotFoundError

    assert choice.calendar_id is not None
    try:
        found = services.graph.call(
            token, "GET", calendar_path(choice.calendar_id, mailbox=connection.mailbox_path),
            params={"$select": "id,canEdit,isDefaultCalendar"},
        ).body or {}
    except NotFoundError:
        raise CalendarUnavailable("calendar_not_found") from None
    if found.get("canEdit") is False:
        raise CalendarUnavailable("calendar_not_writable")
    if found.get("isDefaultCalendar"):
        return replace(connection, calendar=DEFAULT, calendar_id=None)
    return replace(connection, calendar=CHOSEN, calendar_id=str(found.get("id") or choice.calendar_id))


def find_dedicated(services: Services, token: str, tenant: str, *, mailbox: str = ME) -> str | None:
    """Our dedicated calendar's id, found by its mark (never by name); None when there is none."""
    answer = services.graph.call(
        token,
        "GET",
        graph_path(None, "calendars", mailbox=mailbox),
        params={"$filter": dedicated_filter(tenant), "$select": "id"},
    )
    found = [c for c in (answer.body or {}).get("value") or [] if isinstance(c, dict) and c.get("id")]
    return str(found[0]["id"]) if found else None


def ensure_dedicated(
    services: Services, token: str, tenant: str, user: str, locale: str, *, mailbox: str = ME
) -> tuple[str, bool]:
    """The dedicated calendar's id, created when the user has none: ``(id, created)``."""
    existing = find_dedicated(services, token, tenant, mailbox=mailbox)
    if existing:
        return existing, False
    setting = tenant_settings.get(services.storage, tenant).dedicated_calendar_name
    for attempt in range(MAX_NAME_ATTEMPTS):
        body = new_dedicated_calendar(tenant, dedicated_name(locale, setting, attempt))
        try:
            created = services.graph.call(
                token, "POST", graph_path(None, "calendars", mailbox=mailbox), json=body
            ).body or {}
        except PermanentError as error:
            if error.status == 409:  # the user has a calendar of that name: try the next one
                continue
            raise
        log.info("Created the dedicated calendar of a user")
        return str(created["id"]), True
    raise PermanentError("every name tried for the dedicated calendar is taken", code="ErrorFolderExists")


def delete_dedicated(services: Services, token: str, connection: Connection) -> int:
    """"Remove sync" with ``all`` for a dedicated calendar: the calendar goes in one request, with our
    events in it; the links forget them. Returns how many of our events it held."""
    from shared.outlook.graph import NotFoundError

    assert connection.calendar == DEDICATED and connection.calendar_id
    try:
        services.graph.call(token, "DELETE", calendar_path(connection.calendar_id, mailbox=connection.mailbox_path))
    except NotFoundError:
        pass  # the user deleted it already
    return forget_events(services, connection.tenant, connection.user)


def forget_events(services: Services, tenant: str, user: str) -> int:
    """Every link forgets its Outlook event (gone with its calendar); versions stay. Returns how many."""
    forgotten = 0
    for stored in links.for_user(services.storage, tenant, user):
        if not stored.link.outlook_event_id:
            continue
        gone = replace(stored.link, outlook_event_id=None, content_hash=None, change_key=None)
        extra = {k: v for k, v in stored.extra.items() if k not in ("state", "end_utc", "web_link")}
        try:
            links.save(services.storage, tenant, user, links.StoredLink(gone, stored.etag, extra))
        except ConflictError:
            pass  # a worker changed it meanwhile; it finds the event gone (404) itself
        forgotten += 1
    return forgotten


# --- recreated by the next reconcile ----------------------------------------------------------------


def before_reconcile(services: Services, raw: bytes, now: datetime) -> bool:
    """Run by the reconcile trigger before the delta pass: a dedicated calendar the user deleted is
    created again (see the module note). Costs one Graph GET for dedicated users, nothing for others.
    Returns whether it recreated one; never raises (the reconcile reports its own errors)."""
    try:
        message = json.loads(raw)
        tenant, user = str(message["tenant"]), str(message["user"])
    except (ValueError, KeyError, TypeError):
        return False
    try:
        connection = connections.get(services.storage, tenant, user)
        if connection.state != CONNECTED or connection.calendar != DEDICATED or not connection.calendar_id:
            return False
        return _recreate_if_gone(services, connection, now)
    except (SyncError, mailbox_sync.Busy) as error:
        log.info("The dedicated calendar could not be checked now: %s", getattr(error, "message", error))
        return False


def _recreate_if_gone(services: Services, connection: Connection, now: datetime) -> bool:
    from shared.flows import push, subscriptions
    from shared.outlook.graph import NotFoundError
    from shared.outlook.mailbox_client import MailboxClient, mailbox_token

    client = MailboxClient(services, connection.tenant, connection.user, connection.calendar_id, connection=connection)
    assert connection.calendar_id
    try:
        client.call("GET", calendar_path(connection.calendar_id, mailbox=client.mailbox_path), params={"$select": "id"})
        return False
    except NotFoundError:
        pass
    token = mailbox_token(services, connection)
    state = mailbox_sync.claim(services.storage, connection.tenant, connection.user, now)
    try:
        calendar_id, _ = ensure_dedicated(
            services, token, connection.tenant, connection.user, connection.locale, mailbox=connection.mailbox_path
        )
        lost = forget_events(services, connection.tenant, connection.user)
    except BaseException:
        mailbox_sync.release_quietly(services.storage, state)
        raise
    mailbox_sync.release(services.storage, state, delta_link=None, window=None)  # the old calendar's delta
    updated = connections.update(
        services.storage, connection.tenant, connection.user, lambda c: replace(c, calendar_id=calendar_id)
    )
    subscriptions.maintain(services, updated, now, recreate=True)  # the resource names the new calendar
    replayed = push.enqueue_replays(services, connection.tenant, connection.user)
    callbacks.enqueue(
        services.storage,
        CALENDAR_RECREATED,
        connection.tenant,
        connection.user,
        {"calendar": choice_json(DEDICATED, calendar_id), "events_lost": lost, "activities_replayed": replayed},
    )
    log.warning("The dedicated calendar of a user was deleted in Outlook; created it again")
    return True


def describe(connection: Connection) -> dict[str, Any]:
    """The calendar in use, as status shows it."""
    return {"choice": choice_json(connection.calendar, connection.calendar_id), "id": connection.calendar_id}


def online_providers(services: Services, connection: Connection) -> tuple[str, ...]:
    """The ``allowedOnlineMeetingProviders`` of the user's calendar (issue 18), read from Graph once and
    kept on the connection for that calendar; read again only after the calendar changed. Only online
    meeting types ask, so a plain activity's push costs no extra request."""
    from shared.outlook.mailbox_client import MailboxClient
    from shared.rules.event_render import cached_providers, providers_cache

    kept = cached_providers(connection.online_providers, connection.calendar_id)
    if kept is not None:
        return kept
    client = MailboxClient(services, connection.tenant, connection.user, connection.calendar_id)
    path = calendar_path(connection.calendar_id) if connection.calendar_id else graph_path(None, "calendar")
    found = client.call("GET", path, params={"$select": "id,allowedOnlineMeetingProviders"}).body or {}
    allowed = tuple(str(p) for p in found.get("allowedOnlineMeetingProviders") or [] if p)
    cache = providers_cache(connection.calendar_id, allowed)
    try:
        connections.update(services.storage, connection.tenant, connection.user,
                           lambda c: replace(c, online_providers=cache) if c.calendar_id == connection.calendar_id
                           else c)
    except SyncError as error:  # only a cache: the next online meeting reads it again
        log.info("online meeting providers not kept: %s", error.message)
    return allowed
