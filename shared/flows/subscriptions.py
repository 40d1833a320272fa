"""Keeping each user's Graph subscription alive (design §4 "Subscriptions", graph-facts §5.3, §5.7).

- Renewal: a subscription that expires within ``RENEW_WITHIN`` is extended to the full lifetime
  (PATCH ``expirationDateTime``, which also reauthorizes it); a 404 means Graph dropped it, so it
  is created again (``shared.flows.connect.subscribe``).
- Lifecycle ``reauthorizationRequired``: POST ``/subscriptions/{id}/reauthorize`` (or the renewal
  when it is due anyway); ``subscriptionRemoved``: create it again; ``missed``: nothing here, the
  reconcile pass that follows reads every change through delta.
- Every change happens under the user's ``MailboxSync`` lease, so two timers or a timer and a
  lifecycle message never create two subscriptions for one user.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta

from shared.ports import Services
from shared.store import connections, mailbox_sync, tables
from shared.store.connections import CONNECTED, MAX_RECENT_ERRORS, Connection, iso

log = logging.getLogger(__name__)
RENEW_WITHIN = timedelta(days=2)
REAUTHORIZATION_REQUIRED = "reauthorizationRequired"
SUBSCRIPTION_REMOVED = "subscriptionRemoved"
MISSED = "missed"


def needs_renewal(expires_at: str | None, now: datetime) -> bool:
    if not expires_at:
        return True
    return datetime.fromisoformat(expires_at.replace("Z", "+00:00")) - now < RENEW_WITHIN


def maintain(
    services: Services, connection: Connection, now: datetime, *, reauthorize: bool = False, recreate: bool = False
) -> Connection:
    """Renew, reauthorize or recreate the user's subscription (the caller holds the lease)."""
    from shared.outlook.graph import NotFoundError

    # A fresh token: these calls are rare, and reauthorizationRequired means the old one is ending.
    from shared.outlook.mailbox_client import mailbox_token

    token = mailbox_token(services, connection, force_refresh=True)
    if recreate or not connection.subscription_id:
        return _recreate(services, token, connection, now)
    subscription_id = connection.subscription_id
    try:
        if needs_renewal(connection.subscription_expires_at, now):
            return _renew(services, token, connection, now)
        if reauthorize:
            services.graph.call(token, "POST", f"subscriptions/{subscription_id}/reauthorize")
            log.info("Subscription reauthorized")
    except NotFoundError:
        log.info("Subscription gone at Graph; creating it again")
        return _recreate(services, token, connection, now)
    return connection


def on_lifecycle(
    services: Services, connection: Connection, events: set[str], subscription_ids: set[str], now: datetime
) -> Connection:
    """Act on lifecycle notifications about the user's current subscription (others are stale)."""
    current = connection.subscription_id
    if subscription_ids and current not in subscription_ids:
        for stale in subscription_ids:
            if SUBSCRIPTION_REMOVED in events:
                from shared.flows.connect import remove_subscription

                remove_subscription(services, None, stale)  # forget the row; Graph already dropped it
        return connection
    if SUBSCRIPTION_REMOVED in events:
        return maintain(services, connection, now, recreate=True)
    if REAUTHORIZATION_REQUIRED in events:
        return maintain(services, connection, now, reauthorize=True)
    return connection


def expiry(now: datetime) -> datetime:
    """A new expiration: the full lifetime less a random share of a day (shared/rules/fanout.py)."""
    import random

    from shared.flows.connect import SUBSCRIPTION_MINUTES
    from shared.rules.fanout import jittered_expiry

    fraction = random.random()  # noqa: S311 - spreading renewals, not security
    return jittered_expiry(now, timedelta(minutes=SUBSCRIPTION_MINUTES), fraction)


def _renew(services: Services, token: str, connection: Connection, now: datetime) -> Connection:
    from azure.data.tables import UpdateMode

    subscription_id = connection.subscription_id
    wanted = iso(expiry(now))
    answer = services.graph.call(
        token, "PATCH", f"subscriptions/{subscription_id}", json={"expirationDateTime": wanted}
    )
    expires_at = (answer.body or {}).get("expirationDateTime") or wanted
    with tables.storage_errors("recording the renewed subscription"):
        services.storage.table(tables.SUBSCRIPTIONS).upsert_entity(
            {"PartitionKey": tables.key(subscription_id), "RowKey": "", "expires_at": expires_at},
            mode=UpdateMode.MERGE,
        )
    log.info("Subscription renewed")
    return connections.update(
        services.storage,
        connection.tenant,
        connection.user,
        lambda c: (
            replace(c, subscription_expires_at=expires_at) if c.subscription_id == subscription_id else c
        ),
    )


def _recreate(services: Services, token: str, connection: Connection, now: datetime) -> Connection:
    from shared.flows.connect import remove_subscription, subscribe

    fresh = subscribe(services, token, connection, now)
    created = fresh.subscription_id != connection.subscription_id
    orphan: list[str] = []

    def change(latest: Connection) -> Connection:
        orphan.clear()
        if latest.subscription_id != connection.subscription_id or latest.state != CONNECTED:
            if created:
                orphan.append(fresh.subscription_id or "")  # someone else changed it meanwhile
            return latest
        if created:
            return replace(
                latest,
                subscription_id=fresh.subscription_id,
                subscription_expires_at=fresh.subscription_expires_at,
            )
        return replace(
            latest, recent_errors=(*fresh.recent_errors[:1], *latest.recent_errors)[:MAX_RECENT_ERRORS]
        )

    saved = connections.update(services.storage, connection.tenant, connection.user, change)
    for subscription_id in orphan:
        remove_subscription(services, token, subscription_id)
    if created and not orphan:
        log.info("Subscription created again")
    return saved


RENEW = "renew"  # the mailbox-maintenance kind (shared/flows/maintenance.py)


def renew_due(services: Services, now: datetime) -> dict[str, int]:
    """Timer: fan out every connected user whose subscription is missing or expires within
    ``RENEW_WITHIN`` to the maintenance workers (``renew_user``), page by page. No Graph call here."""
    from shared.flows.fanout import FanOut

    fan = FanOut(services, RENEW, now)
    checked = 0
    for page in connections.connected_pages(services.storage):
        checked += len(page)
        fan.send_all(
            (c.tenant, c.user)
            for c in page
            if not c.subscription_id or needs_renewal(c.subscription_expires_at, now)
        )
    return {"checked": checked, "due": fan.users, "messages": fan.messages}


def renew_user(services: Services, tenant: str, user: str, now: datetime) -> str:
    """Worker: renew (or create) one user's subscription if it is still due, under the user's lease.

    Raises what the caller retries through the queue: ``mailbox_sync.Busy`` (a reconcile holds the
    lease), throttling and transient errors; an ``AuthError`` means the grant is gone."""
    connection = connections.get(services.storage, tenant, user)
    if connection.state != CONNECTED:
        return "skipped"
    if connection.subscription_id and not needs_renewal(connection.subscription_expires_at, now):
        return "not_due"  # renewed since the timer looked (a retry, or a lifecycle message)
    state = mailbox_sync.claim(services.storage, tenant, user, now)
    try:
        latest = connections.get(services.storage, tenant, user)
        if latest.state != CONNECTED:
            return "skipped"
        maintain(services, latest, now)
        return "renewed"
    finally:
        mailbox_sync.release_quietly(services.storage, state)
