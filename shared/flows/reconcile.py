"""Outlook -> CRM: one ``mailbox-reconcile`` message reconciles one user's mailbox with our links
(design §4 "Outlook-side changes"). Decisions are in ``shared.rules.reconcile_plan``; this module reads
and writes.

A run: take the user's lease (``shared.store.mailbox_sync``), clear the user's pending marker
(``shared.flows.notifications``: a notification from now on queues a new run), act on lifecycle
events (``shared.flows.subscriptions``), then one delta pass:

1. ``me/calendarView/delta`` over the sync window from the stored delta link (or a new round when
   there is none, the window slid, the account changed, or Graph answered 410 /
   ``syncStateNotFound``), following every ``@odata.nextLink`` to the ``@odata.deltaLink``. Items
   whose id is not in one of the user's links are dropped as they are read.
2. Each of ours is decided (echo / touched / changed / verify) with the tenant's field directions
   (``shared.store.tenant_settings``, read once per pass). Everything a decision needs (subject,
   body, location, times, reminder, lastModifiedDateTime) is in the delta items themselves:
   ``calendarView/delta`` returns whole events and takes no ``$select``, so reading more fields
   costs no request; only a deletion candidate is read again by id. A new round is compared against the
   links, never against "new in delta": our events simply reappear as echoes, and the linked events
   it does not list (but should, by their last known times) are verified like ``@removed`` ones.
3. Candidates for deletion are read by id; only a 404 is a deletion. If the deletions trip the
   mass-deletion guard they are **held**: no callback, links untouched, the delta position not
   advanced (so each later pass finds them again), ``held_deletions`` in status and a
   ``mass_deletion`` entry in the connection's recent errors. A later pass releases the hold by
   itself when the deletions no longer trip the guard (e.g. the CRM re-created the events), or the
   CRM confirms: ``POST /api/tenants/{tenant}/users/{user}/reconcile {"confirm_deletions": true}``
   runs one pass with the guard off.
4. Applying: the callback is queued first, then the link is saved (ETag-guarded, re-decided on the
   fresh row): a crash in between repeats a callback (at-least-once), never loses one. A change
   stores the new changeKey and what Outlook now shows (``Link.shown``: no repeat, and the CRM's
   echo of an accepted edit is recognised by the push), a deletion detaches the link (``outlook_event_id`` None;
   the next CRM upsert with a higher version creates the event again). Nothing is written to
   Outlook. If the push wrote the event after what delta showed us, the item is skipped: the next
   pass sees the newer state. So is a change whose event carries a newer ``crmVersion`` than its
   link (read by id, changes only): the push's own write, its link not stored yet; and a deletion
   whose link is marked ``deleting``: the push's own DELETE.
5. Meeting capture (issue 17, ``shared.flows.capture``): when the tenant captures meetings and the
   user did not opt out, the items no link names are kept while reading (instead of dropped) and
   reported as ``outlook_event.*`` once per real change. The capture the delta position was read
   with is stored with it: turning capture on (or changing its domains) starts a new round, whose
   items are the meetings already in the window (the initial capture).

Retries: throttling (the push's mailbox gate), a busy lease and transient errors re-queue the
message with a delay, never sleeping; waiting for a busy lease (a calendar move of thousands of
events holds it page after page) spends none of the message's retry budget (``next_step("wait")``);
an AuthError moves the user to ``reauth_required``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.flows import callbacks
from shared.flows.capture import capture_meetings
from shared.outlook.throttle import MailboxBusy, next_step
from shared.ports import MailboxGraph, Services, Storage
from shared.rules import capture_plan, queues
from shared.rules.backfill_plan import CREATING
from shared.rules.calendars import event_path, graph_path
from shared.rules.errors import (
    AuthError,
    ConflictError,
    PermanentError,
    SyncError,
    ThrottledError,
    TransientError,
)
from shared.rules.event_render import VERSION_EXPAND, written_version
from shared.rules.reconcile_plan import (
    DEFAULT_DIRECTIONS,
    Changed,
    Decision,
    Echo,
    Gone,
    Seen,
    Times,
    Touched,
    Tracked,
    Verify,
    after_read,
    callback_data,
    decide,
    held,
    missing_from_full_round,
    report_of,
    seen_of,
    sync_window,
)
from shared.rules.tenant_settings import FieldDirections
from shared.store import connections, links, mailbox_sync, tenant_settings, work_queues
from shared.store.connections import CONNECTED, Connection, iso

log = logging.getLogger(__name__)

DONE = "done"
SKIPPED = "skipped"
REQUEUED = "requeued"
MAX_PAGES = 2000
DELTA_PAGE_SIZE = "odata.maxpagesize=100"  # Graph pages delta by 10 unless asked; fewer requests per pass
# A deletion candidate read by id: what a decision compares (the same fields delta returns anyway).
EVENT_SELECT = (
    "id,changeKey,lastModifiedDateTime,start,end,isAllDay,subject,body,location,"
    "isReminderOn,reminderMinutesBeforeStart,categories,showAs"
)
_RESYNC_CODES = {"syncstatenotfound", "fullsyncrequired", "resyncrequired", "syncstateinvalid"}
# What the reconcile keeps on a link row (``extra``): the times it last saw, at which changeKey.
OBSERVED = ("ol_start", "ol_end", "ol_all_day", "ol_key")
# An event created this long before the pass read its links may still be one the push created
# after the read (Graph's clock and ours differ by far less).
CLOCK_MARGIN = timedelta(minutes=10)


class ResyncNeeded(Exception):
    """The delta link is no longer valid: start a new round."""


@dataclass(frozen=True)
class PassResult:
    delta_link: str | None
    window: str
    full_round: bool
    reported_moves: int = 0
    reported_deletions: int = 0
    held_deletions: int = 0
    capture: str = "off"  # capture_plan.scope_key this position was read with
    captured: int = 0  # outlook_event.* callbacks queued


# === entry points ====================================================================================


def process(services: Services, raw: bytes, now: datetime | None = None, *, message_id: str | None = None) -> str:
    """Handle one ``mailbox-reconcile`` message; re-queues it itself when it must wait. ``message_id``:
    the queue message's id, the lease's owner (the same message delivered again after its host died
    takes the lease over at once: ``shared.store.mailbox_sync``)."""
    from shared.flows.reauth import require_reauth
    from shared.store.token_crypto import UndecryptableError

    message = json.loads(raw)
    if not isinstance(message, dict) or not message.get("tenant") or not message.get("user"):
        raise ValueError("not a mailbox-reconcile message")
    tenant, user = str(message["tenant"]), str(message["user"])
    try:
        return _run(services, message, now or datetime.now(UTC), message_id)
    except (mailbox_sync.Busy, MailboxBusy) as busy:  # waiting for another run: no budget spent
        step = next_step("wait", message.get("attempt", 0), message.get("throttled", 0), busy.retry_after)
        return _requeue(services, message, step.delay, step.attempt, step.throttled)
    except ThrottledError as throttled:  # the mailbox gate or Graph's 429
        step = next_step(
            "throttled", message.get("attempt", 0), message.get("throttled", 0), throttled.retry_after
        )
        if step.retry:
            return _requeue(services, message, step.delay, step.attempt, step.throttled)
        return _give_up(services, tenant, user, throttled)
    except (TransientError, ConflictError) as error:
        step = next_step("transient", message.get("attempt", 0), message.get("throttled", 0))
        if step.retry:
            log.info("Reconcile failed for now, retrying in %s s: %s", step.delay, error.message)
            return _requeue(services, message, step.delay, step.attempt, step.throttled)
        return _give_up(services, tenant, user, error)
    except (AuthError, UndecryptableError) as error:
        require_reauth(services, tenant, user, getattr(error, "code", None) or "invalid_grant")
        return DONE
    except PermanentError as error:
        return _give_up(services, tenant, user, error)


def request(services: Services, tenant: str, user: str, *, confirm_deletions: bool = False) -> None:
    """Queue a reconcile now (the CRM asked; with ``confirm_deletions`` held deletions are released)."""
    message = {
        "tenant": tenant,
        "user": user,
        "reasons": ["requested"],
        "kind": "request",
        "confirm_deletions": confirm_deletions,
    }
    work_queues.send(services.storage, queues.MAILBOX_RECONCILE, tenant, json.dumps(message))


SWEEP = "reconcile"  # the mailbox-maintenance kind (shared/flows/maintenance.py)


def sweep(services: Services, now: datetime) -> dict[str, int]:
    """Timer: schedule a reconcile of every connected user, at least every 6 hours, spread out.

    Page by page: each page of connections is planned (``plan_sweep``), and its due users leave as
    per-tenant batches on ``mailbox-maintenance``; the worker (``schedule_user``) queues each user's
    ``mailbox-reconcile`` message delayed to its planned moment."""
    from shared.flows.fanout import FanOut
    from shared.rules.reconcile_plan import SweepUser, is_overdue, plan_sweep

    fan = FanOut(services, SWEEP, now, spread=False)  # the plan spreads them to the second
    connected = overdue = 0
    for page in connections.connected_pages(services.storage):
        users = [
            SweepUser(c.tenant, c.user, _instant(c.last_reconcile_at) if c.last_reconcile_at else None)
            for c in page
        ]
        connected += len(users)
        planned = plan_sweep(users, now, overdue_before=overdue)
        overdue += sum(1 for u in users if is_overdue(u, now))
        planned.sort(key=lambda p: p[0].tenant)  # one tenant's users together: fewer, fuller batches
        fan.send_all((u.tenant, {"user": u.user, "delay": delay}) for u, delay in planned)
    return {"connected": connected, "scheduled": fan.users, "messages": fan.messages}


def schedule_user(
    services: Services, tenant: str, entry: dict[str, Any], queued_at: datetime, now: datetime
) -> str:
    """Worker: queue one user's sweep reconcile, delayed to the moment the timer planned."""
    delay = max(0, int(entry.get("delay", 0) - (now - queued_at).total_seconds()))
    message = {
        "tenant": tenant,
        "user": entry["user"],
        "reasons": ["sweep"],
        "kind": "sweep",
        "queued_at": iso(queued_at),
    }
    work_queues.send(
        services.storage, queues.MAILBOX_RECONCILE, tenant, json.dumps(message), delay_seconds=delay
    )
    return "scheduled"


