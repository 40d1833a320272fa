"""Sending work to a tenant's shard of a work queue (shared/rules/queues.py explains the shards).

Every producer of tenant work goes through ``send``, so the shard a message lands in is always the
one the tenant hashes to, with the shard count the triggers were registered with
(``WORK_QUEUE_SHARDS``, read once per process)."""

from __future__ import annotations

from shared.ports import Storage
from shared.rules import queues
from shared.rules.settings import work_queue_shards


def name(base: str, tenant: str) -> str:
    """The queue of ``tenant``'s shard of the work queue ``base``."""
    return queues.tenant_queue(base, tenant, work_queue_shards())


def send(storage: Storage, base: str, tenant: str, body: str | bytes, *, delay_seconds: int = 0) -> None:
    storage.send(name(base, tenant), body, delay_seconds=delay_seconds)


def every_queue() -> tuple[str, ...]:
    """Every shard of every work queue, as this process registered them."""
    return queues.all_queues(work_queue_shards())
