"""Graph change and lifecycle notifications: authenticate each one by its subscription's
``clientState`` and turn them into few ``mailbox-reconcile`` messages per user.

Notifications are only hints (design §4): the reconcile worker reads the truth through delta, so
nothing about the changed events themselves is taken from the notification.

Coalescing, across requests too: change notifications for a user set a ``ReconcilePending``
marker row and queue one message, delayed by ``COALESCE_SECONDS``; while the marker is there,
later notifications for that user queue nothing. The worker deletes the marker *before* it reads
delta, so a notification that found the marker describes a change that read will see, and one
that comes after the delete queues a new run: a burst yields a few runs and no change is lost.
A marker whose run never came (older than ``MARKER_LIFETIME``) is replaced. The queued message
stays invisible for ``COALESCE_SECONDS``, so its run cannot have started (nor deleted the marker)
before then: within that time this process answers further notifications for the user from
memory, without touching storage. Lifecycle
notifications are rare and carry what must be done, so each one queues its own message.

The endpoint is unauthenticated, so what one body may cost is bounded: at most ``MAX_ITEMS``
notifications (more is refused before any read), each subscription id looked up once per body,
known rows cached for ``_CACHE_SECONDS`` and unknown ids remembered for ``_UNKNOWN_SECONDS`` in
this process, and one warning per body for the unknown ones. A body of the same unknown id
repeated costs one read, and then none for a while.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.ports import Storage
from shared.rules import queues
from shared.rules.errors import ConflictError
from shared.store import tables, work_queues

log = logging.getLogger(__name__)
COALESCE_SECONDS = 2
MARKER_LIFETIME = timedelta(minutes=2)
MAX_ITEMS = 200
_CACHE_SECONDS = 30.0  # subscription rows read by the webhook (id -> row); ids are never reused
_known: dict[str, tuple[float, Any]] = {}
# Ids with no row: a forged or long-deleted subscription. Short, since a subscription created a
# moment ago may be notified just before its row is stored (the sweep reconciles it anyway).
_UNKNOWN_SECONDS = 15.0
_unknown: dict[str, float] = {}
_LOCAL_MARGIN = 0.5  # seconds of clock difference allowed between us and the queue service
_queued_until: dict[tuple[str, str], float] = {}  # (tenant, user) -> monotonic time the run may start


class MalformedNotification(ValueError):
    """The body is not Graph's notification collection."""


class TooManyNotifications(MalformedNotification):
    """More notifications in one body than Graph sends."""


