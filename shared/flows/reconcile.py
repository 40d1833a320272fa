"""Outlook -> CRM: one ``mailbox-reconcile`` message reconciles one user's mailbox with our links
(design §4 "Outlook-side changes"). Decisions are in ``shared.rules.reconcile_plan``; this module reads
and writes.

A run: clear the user's pending marker (``shared.flows.notifications``), take the user's lease
(``shared.store.mailbox_sync``), act on lifecycle events (``shared.flows.subscriptions``), then one delta pass:

1. ``me/calendarView/delta`` over the sync window from the stored delta link (or a new round when
   there is none, the window slid, the account changed, or Graph answered 410 /
   ``syncStateNotFound``), following every ``@odata.nextLink`` to the ``@odata.deltaLink``. Items
   whose id is not in one of the user's links are dropped as they are read.
2. Each of ours is decided (echo / touched / moved / verify). A new round is compared against the
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
   fresh row): a crash in between repeats a callback (at-least-once), never loses one. A move
   stores the new changeKey (no repeat), a deletion detaches the link (``outlook_event_id`` None;
   the next CRM upsert with a higher version creates the event again). Nothing is written to
   Outlook. If the push wrote the event after what delta showed us, the item is skipped: the next
   pass sees the newer state.

Retries: throttling (the push's mailbox gate), a busy lease and transient errors re-queue the
message with a delay, never sleeping; an AuthError moves the user to ``reauth_required``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from shared.flows import callbacks
from shared.outlook.throttle import next_step
from shared.ports import Services, Storage
from shared.rules import queues
from shared.rules.errors import (
    AuthError,
    ConflictError,
    PermanentError,
    SyncError,
    ThrottledError,
    TransientError,
)
from shared.rules.reconcile_plan import (
    Decision,
    Echo,
    Gone,
    Moved,
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
    sync_window,
    times_of,
)
from shared.store import connections, links, mailbox_sync, work_queues
from shared.store.connections import CONNECTED, Connection, iso

log = logging.getLogger(__name__)

DONE = "done"
SKIPPED = "skipped"
REQUEUED = "requeued"
MAX_PAGES = 2000
DELTA_PAGE_SIZE = "odata.maxpagesize=100"  # Graph pages delta by 10 unless asked; fewer requests per pass
EVENT_SELECT = "id,changeKey,start,end,isAllDay"
_RESYNC_CODES = {"syncstatenotfound", "fullsyncrequired", "resyncrequired", "syncstateinvalid"}
# What the reconcile keeps on a link row (``extra``): the times it last saw, at which changeKey.
OBSERVED = ("ol_start", "ol_end", "ol_all_day", "ol_key")


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


# === entry points ====================================================================================


def process(services: Services, raw: bytes, now: datetime | None = None) -> str:
    """Handle one ``mailbox-reconcile`` message; re-queues it itself when it must wait."""
    from shared.flows.reauth import require_reauth
    from shared.store.token_crypto import UndecryptableError

    message = json.loads(raw)
    if not isinstance(message, dict) or not message.get("tenant") or not message.get("user"):
        raise ValueError("not a mailbox-reconcile message")
    tenant, user = str(message["tenant"]), str(message["user"])
    try:
        return _run(services, message, now or datetime.now(UTC))
    except ThrottledError as throttled:  # the mailbox gate, Graph's 429, or a busy lease
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


def _run(services: Services, message: dict[str, Any], now: datetime) -> str:
    from shared.flows import notifications, subscriptions
    from shared.outlook.mailbox_client import MailboxClient

    tenant, user = str(message["tenant"]), str(message["user"])
    notifications.clear_pending(services.storage, tenant, user)  # before reading delta: see the module doc
    connection = connections.get(services.storage, tenant, user)
    if connection.state != CONNECTED:
        return SKIPPED
    if message.get("kind") == "sweep" and connection.last_reconcile_at and message.get("queued_at"):
        if _instant(connection.last_reconcile_at) >= _instant(message["queued_at"]):
            return SKIPPED  # reconciled since this was scheduled
    state = mailbox_sync.claim(services.storage, tenant, user, now)
    try:
        if message.get("kind") == "lifecycle":
            connection = subscriptions.on_lifecycle(
                services,
                connection,
                set(message.get("reasons") or []),
                set(message.get("subscription_ids") or []),
                now,
            )
        client = MailboxClient(services, tenant, user)
        result = delta_pass(
            services, client, connection, state, now, confirm=bool(message.get("confirm_deletions"))
        )
    except BaseException:
        mailbox_sync.release_quietly(services.storage, state)
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
            "held_deletions": 0,
            "held_since": None,
        }
    mailbox_sync.release(services.storage, state, **changes)

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
        "Reconciled a mailbox (%s round): %d moved, %d deleted, %d deletions held",
        "full" if result.full_round else "incremental",
        result.reported_moves,
        result.reported_deletions,
        result.held_deletions,
    )
    return DONE


def delta_pass(
    services: Services, client: Any, connection: Connection, state: Any, now: datetime, *, confirm: bool = False
) -> PassResult:
    settings = services.settings
    window = sync_window(now, settings.sync_window_past_days, settings.sync_window_future_days)
    window_key = f"{iso(window[0])}/{iso(window[1])}"
    incremental = bool(
        state.delta_link and state.window == window_key and state.account_oid == connection.account_oid
    )
    tracked = {
        s.link.outlook_event_id: tracked_of(s)
        for s in links.for_user(services.storage, connection.tenant, connection.user)
        if s.link.outlook_event_id and not s.link.tombstone
    }
    try:
        seen, delta_link = read_delta(client, state.delta_link if incremental else None, window, tracked)
    except ResyncNeeded:
        log.info("Delta state expired; starting a full round")
        incremental = False
        seen, delta_link = read_delta(client, None, window, tracked)

    decisions: list[Decision] = [decide(tracked[event_id], item) for event_id, item in seen.items()]
    if not incremental:
        decisions.extend(missing_from_full_round(list(tracked.values()), set(seen), window))
    resolved = [
        after_read(d.tracked, read_event(client, d.tracked.event_id)) if isinstance(d, Verify) else d
        for d in decisions
    ]
    gone = sum(isinstance(d, Gone) for d in resolved)
    hold = held(gone, len(tracked), confirmed=confirm)
    if hold:
        log.warning("Mass-deletion guard: %d of %d linked events deleted at once; held", gone, len(tracked))
    moved = deleted = 0
    for decision in resolved:
        if isinstance(decision, Gone) and hold:
            continue
        reported = apply(services, connection.tenant, connection.user, decision, now)
        moved += reported and isinstance(decision, Moved)
        deleted += reported and isinstance(decision, Gone)
    return PassResult(delta_link, window_key, not incremental, moved, deleted, gone if hold else 0)


# === reading Graph ===================================================================================


def read_delta(
    client: Any, delta_link: str | None, window: tuple[datetime, datetime], tracked: dict[str, Tracked]
) -> tuple[dict[str, Seen], str]:
    """Every item about our events in one delta round (the last one per id wins), and the new link."""
    if delta_link:
        url, params = delta_link, None
    else:
        url, params = (
            "me/calendarView/delta",
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
                continue  # not ours: nothing about it is kept
            if "@removed" in item:
                seen[event_id] = Seen(event_id, None, None)
                continue
            try:
                seen[event_id] = Seen(event_id, item.get("changeKey"), times_of(item))
            except (KeyError, TypeError, ValueError):
                log.warning("An event of ours came back without readable times; skipped this pass")
        if body.get("@odata.nextLink"):
            url, params = body["@odata.nextLink"], None
            continue
        if body.get("@odata.deltaLink"):
            return seen, body["@odata.deltaLink"]
        raise TransientError("delta answered a page with neither a nextLink nor a deltaLink")
    raise TransientError("delta kept answering more pages")


def read_event(client: Any, event_id: str) -> dict[str, Any] | None:
    from shared.outlook.graph import NotFoundError

    try:
        return client.call("GET", f"me/events/{event_id}", params={"$select": EVENT_SELECT}).body or {}
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
        link = replace(link, outlook_event_id=None, content_hash=None, change_key=None)
        return links.StoredLink(link, stored.etag, extra)
    assert isinstance(decision, Echo | Touched | Moved)
    times = decision.seen.times
    assert times is not None
    key = decision.seen.change_key
    extra.update(ol_start=times.start, ol_end=times.end, ol_all_day=times.all_day, ol_key=key)
    if not isinstance(decision, Echo):
        link = replace(link, change_key=key)
    return links.StoredLink(link, stored.etag, extra)


def apply(services: Services, tenant: str, user: str, decision: Decision, now: datetime) -> bool:
    """Report (Moved, Gone) and store what was seen; True when a callback was queued."""
    snapshot = decision.tracked
    if isinstance(decision, Echo) and _already_observed(snapshot, decision.seen):
        return False
    reported = False
    for _ in range(5):
        stored = links.get(services.storage, tenant, user, snapshot.link.activity_id)
        if stored is None or stored.link.tombstone or stored.link.outlook_event_id != snapshot.event_id:
            return reported  # the push replaced or removed the event meanwhile
        fresh = tracked_of(stored)
        if isinstance(decision, Gone):
            current: Decision = Gone(fresh)
        else:
            if fresh.link.change_key not in (snapshot.link.change_key, decision.seen.change_key):
                return reported  # the push wrote after what delta showed: the next pass sees it
            current = decide(fresh, decision.seen)
        if isinstance(current, Moved | Gone) and not reported:
            kind = (
                callbacks.CHANGED_IN_OUTLOOK if isinstance(current, Moved) else callbacks.DELETED_IN_OUTLOOK
            )
            callbacks.enqueue(services.storage, kind, tenant, user, callback_data(current))
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


def _already_observed(tracked: Tracked, seen: Seen) -> bool:
    return tracked.observed == seen.times and tracked.observed_key == seen.change_key


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
