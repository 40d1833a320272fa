"""Queue names, in one place: the triggers in functions/, the senders in shared/ and infra/ agree.

**Tenant shards.** Every work queue exists ``WORK_QUEUE_SHARDS`` times (``activity-sync``,
``activity-sync-1`` ... ``activity-sync-{N-1}``), each with its own trigger, and a tenant's
messages always go to the shard its id hashes to (``shard_of``). On Flex Consumption each queue
trigger scales on its own instances, so one tenant's burst fills its own shard's queue and the
other shards keep their own pace. Shard 0 keeps the unsharded name, so messages already queued
when the setting changes are still handled, and ``WORK_QUEUE_SHARDS=1`` is the old single queue.
Limits: tenants that hash to the same shard share its FIFO order (a burst of one delays the other);
with more tenants than shards that is always some of them (README "Tenant isolation").
"""

from __future__ import annotations

import hashlib

ACTIVITY_SYNC = "activity-sync"
MAILBOX_RECONCILE = "mailbox-reconcile"
CRM_CALLBACKS = "crm-callbacks"
ACTIVITY_BACKFILL = (
    "activity-backfill"  # backfill chunks of up to 20 activities (shared/flows/backfill_worker.py)
)
# Per-user upkeep the timers fan out (subscription renewal, token keep-alive, the reconcile sweep's
# scheduling): shared/flows/maintenance.py.
MAILBOX_MAINTENANCE = "mailbox-maintenance"
CALENDAR_MOVE = "calendar-move"  # a calendar switch's move of our events, a page per message
MAILBOX_REMOVAL = "mailbox-removal"  # "Remove sync" as a job, $batches of 20 DELETEs (shared/flows/removal.py)
USER_ENABLE = "user-enable"  # organisation mode: enable (or stop) one app-only user (shared/flows/organization.py)
QUEUE_NAMES = (
    ACTIVITY_SYNC,
    MAILBOX_RECONCILE,
    CRM_CALLBACKS,
    ACTIVITY_BACKFILL,
    MAILBOX_MAINTENANCE,
    CALENDAR_MOVE,
    MAILBOX_REMOVAL,
    USER_ENABLE,
)
MAX_SHARDS = 64


def shard_of(tenant: str, shards: int) -> int:
    """The shard of a tenant: a stable hash (the same in every process and release), not ``hash()``."""
    if shards <= 1:
        return 0
    digest = hashlib.sha256(tenant.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % shards


def shard_queue(base: str, shard: int) -> str:
    """``activity-sync`` for shard 0, ``activity-sync-3`` for shard 3."""
    return base if shard == 0 else f"{base}-{shard}"


def tenant_queue(base: str, tenant: str, shards: int) -> str:
    return shard_queue(base, shard_of(tenant, shards))


def all_queues(shards: int, bases: tuple[str, ...] = QUEUE_NAMES) -> tuple[str, ...]:
    """Every shard of every work queue (no poison queues)."""
    return tuple(shard_queue(base, shard) for base in bases for shard in range(max(1, shards)))