def held_deletions(storage: Storage, tenant: str, user: str) -> int:
    return mailbox_sync.held_deletions(storage, tenant, user)


# === one run =========================================================================================


def _run(services: Services, message: dict[str, Any], now: datetime, message_id: str | None = None) -> str:
    from shared.flows import notifications, subscriptions
    from shared.outlook.mailbox_client import MailboxClient

    tenant, user = str(message["tenant"]), str(message["user"])
    connection = connections.get(services.storage, tenant, user)
    if connection.state != CONNECTED:
        notifications.clear_pending(services.storage, tenant, user)
        return SKIPPED
    if message.get("kind") == "sweep" and connection.last_reconcile_at and message.get("queued_at"):
        if _instant(connection.last_reconcile_at) >= _instant(message["queued_at"]):
            return SKIPPED  # reconciled since this was scheduled
    owner = f"reconcile-{message_id}" if message_id else None
    lease = mailbox_sync.Lease.claim(services.storage, tenant, user, now, owner)  # short, renewed while it runs
    state = lease.state
    # After the lease, before reading delta: while this message waits for a busy lease it stays the
    # pending run, so the notifications meanwhile do not queue more runs that would only wait too.
    try:
        notifications.clear_pending(services.storage, tenant, user)
        if message.get("kind") == "lifecycle":
            connection = subscriptions.on_lifecycle(
                services,
                connection,
                set(message.get("reasons") or []),
                set(message.get("subscription_ids") or []),
                now,
            )
        client = lease.keeping(MailboxClient(services, tenant, user, connection=connection))
        result = delta_pass(
            services, client, connection, state, now, confirm=bool(message.get("confirm_deletions"))
        )
    except BaseException:
        mailbox_sync.release_quietly(services.storage, lease.state)
        raise
    newly_held = result.held_deletions and not state.held_deletions
    if result.held_deletions:
        changes: dict[str, Any] = {
            "held_deletions": result.held_deletions,
            "held_since": state.held_since or iso(now),
        }  # the delta position stays: later passes find the same deletions again
    else:
        changes = {
            "delta_link": result.delta_link,
            "window": result.window,
            "account_oid": connection.account_oid,
            "capture": result.capture,
            "held_deletions": 0,
            "held_since": None,
        }
    mailbox_sync.release(services.storage, lease.state, **changes)

    def touch(c: Connection) -> Connection:
        c = replace(c, last_reconcile_at=iso(now))
        if newly_held:
            c = c.with_error(
                "mass_deletion",
                f"{result.held_deletions} Outlook events were deleted at once; the deletions are held and "
                "not reported to the CRM until confirmed",
                now,
            )
        return c

    connections.update(services.storage, tenant, user, touch)
    log.info(
        "Reconciled a mailbox (%s round): %d changed, %d deleted, %d deletions held, %d meetings reported",
        "full" if result.full_round else "incremental",
        result.reported_moves,
        result.reported_deletions,
        result.held_deletions,
        result.captured,
    )
    return DONE


