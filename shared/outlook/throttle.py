"""Politeness towards one mailbox, and when to try a message again (design §4 "Throttling").

- **Gate** (per mailbox, shared by every process): a ``MailboxGates`` row holding
  ``throttled_until``. Graph's 429 / 503 with ``Retry-After`` closes it until then; every message
  for that mailbox checks it before its first Graph call and, while it is closed, goes back to the
  queue with a visibility delay of the time left. The function never sleeps.
- **In flight** (per mailbox, per process): at most ``MAX_IN_FLIGHT`` (4) Graph requests at once,
  the Outlook MailboxConcurrency limit (graph-facts §1.2).
- **Batch lease** (per mailbox, shared by every process): a ``$batch`` runs four requests at once
  in the mailbox, all it may, so two instances must not send one each at the same time (scale-out
  during a large backfill would otherwise meet MailboxConcurrency 429s and rest the mailbox). A
  ``MailboxGates`` row (RowKey ``batch``) holds ``held_until``, taken ETag-guarded and given back
  after the call; a holder that dies frees it after ``BATCH_LEASE_SECONDS``. Work that finds it
  held goes back to the queue for ``BATCH_BUSY_DELAY`` seconds (``MailboxBusy``), spending none of
  its retry budget.
- **Retry policy** (``next_step``): a message carries its own counters (``attempt`` for transient
  failures, ``throttled`` for throttling) and is re-enqueued with a delay rather than failed back
  to the host, so the poison queue only ever holds messages that cannot be read or that crash the
  code: a flaky Graph never poisons good work. Transient failures back off exponentially
  (1, 2, 4 ... 300 s, ±20 % jitter) for ``MAX_ATTEMPTS`` tries; throttling waits exactly what Graph
  asked (plus a little jitter) for up to ``MAX_THROTTLED`` rounds. After that the work is given up
  and reported (``activity.sync_failed``), never retried forever.

The decisions (``gate_wait``, ``next_step``, ``backoff_seconds``) are pure; ``MailboxGate`` and
``InFlight`` are the small adapters around them.
"""

from __future__ import annotations

import logging
import math
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from shared.ports import Storage
from shared.rules.errors import ConflictError, ThrottledError
from shared.store import tables

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 4
MAX_ATTEMPTS = 8  # transient failures of one message (about 2 minutes of backoff in total)
# Throttled rounds of one message. A throttle is Graph asking us to wait, not a failure: the budget
# is sized by how long an outage may last (an hour of the 5 s Retry-After Graph sends with a 503),
# not by how often we ask. 60 rounds gave up after 5 minutes of a Graph outage.
MAX_THROTTLED = 720
BACKOFF_BASE = 1.0
BACKOFF_CAP = 300.0
MAX_DELAY = (
    6 * 3600
)  # what a queue visibility delay is allowed to be here (Retry-After is trusted up to this)
SLOT_TIMEOUT = 60.0  # waiting for one of the 4 slots longer than this re-queues the message instead
BATCH_LEASE_SECONDS = 30.0  # longer than a $batch of 20 takes; a dead holder frees it after this
BATCH_BUSY_DELAY = 1.0  # another process's $batch takes about a second


class MailboxGated(ThrottledError):
    """The mailbox's gate is closed: do not call Graph now, come back in ``retry_after`` seconds."""

    def __init__(
        self, retry_after: float, message: str = "the mailbox is throttled", code: str = "mailbox_gated"
    ) -> None:
        super().__init__(message, retry_after=retry_after, code=code)


class MailboxBusy(MailboxGated):
    """Another process is sending a ``$batch`` to this mailbox: come back shortly. Not a throttle:
    the message's retry budget is not spent."""

    def __init__(self, retry_after: float = BATCH_BUSY_DELAY) -> None:
        super().__init__(retry_after, "another $batch is in flight", "mailbox_busy")


# --- pure decisions --------------------------------------------------------------------------------


def gate_wait(throttled_until: datetime | None, now: datetime) -> float:
    """Seconds still to wait before calling Graph for this mailbox (0 = go)."""
    if throttled_until is None:
        return 0.0
    return max(0.0, (throttled_until - now).total_seconds())


def closed_until(current: datetime | None, now: datetime, retry_after: float) -> datetime:
    """The gate's new closing time: never earlier than one already set."""
    until = now + timedelta(seconds=min(max(retry_after, 0.0), MAX_DELAY))
    return max(until, current) if current else until


def backoff_seconds(attempt: int, rng: random.Random | None = None) -> float:
    """Delay before transient attempt ``attempt`` (1-based): 1, 2, 4 ... capped, ±20 % jitter."""
    base = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, attempt - 1))
    jitter = (rng or random).uniform(0.8, 1.2)  # noqa: S311 - spreading retries, not security
    return min(BACKOFF_CAP, base * jitter)


@dataclass(frozen=True)
class Step:
    """What to do with a message after a failure: run it again after ``delay`` seconds with the new
    counters, or give up (``retry`` False)."""

    retry: bool
    delay: int = 0
    attempt: int = 0
    throttled: int = 0


def _waited(retry_after: float, rng: random.Random | None) -> int:
    """Whole seconds to wait for ``retry_after`` (capped), plus up to a second of jitter that spreads
    a herd of messages told the same time."""
    jitter = (rng or random).uniform(0.0, 1.0)  # noqa: S311 - spreading retries, not security
    return max(1, math.ceil(min(max(retry_after, 0.0), MAX_DELAY) + jitter))


