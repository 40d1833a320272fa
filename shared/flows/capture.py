"""Meetings booked in Outlook, captured for the CRM (issue 17): the part of a delta pass
(``shared.flows.reconcile``) that reports the events that are not ours. Decisions are in
``shared.rules.capture_plan``; this module reads Graph and ``CapturedEvents`` and applies them.

Per pass: the items delta listed that no link names, the occurrences of a series replaced by
their master (read once by id), the captured series masters verified when occurrences were removed
(``masters_to_verify``: a deleted series' occurrences come back as bare ids), then per event: an event never reported that carries a
``transactionId`` is checked for our extended property (one of ours whose link is not stored yet
is never captured), a removed one is read by id (only a 404 is a deletion), and each report is
queued **before** its row is written: a crash in between repeats a callback (at least once), never
loses one, and the next pass (a new round when the delta position was not stored) finds the row
and reports nothing twice.

**Pacing**: a pass that reports many meetings at once (the initial capture of a mailbox) queues
them ``PACE_PER_SECOND`` per second of delay, as the backfill applies activities in batches of 20,
so the CRM is not sent hundreds of callbacks in the same second.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from shared.flows import callbacks
from shared.ports import MailboxGraph, Services
from shared.rules.calendars import event_path
from shared.rules.capture_plan import (
    CaptureScope,
    Remember,
    Report,
    Reported,
    VerifyRemoved,
    after_read,
    decide,
    master_id_of,
    masters_to_verify,
    needs_ownership_check,
)
from shared.rules.event_render import PROPERTY_ID
from shared.store import captured_events
from shared.store.connections import Connection

log = logging.getLogger(__name__)
PACE_PER_SECOND = 20
MAX_DELAY_SECONDS = 900


def capture_meetings(
    services: Services,
    client: MailboxGraph,
    connection: Connection,
    scope: CaptureScope,
    items: dict[str, dict[str, Any]],
    ours: set[str],
    now: datetime,
) -> int:
    """Report what changed among ``items`` (delta items not about our links); returns callbacks queued."""
    tenant, user = connection.tenant, connection.user
    known = captured_events.for_user(services.storage, tenant, user)
    candidates: dict[str, dict[str, Any] | None] = {}
    for event_id, item in items.items():
        master = master_id_of(item)
        if master is None:
            candidates[event_id] = item
        elif master not in candidates:
            candidates[master] = None  # read once below
    for master in masters_to_verify(items, known, ours):  # a deleted series: only its occurrences' ids
        candidates.setdefault(master, {"id": master, "@removed": {"reason": "deleted"}})
    queued = 0
    for event_id, item in candidates.items():
        if event_id in ours:
            continue
        if item is None:
            item = read_event(client, event_id)
            if item is None:
                continue  # the series went meanwhile; its occurrences' removals come later
        reported = known.get(event_id)
        if needs_ownership_check(item, reported) and _is_ours(client, event_id):
            continue
        plan = decide(item, reported, scope)
        if isinstance(plan, VerifyRemoved):
            assert reported is not None
            plan = after_read(event_id, read_event(client, event_id), reported, scope)
        if isinstance(plan, Report):
            delay = min(MAX_DELAY_SECONDS, queued // PACE_PER_SECOND)
            callbacks.enqueue(services.storage, plan.kind, tenant, user, plan.data, delay_seconds=delay)
            queued += 1
            _store(services, tenant, user, plan.event_id, plan.remember, now)
        elif isinstance(plan, Remember):
            _store(services, tenant, user, event_id, plan.reported, now)
    return queued


def _store(services: Services, tenant: str, user: str, event_id: str, row: Reported | None, now: datetime) -> None:
    if row is None:
        captured_events.forget(services.storage, tenant, user, event_id)
    else:
        captured_events.remember(services.storage, tenant, user, row, now)


def read_event(client: MailboxGraph, event_id: str) -> dict[str, Any] | None:
    """The whole event by id (a series master, or a removed one being verified); None on 404."""
    from shared.outlook.graph import NotFoundError

    try:
        return client.call("GET", event_path(event_id, mailbox=client.mailbox_path)).body or {}
    except NotFoundError:
        return None


def _is_ours(client: MailboxGraph, event_id: str) -> bool:
    """Does the event carry our extended property (created by this service, link not yet stored)?"""
    from shared.outlook.graph import NotFoundError

    params = {"$select": "id", "$expand": f"singleValueExtendedProperties($filter=id eq '{PROPERTY_ID}')"}
    try:
        body = client.call("GET", event_path(event_id, mailbox=client.mailbox_path), params=params).body or {}
    except NotFoundError:
        return False
    return bool(body.get("singleValueExtendedProperties"))
