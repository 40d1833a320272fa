"""The ``mailbox-maintenance`` worker: the per-user upkeep the timers fan out (shared/flows/fanout.py).

A message is ``{"kind", "tenant", "users": [...], "queued_at"}`` for a few users of one tenant:

- ``renew``: renew or create the user's Graph subscription (``subscriptions.renew_user``);
- ``token``: refresh a grant idle for 30 days (``token_health.refresh_user``);
- ``reconcile``: queue the user's sweep reconcile at its planned moment (``reconcile.schedule_user``).

Each user is handled on their own: a user who must wait (throttled, a busy mailbox lease, a
transient failure) is sent back to the queue alone, with the retry policy every other message
follows (``shared.outlook.throttle.next_step``: ``Retry-After``, or backoff with jitter, a bounded
number of times); a broken grant (``AuthError``, an undecryptable cache) moves the user to
``reauth_required``, and nothing else does; a permanent failure is shown in the user's status.
The rest of the batch goes on. Every step is idempotent (a user no longer due is skipped), so a
message the host retries after a crash does no harm.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from shared.flows import reconcile, subscriptions, token_health
from shared.flows.reauth import require_reauth
from shared.outlook.throttle import next_step
from shared.ports import Services
from shared.rules import queues
from shared.rules.errors import (
    AuthError,
    ConflictError,
    PermanentError,
    SyncError,
    ThrottledError,
    TransientError,
)
from shared.store import connections, work_queues
from shared.store.token_crypto import UndecryptableError

log = logging.getLogger(__name__)
KINDS = (subscriptions.RENEW, token_health.TOKEN, reconcile.SWEEP)
WHAT = {
    subscriptions.RENEW: "The Outlook subscription could not be renewed",
    token_health.TOKEN: "The Microsoft grant could not be refreshed",
    reconcile.SWEEP: "The reconcile could not be scheduled",
}


def process(services: Services, raw: bytes, now: datetime | None = None) -> dict[str, int]:
    message = json.loads(raw)
    if (
        not isinstance(message, dict)
        or message.get("kind") not in KINDS
        or not message.get("tenant")
        or not isinstance(message.get("users"), list)
    ):
        raise ValueError("not a mailbox-maintenance message")
    now = now or datetime.now(UTC)
    outcomes: Counter[str] = Counter()
    for entry in message["users"]:
        outcomes[_one(services, message, entry, now)] += 1
    return dict(outcomes)


def _one(services: Services, message: dict[str, Any], entry: Any, now: datetime) -> str:
    kind, tenant = message["kind"], str(message["tenant"])
    user = str(entry["user"] if isinstance(entry, dict) else entry)
    try:
        if kind == subscriptions.RENEW:
            return subscriptions.renew_user(services, tenant, user, now)
        if kind == token_health.TOKEN:
            return token_health.refresh_user(services, tenant, user, now)
        queued_at = _instant(message.get("queued_at")) or now
        return reconcile.schedule_user(services, tenant, entry, queued_at, now)
    except ThrottledError as error:  # Graph's 429/503, the mailbox gate, or a busy lease
        step = next_step(
            "throttled", message.get("attempt", 0), message.get("throttled", 0), error.retry_after
        )
        return (
            _again(services, message, entry, step)
            if step.retry
            else _give_up(services, kind, tenant, user, error)
        )
    except (TransientError, ConflictError) as error:
        step = next_step("transient", message.get("attempt", 0), message.get("throttled", 0))
        log.info("%s for now, retrying in %s s: %s", WHAT[kind], step.delay, error.message)
        return (
            _again(services, message, entry, step)
            if step.retry
            else _give_up(services, kind, tenant, user, error)
        )
    except (AuthError, UndecryptableError) as error:
        # The keep-alive names Microsoft's answer (AADSTS700082, expired for inactivity); renewal its code.
        reason = error.message if kind == token_health.TOKEN else getattr(error, "code", None) or "auth"
        require_reauth(services, tenant, user, reason)
        return "reauth_required"
    except PermanentError as error:
        return _give_up(services, kind, tenant, user, error)


def _again(services: Services, message: dict[str, Any], entry: Any, step: Any) -> str:
    """This user alone, back on the tenant's shard after ``step.delay`` seconds."""
    again = {**message, "users": [entry], "attempt": step.attempt, "throttled": step.throttled}
    tenant = str(message["tenant"])
    work_queues.send(
        services.storage, queues.MAILBOX_MAINTENANCE, tenant, json.dumps(again), delay_seconds=step.delay
    )
    return "retrying"


def _give_up(services: Services, kind: str, tenant: str, user: str, error: SyncError) -> str:
    """Stop for this run (the next timer run finds the user due again) and show why in status."""
    text = f"{error.code}: {error.message}" if error.code else error.message
    log.warning("%s; given up for this run (%s)", WHAT[kind], error.code or type(error).__name__)
    try:
        connections.update(
            services.storage,
            tenant,
            user,
            lambda c: (
                c.with_error(kind, f"{WHAT[kind]}: {text}"[:500]) if c.state == connections.CONNECTED else c
            ),
        )
    except SyncError as failure:
        log.info("The failure was not recorded: %s", failure.message)
    return "failed"


def _instant(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