def delta_pass(
    services: Services, client: MailboxGraph, connection: Connection, state: Any, now: datetime, *, confirm: bool = False
) -> PassResult:
    settings = services.settings
    window = sync_window(now, settings.sync_window_past_days, settings.sync_window_future_days)
    window_key = f"{iso(window[0])}/{iso(window[1])}"
    document = tenant_settings.get(services.storage, connection.tenant)
    directions = document.field_directions
    scope = capture_plan.scope_of(
        document,
        opted_in=connection.capture,
        account_addresses=(connection.account_username, connection.account_mail),
        window=window,
        mailbox_time_zone=connection.mailbox_time_zone,
    )
    capture_key = capture_plan.scope_key(scope)
    incremental = bool(
        state.delta_link
        and state.window == window_key
        and state.account_oid == connection.account_oid
        and (state.capture or "off") == capture_key  # capture turned on or changed: initial capture
    )
    all_links = links.for_user(services.storage, connection.tenant, connection.user)
    tracked = {
        s.link.outlook_event_id: tracked_of(s) for s in all_links if s.link.outlook_event_id and not s.link.tombstone
    }
    others: dict[str, dict[str, Any]] | None = {} if scope is not None else None
    untracked: dict[str, str | None] = {}
    try:
        seen, delta_link = read_delta(
            client, state.delta_link if incremental else None, window, tracked, others, untracked
        )
    except ResyncNeeded:
        log.info("Delta state expired; starting a full round")
        incremental = False
        others = {} if scope is not None else None
        untracked.clear()
        seen, delta_link = read_delta(client, None, window, tracked, others, untracked)

    read = EventReads(client)
    decisions: list[Decision] = [decide(tracked[event_id], item, directions) for event_id, item in seen.items()]
    late = _linked_meanwhile(services, read, connection, _maybe_linked_since(untracked, all_links, now), directions)
    decisions.extend(late)
    if not incremental:
        decisions.extend(missing_from_full_round(list(tracked.values()), set(seen), window))
    resolved = [
        after_read(d.tracked, read(d.tracked.event_id), directions) if isinstance(d, Verify) else d
        for d in decisions
    ]
    deleting = {s.link.outlook_event_id for s in all_links if s.extra.get(links.DELETING)}
    resolved = [
        d
        for d in resolved
        if not (isinstance(d, Gone) and d.tracked.event_id in deleting)  # the push's own DELETE in flight
        and not _written_by_us_meanwhile(read, d)
    ]
    gone = sum(isinstance(d, Gone) for d in resolved)
    hold = held(gone, len(tracked), confirmed=confirm)
    if hold:
        log.warning("Mass-deletion guard: %d of %d linked events deleted at once; held", gone, len(tracked))
    moved = deleted = 0
    for decision in resolved:
        if isinstance(decision, Gone) and hold:
            continue
        reported = apply(services, client, connection.tenant, connection.user, decision, now, directions)
        moved += reported and isinstance(decision, Changed)
        deleted += reported and isinstance(decision, Gone)
    captured = 0
    if scope is not None and others:
        ours = {s.link.outlook_event_id for s in all_links if s.link.outlook_event_id}
        ours.update(d.tracked.event_id for d in late)
        captured = capture_meetings(services, client, connection, scope, others, ours, now)
    return PassResult(
        delta_link, window_key, not incremental, moved, deleted, gone if hold else 0, capture_key, captured
    )


