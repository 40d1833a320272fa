"""Graph change and lifecycle notifications: authenticate each one by its subscription's
``clientState`` and turn them into at most one ``mailbox-reconcile`` message per user.

Notifications are only hints (design §4): the reconcile worker reads the truth through delta, so
nothing about the changed events themselves is taken from the notification."""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from shared import queues, tables

log = logging.getLogger(__name__)


class MalformedNotification(ValueError):
    """The body is not Graph's notification collection."""


def accept(storage: Any, body: bytes, kind: str) -> int:
    """Enqueue reconcile work for every authentic notification; return how many users it touched."""
    try:
        payload = json.loads(body)
        items = payload["value"]
        if not isinstance(items, list):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        raise MalformedNotification("expected a JSON object with a 'value' array") from None
    work: dict[tuple[str, str], set[str]] = {}
    known: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, dict):
            continue
        subscription_id = str(item.get("subscriptionId", ""))
        row = known.get(subscription_id) or _subscription(storage, subscription_id)
        if row is None:
            log.warning("Notification for an unknown subscription ignored")
            continue
        known[subscription_id] = row
        if not hmac.compare_digest(
            str(item.get("clientState", "")).encode(), str(row["client_state"]).encode()
        ):
            log.warning("Notification with a wrong clientState ignored (subscription %s)", subscription_id)
            continue
        reason = str(item.get("lifecycleEvent") or item.get("changeType") or kind)
        work.setdefault((row["tenant"], row["user"]), set()).add(reason)
    for (tenant, user), reasons in work.items():
        message = {"tenant": tenant, "user": user, "reasons": sorted(reasons), "kind": kind}
        storage.send(queues.MAILBOX_RECONCILE, json.dumps(message))
    return len(work)


def _subscription(storage: Any, subscription_id: str) -> Any:
    from azure.core.exceptions import ResourceNotFoundError

    if not subscription_id or len(subscription_id) > 256:
        return None
    try:
        with tables.storage_errors("reading a subscription"):
            return storage.table(tables.SUBSCRIPTIONS).get_entity(tables.key(subscription_id), "")
    except ResourceNotFoundError:
        return None
