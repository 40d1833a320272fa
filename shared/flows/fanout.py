"""A timer's fan-out: due users, read page by page, leave as small per-tenant work messages on the
tenant's shard of ``mailbox-maintenance`` (shared/flows/maintenance.py handles them), each delayed
by a random share of ``FANOUT_SPREAD_SECONDS`` (shared/rules/fanout.py). A timer invocation
therefore costs one Table request per page of connections and one queue message per batch of due
users: no Graph call, no token, and no list of users held beyond one page and one batch."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from shared.ports import Services
from shared.rules import fanout, queues
from shared.rules.event_time import iso
from shared.store import work_queues


class FanOut:
    """Collects one kind of per-user work and sends it in batches (``add`` per due user)."""

    def __init__(self, services: Services, kind: str, now: datetime, *, spread: bool = True) -> None:
        self.services = services
        self.kind = kind
        self.now = now
        self.spread = services.settings.fanout_spread_seconds if spread else 0
        self.size = services.settings.fanout_batch_size
        self.rng = random.Random()  # noqa: S311 - spreading work, not security
        self.messages = 0
        self.users = 0

    def send_all(self, items: Iterable[tuple[str, Any]]) -> None:
        """Send (tenant, user item) pairs, batched per tenant in the order given."""
        for tenant, batch in fanout.batches(items, self.size):
            self._send(tenant, batch)

    def _send(self, tenant: str, batch: list[Any]) -> None:
        message = {"kind": self.kind, "tenant": tenant, "users": batch, "queued_at": iso(self.now)}
        delay = fanout.spread_delay(self.spread, self.rng.random())
        work_queues.send(
            self.services.storage,
            queues.MAILBOX_MAINTENANCE,
            tenant,
            json.dumps(message),
            delay_seconds=delay,
        )
        self.messages += 1
        self.users += len(batch)