# === reading Graph ===================================================================================


def read_delta(
    client: MailboxGraph,
    delta_link: str | None,
    window: tuple[datetime, datetime],
    tracked: dict[str, Tracked],
    others: dict[str, dict[str, Any]] | None = None,
    untracked: dict[str, str | None] | None = None,
) -> tuple[dict[str, Seen], str]:
    """Every item about our events in one delta round (the last one per id wins), and the new link.
    With ``others`` (meeting capture on), every other item is collected there too (last one wins);
    with ``untracked``, the ids of the other items still in the calendar and when each was created."""
    if delta_link:
        url, params = delta_link, None
    else:
        url, params = (
            graph_path(client.calendar_id, "calendarView/delta", mailbox=client.mailbox_path),
            {"startDateTime": iso(window[0]), "endDateTime": iso(window[1])},
        )
    seen: dict[str, Seen] = {}
    for _ in range(MAX_PAGES):
        try:
            answer = client.call("GET", url, params=params, prefer=DELTA_PAGE_SIZE)
        except SyncError as error:
            if error.status == 410 or (error.code or "").lower() in _RESYNC_CODES:
                raise ResyncNeeded() from None
            raise
        body = answer.body or {}
        for item in body.get("value") or []:
            event_id = item.get("id") if isinstance(item, dict) else None
            if event_id not in tracked:
                if others is not None and isinstance(event_id, str) and event_id:
                    others[event_id] = item  # a capture candidate (shared.rules.capture_plan)
                if untracked is not None and isinstance(event_id, str) and event_id and "@removed" not in item:
                    created = item.get("createdDateTime")
                    untracked[event_id] = created if isinstance(created, str) else None
                continue  # not ours as far as this pass knew: only its id is kept
            if "@removed" in item:
                seen[event_id] = Seen(event_id, None, None)
                continue
            try:
                seen[event_id] = seen_of(item)
            except (KeyError, TypeError, ValueError):
                log.warning("An event of ours came back without readable times; skipped this pass")
        if body.get("@odata.nextLink"):
            url, params = body["@odata.nextLink"], None
            continue
        if body.get("@odata.deltaLink"):
            return seen, body["@odata.deltaLink"]
        raise TransientError("delta answered a page with neither a nextLink nor a deltaLink")
    raise TransientError("delta kept answering more pages")