def next_step(
    kind: Literal["transient", "throttled", "wait"],
    attempt: int,
    throttled: int,
    retry_after: float = 0.0,
    rng: random.Random | None = None,
) -> Step:
    """The retry decision for a message that has failed ``attempt`` times and been throttled
    ``throttled`` times before this failure. ``wait``: the message only waits for another run of
    the same mailbox (a busy lease); it comes back after ``retry_after`` and spends no budget."""
    if kind == "wait":
        return Step(True, _waited(retry_after, rng), attempt, throttled)
    if kind == "throttled":
        if throttled + 1 > MAX_THROTTLED:
            return Step(False, attempt=attempt, throttled=throttled + 1)
        return Step(True, _waited(retry_after, rng), attempt, throttled + 1)
    if attempt + 1 >= MAX_ATTEMPTS:
        return Step(False, attempt=attempt + 1, throttled=throttled)
    return Step(True, max(1, math.ceil(backoff_seconds(attempt + 1, rng))), attempt + 1, throttled)


# --- adapters --------------------------------------------------------------------------------------


class MailboxGate:
    """The shared gate of one mailbox: a ``MailboxGates`` row (PartitionKey tenant|user, RowKey "").

    Reads happen once per message (``check``); within the process the closing time is also kept in
    memory, so calls after a throttle in this process stop at once without another read."""

    _local: dict[str, datetime] = {}
    _lock = threading.Lock()

    def __init__(self, storage: Storage, tenant: str, user: str) -> None:
        self.storage = storage
        self.pk = tables.key(tenant, user)

    def _remembered(self, now: datetime) -> float:
        with self._lock:
            return gate_wait(self._local.get(self.pk), now)

    def check_local(self, now: datetime | None = None) -> None:
        """Raise MailboxGated if this process knows the gate is closed."""
        wait = self._remembered(now or datetime.now(UTC))
        if wait > 0:
            raise MailboxGated(wait)

    def check(self, now: datetime | None = None) -> None:
        """Raise MailboxGated if the gate is closed (as known here, or as stored)."""
        now = now or datetime.now(UTC)
        self.check_local(now)
        row = self._read()
        wait = gate_wait(tables.aware(row.get("throttled_until")) if row else None, now)
        if wait > 0:
            self._remember(now + timedelta(seconds=wait))
            raise MailboxGated(wait)

    def close(self, retry_after: float, now: datetime | None = None) -> datetime:
        """Close the gate for ``retry_after`` seconds (keeping any later closing time)."""
        now = now or datetime.now(UTC)
        table = self.storage.table(tables.MAILBOX_GATES)
        for _ in range(5):
            row = self._read()
            current = tables.aware(row.get("throttled_until")) if row else None
            until = closed_until(current, now, retry_after)
            self._remember(until)
            if current is not None and until <= current:
                return current
            entity = {"PartitionKey": self.pk, "RowKey": "", "throttled_until": until}
            try:
                tables.write(table, entity, tables.etag_of(row), "closing the mailbox gate")
                return until
            except ConflictError:
                continue  # another worker closed it at the same moment: read theirs and keep the later
        return until

    def _read(self) -> Any:
        return tables.read(self.storage.table(tables.MAILBOX_GATES), self.pk, "", "reading the mailbox gate")

    def _remember(self, until: datetime) -> None:
        with self._lock:
            known = self._local.get(self.pk)
            self._local[self.pk] = max(until, known) if known else until


class BatchLease:
    """One ``$batch`` per mailbox at a time across processes (see the module docstring)."""

    ROW = "batch"

    def __init__(self, storage: Storage, tenant: str, user: str) -> None:
        self.table = storage.table(tables.MAILBOX_GATES)
        self.pk = tables.key(tenant, user)

    @contextmanager
    def held(self, now: datetime | None = None) -> Iterator[None]:
        """Hold the lease for the ``with`` block; raise MailboxBusy if someone else holds it."""
        now = now or datetime.now(UTC)
        row = tables.read(self.table, self.pk, self.ROW, "reading the mailbox's batch lease")
        left = gate_wait(tables.aware(row.get("held_until")) if row else None, now)
        if left > 0:
            raise MailboxBusy(min(left, BATCH_BUSY_DELAY))
        entity = {
            "PartitionKey": self.pk,
            "RowKey": self.ROW,
            "held_until": now + timedelta(seconds=BATCH_LEASE_SECONDS),
        }
        try:
            taken = tables.write(self.table, entity, tables.etag_of(row), "taking the mailbox's batch lease")
        except ConflictError:
            raise MailboxBusy() from None  # another process took it a moment ago
        try:
            yield
        finally:
            self._give_back(taken.get("etag"))

    def _give_back(self, etag: str | None) -> None:
        entity = {"PartitionKey": self.pk, "RowKey": self.ROW, "held_until": datetime.now(UTC)}
        try:
            tables.write(self.table, entity, etag, "giving back the mailbox's batch lease")
        except Exception as error:  # noqa: BLE001 - it expires by itself; the batch's outcome matters more
            log.warning("The mailbox's batch lease was not given back (%s); it expires by itself", error)


class InFlight:
    """At most ``MAX_IN_FLIGHT`` concurrent Graph requests per mailbox in this process."""

    _semaphores: dict[str, threading.BoundedSemaphore] = {}
    _lock = threading.Lock()

    @classmethod
    def _semaphore(cls, mailbox: str) -> threading.BoundedSemaphore:
        with cls._lock:
            found = cls._semaphores.get(mailbox)
            if found is None:
                found = cls._semaphores[mailbox] = threading.BoundedSemaphore(MAX_IN_FLIGHT)
            return found

    @classmethod
    @contextmanager
    def slot(cls, mailbox: str, timeout: float = SLOT_TIMEOUT) -> Iterator[None]:
        semaphore = cls._semaphore(mailbox)
        if not semaphore.acquire(timeout=timeout):
            raise MailboxGated(2.0)  # every slot stayed busy: let the queue bring the work back
        try:
            yield
        finally:
            semaphore.release()