def accept(storage: Storage, body: bytes, kind: str, now: datetime | None = None) -> int:
    """Enqueue reconcile work for every authentic notification; return how many users it touched."""
    try:
        payload = json.loads(body)
        items = payload["value"]
        if not isinstance(items, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise MalformedNotification("expected a JSON object with a 'value' array") from None
    if len(items) > MAX_ITEMS:
        raise TooManyNotifications(f"at most {MAX_ITEMS} notifications per request")
    work: dict[tuple[str, str], tuple[set[str], set[str]]] = {}
    rows: dict[str, Any] = {}  # this body's lookups: each subscription id is read at most once
    unknown = 0
    for item in items:
        if not isinstance(item, dict):
            continue
        subscription_id = str(item.get("subscriptionId", ""))
        if subscription_id not in rows:
            rows[subscription_id] = _subscription(storage, subscription_id)
        row = rows[subscription_id]
        if row is None:
            unknown += 1
            continue
        if not hmac.compare_digest(
            str(item.get("clientState", "")).encode(), str(row["client_state"]).encode()
        ):
            log.warning("Notification with a wrong clientState ignored (subscription %s)", subscription_id)
            continue
        reason = str(item.get("lifecycleEvent") or item.get("changeType") or kind)
        reasons, subscriptions = work.setdefault((row["tenant"], row["user"]), (set(), set()))
        reasons.add(reason)
        subscriptions.add(subscription_id)
    if unknown:
        log.warning("%d notification(s) for unknown subscriptions ignored", unknown)
    now = now or datetime.now(UTC)
    for (tenant, user), (reasons, subscriptions) in work.items():
        message = {
            "tenant": tenant,
            "user": user,
            "reasons": sorted(reasons),
            "kind": kind,
            "subscription_ids": sorted(subscriptions),
        }
        if kind == "lifecycle":
            work_queues.send(storage, queues.MAILBOX_RECONCILE, tenant, json.dumps(message))
        else:
            request_reconcile(storage, tenant, user, message, now)
    return len(work)


def request_reconcile(storage: Storage, tenant: str, user: str, message: dict[str, Any], now: datetime) -> bool:
    """Queue a reconcile for the user unless one is already pending; True when one was queued."""
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceNotFoundError
    from azure.data.tables import UpdateMode

    if _queued_until.get((tenant, user), 0.0) > time.monotonic():
        return False  # queued by this process moments ago: that run has not started yet
    table = storage.table(tables.RECONCILE_PENDING)
    entity = {"PartitionKey": tables.key(tenant, user), "RowKey": "", "expires_at": now + MARKER_LIFETIME}
    for _ in range(3):
        try:
            with tables.storage_errors("marking a reconcile pending"):
                table.create_entity(entity)
            break
        except ConflictError:
            pass
        try:
            with tables.storage_errors("reading the pending reconcile"):
                row = table.get_entity(entity["PartitionKey"], "")
        except ResourceNotFoundError:
            continue  # the worker took it just now: mark again
        expires_at = row.get("expires_at")
        if expires_at is not None and tables.aware(expires_at) > now:
            return False  # a run is pending and will read delta after this change
        try:
            with tables.storage_errors("renewing a stale pending reconcile"):
                table.update_entity(
                    entity,
                    mode=UpdateMode.REPLACE,
                    etag=tables.etag_of(row),
                    match_condition=MatchConditions.IfNotModified,
                )
            break
        except (ConflictError, ResourceNotFoundError):
            continue
    else:
        return False  # others kept marking it at the same moment: their runs are queued
    try:
        with tables.storage_errors("queueing a reconcile"):
            sent_at = time.monotonic()
            work_queues.send(
                storage, queues.MAILBOX_RECONCILE, tenant, json.dumps(message), delay_seconds=COALESCE_SECONDS
            )
    except Exception:
        clear_pending(storage, tenant, user)  # no run is coming: let the next notification queue one
        raise
    if len(_queued_until) > 10_000:
        _queued_until.clear()
    _queued_until[(tenant, user)] = sent_at + COALESCE_SECONDS - _LOCAL_MARGIN
    return True


def clear_pending(storage: Storage, tenant: str, user: str) -> None:
    """The worker's first step: later notifications queue a new run."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        with tables.storage_errors("clearing the pending reconcile"):
            storage.table(tables.RECONCILE_PENDING).delete_entity(tables.key(tenant, user), "")
    except ResourceNotFoundError:
        pass


def _subscription(storage: Storage, subscription_id: str) -> Any:
    from azure.core.exceptions import ResourceNotFoundError

    if not subscription_id or len(subscription_id) > 256:
        return None
    cached = _known.get(subscription_id)
    if cached is not None and time.monotonic() - cached[0] < _CACHE_SECONDS:
        return cached[1]
    if time.monotonic() - _unknown.get(subscription_id, -_UNKNOWN_SECONDS) < _UNKNOWN_SECONDS:
        return None
    try:
        with tables.storage_errors("reading a subscription"):
            row = storage.table(tables.SUBSCRIPTIONS).get_entity(tables.key(subscription_id), "")
    except ResourceNotFoundError:
        if len(_unknown) > 10_000:
            _unknown.clear()
        _unknown[subscription_id] = time.monotonic()
        return None
    if len(_known) > 10_000:
        _known.clear()
    _known[subscription_id] = (time.monotonic(), row)
    return row
