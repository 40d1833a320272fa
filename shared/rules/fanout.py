"""How the timers turn a scan into a steady stream of small work messages (pure; the I/O is in
shared/flows/fanout.py and shared/flows/maintenance.py).

- **Batches**: due users are grouped per tenant, at most ``size`` per message, in scan order (a
  Table scan returns a tenant's users together, so a batch never mixes tenants and lands in its
  tenant's queue shard).
- **Spread**: each message is delayed by a random share of the spread window, so 10,000 users due
  in the same hour become messages arriving evenly over the window instead of one burst.
- **Jittered expirations**: a subscription is created or renewed for its full lifetime minus a random
  share of ``EXPIRY_JITTER``, so users who connected in the same hour come due for renewal in
  different hourly runs, and stay spread after every renewal.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import TypeVar

T = TypeVar("T")
EXPIRY_JITTER = timedelta(hours=24)  # < the renewal margin (2 days): a jittered one is never late


def batches(items: Iterable[tuple[str, T]], size: int) -> Iterator[tuple[str, list[T]]]:
    """(tenant, up to ``size`` items) for consecutive items of one tenant."""
    tenant: str | None = None
    batch: list[T] = []
    for item_tenant, item in items:
        if batch and (item_tenant != tenant or len(batch) >= size):
            yield tenant or "", batch
            batch = []
        tenant = item_tenant
        batch.append(item)
    if batch:
        yield tenant or "", batch


def spread_delay(spread_seconds: int, fraction: float) -> int:
    """The delay of one message: ``fraction`` (uniform in [0, 1)) of the spread window."""
    return int(max(0.0, min(fraction, 1.0)) * max(0, spread_seconds))


def jittered_expiry(now: datetime, lifetime: timedelta, fraction: float) -> datetime:
    """The full lifetime less ``fraction`` (uniform in [0, 1)) of ``EXPIRY_JITTER``."""
    return now + lifetime - EXPIRY_JITTER * max(0.0, min(fraction, 1.0))