class EventReads:
    """The events one pass reads by id, each read once (with ``crmVersion``): the item of a link
    stored mid-pass, a Verify, and the check that a change is not the push's own write share it.
    The check asks about the very read the decision was made from."""

    def __init__(self, client: MailboxGraph) -> None:
        self.client = client
        self._events: dict[str, dict[str, Any] | None] = {}

    def __call__(self, event_id: str) -> dict[str, Any] | None:
        if event_id not in self._events:
            self._events[event_id] = read_event(self.client, event_id)
        return self._events[event_id]


def _maybe_linked_since(
    untracked: dict[str, str | None], all_links: list[links.StoredLink], read_at: datetime
) -> set[str]:
    """The untracked ids that may be events of ours whose link was stored after the pass read the
    links (at ``read_at``): any while a create was in flight then (a ``creating`` mark: its event
    may predate the read), else only events created since the read. Most rounds list the user's
    own older events only, and then the links are not read again."""
    if any(s.extra.get(CREATING) for s in all_links):
        return set(untracked)
    since = read_at - CLOCK_MARGIN
    return {
        event_id
        for event_id, created in untracked.items()
        if created is None or _created_since(created, since)
    }


def _created_since(created: str, since: datetime) -> bool:
    try:
        return _instant(created) >= since
    except ValueError:
        return True  # unreadable: look


def _linked_meanwhile(
    services: Services, read: EventReads, connection: Connection, untracked: set[str], directions: FieldDirections
) -> list[Decision]:
    """Items delta listed for events this pass did not know as ours, whose link the push stored
    after the pass read its links (an event created meanwhile, and maybe already moved by its
    user). This round lists them once: each is read by id and judged against its link now."""
    if not untracked:
        return []
    late = [
        s
        for s in links.for_user(services.storage, connection.tenant, connection.user)
        if s.link.outlook_event_id in untracked and not s.link.tombstone
    ]
    decisions: list[Decision] = []
    for stored in late:
        tracked = tracked_of(stored)
        event = read(tracked.event_id)
        if event is None:
            continue  # gone since: the next round lists the removal
        try:
            decisions.append(decide(tracked, seen_of(event), directions))
        except (KeyError, TypeError, ValueError):
            log.warning("An event of ours came back without readable times; skipped this pass")
    return decisions


def _written_by_us_meanwhile(read: EventReads, decision: Decision) -> bool:
    """A change whose event carries a newer ``crmVersion`` than its link: the push wrote it and
    has not stored its link yet (or lost Graph's answer and will try again). Not the user's edit;
    the push's link will hold what the event shows. Asked only about changes."""
    if not isinstance(decision, Changed):
        return False
    event = read(decision.tracked.event_id)
    if event is None:
        return False  # gone since: the next pass reports the deletion
    written = written_version(event)
    if written is None or written <= decision.tracked.link.version:
        return False
    log.info("A change to one of our events is the push's own write in flight; not reported")
    return True


def read_event(client: MailboxGraph, event_id: str) -> dict[str, Any] | None:
    from shared.outlook.graph import NotFoundError

    try:
        path = event_path(event_id, mailbox=client.mailbox_path)
        return client.call("GET", path, params={"$select": EVENT_SELECT, "$expand": VERSION_EXPAND}).body or {}
    except NotFoundError:
        return None


# === links ===========================================================================================


def tracked_of(stored: links.StoredLink) -> Tracked:
    extra = stored.extra
    observed = None
    if extra.get("ol_start") and extra.get("ol_end"):
        observed = Times(str(extra["ol_start"]), str(extra["ol_end"]), bool(extra.get("ol_all_day")))
    return Tracked(
        stored.link,
        observed,
        extra.get("ol_key"),
        end_utc=extra.get("end_utc"),
        start_utc=extra.get("start_utc"),
    )


def _stored_after(stored: links.StoredLink, decision: Decision, now: datetime) -> links.StoredLink:
    link, extra = stored.link, dict(stored.extra)
    if isinstance(decision, Gone):
        for name in (*OBSERVED, "web_link", "end_utc", "start_utc"):
            extra.pop(name, None)
        extra["deleted_in_outlook_at"] = iso(now)
        link = replace(link, outlook_event_id=None, content_hash=None, change_key=None, shown=None)
        return links.StoredLink(link, stored.etag, extra)
    assert isinstance(decision, Echo | Touched | Changed)
    times = decision.seen.times
    assert times is not None
    key = decision.seen.change_key
    extra.update(ol_start=times.start, ol_end=times.end, ol_all_day=times.all_day, ol_key=key)
    if not isinstance(decision, Echo):
        link = replace(link, change_key=key)
    if decision.seen.view is not None:
        link = replace(link, shown=decision.seen.view.to_json())
    return links.StoredLink(link, stored.etag, extra)


def apply(
    services: Services,
    client: MailboxGraph,
    tenant: str,
    user: str,
    decision: Decision,
    now: datetime,
    directions: FieldDirections = DEFAULT_DIRECTIONS,
) -> bool:
    """Report (Changed, Gone) and store what was seen; True when a callback was queued.

    The push may have stored this link after the pass read its links: then the stored changeKey
    is neither the one the pass knew nor the one delta showed, and the item is judged against
    what Outlook shows now (``_seen_after_push``), since a user's change made after the push's
    write was listed by this delta round and will not be listed again."""
    snapshot = decision.tracked
    if isinstance(decision, Echo) and _already_observed(snapshot, decision.seen):
        return False
    reported = False
    for _ in range(5):
        stored = links.get(services.storage, tenant, user, snapshot.link.activity_id)
        if stored is None or stored.link.tombstone or stored.link.outlook_event_id != snapshot.event_id:
            return reported  # the push replaced or removed the event meanwhile
        fresh = tracked_of(stored)
        if isinstance(decision, Gone) and stored.extra.get(links.DELETING):
            return reported  # the push's own DELETE, its link not stored yet: not the user's deletion
        if isinstance(decision, Gone):
            current: Decision = Gone(fresh)
        else:
            seen: Seen | None = decision.seen
            if fresh.link.change_key not in (snapshot.link.change_key, decision.seen.change_key):
                seen = _seen_after_push(client, fresh)
                if seen is None:
                    return reported
            current = decide(fresh, seen, directions)
        if isinstance(current, Changed | Gone) and not reported:
            kind, report = report_of(tenant, user, current)
            callbacks.enqueue(services.storage, kind, tenant, user, callback_data(current, now), callback_id=report)
            reported = True
        updated = _stored_after(stored, current, now)
        if updated.link == stored.link and updated.extra == stored.extra:
            return reported
        try:
            links.save(services.storage, tenant, user, updated)
            return reported
        except ConflictError:
            continue
    if isinstance(decision, Echo | Touched):
        return reported  # only a memory of times; the next pass writes it
    raise ConflictError("the link kept changing while being reconciled")


def _seen_after_push(client: MailboxGraph, fresh: Tracked) -> Seen | None:
    """What the event shows now, when the push stored its link after this pass read the links;
    None when that is the push's own write (the link's changeKey, or a newer ``crmVersion`` whose
    link is not stored yet) or the event is gone (the next delta lists the removal)."""
    event = read_event(client, fresh.event_id)  # fresh: the link changed since the pass's reads
    if event is None:
        return None
    if event.get("changeKey") == fresh.link.change_key:
        return None
    written = written_version(event)
    if written is not None and written > fresh.link.version:
        return None
    try:
        return seen_of(event)
    except (KeyError, TypeError, ValueError):
        return None


def _already_observed(tracked: Tracked, seen: Seen) -> bool:
    same_view = seen.view is None or tracked.link.shown == seen.view.to_json()
    return same_view and tracked.observed == seen.times and tracked.observed_key == seen.change_key


# === failures ========================================================================================


def _requeue(services: Services, message: dict[str, Any], delay: int, attempt: int, throttled: int) -> str:
    again = {**message, "attempt": attempt, "throttled": throttled}
    tenant = str(message["tenant"])
    work_queues.send(
        services.storage, queues.MAILBOX_RECONCILE, tenant, json.dumps(again), delay_seconds=delay
    )
    return REQUEUED


def _give_up(services: Services, tenant: str, user: str, error: SyncError) -> str:
    """Stop retrying this run (the sweep comes back later) and show why in status."""
    text = f"{error.code}: {error.message}" if error.code else error.message
    log.warning("Reconcile given up for now (%s)", error.code or type(error).__name__)
    try:
        connections.update(
            services.storage,
            tenant,
            user,
            lambda c: (
                c.with_error("reconcile", f"Outlook changes could not be read: {text}"[:500])
                if c.state == CONNECTED
                else c
            ),
        )
    except SyncError as failure:
        log.info("The reconcile failure was not recorded: %s", failure.message)
    return DONE


def _instant(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
