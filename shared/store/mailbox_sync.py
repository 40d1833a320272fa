"""The ``MailboxSync`` row: per (tenant, user), what the reconcile needs between runs.

- ``delta_link`` (never logged: it is a bearer of the mailbox's sync state), the ``window`` it
  was started with and the ``account_oid`` of the mailbox it belongs to: a different window (it
  slides daily) or account starts a new round.
- ``capture``: what meeting capture (issue 17) the delta position was read with; another one
  (capture turned on, domains changed) starts a new round, which is the initial capture.
- ``held_deletions`` / ``held_since``: the mass-deletion guard's flag, shown by status.
- A lease (``lease_id``, ``lease_until``): one reconcile or subscription change per user at a
  time, across processes. Claiming is an ETag-guarded write; a crashed holder's lease expires.

**A reconcile's lease and a host that dies mid-pass** (``Lease``, ``RUN_LEASE``): a delta pass
(the initial capture of hundreds of meetings, a round of thousands of events) can run for
minutes, and a host killed during it leaves the lease behind. With a fixed 10-minute lease every
run of that mailbox after the restart (the dead run's own message coming back, the CRM's request,
Outlook's notifications) waited up to 10 minutes. Now a reconcile holds a short lease
(``RUN_LEASE``, 2 minutes) and renews it as it goes (``Lease.keep``, before each Graph request of
the pass, writing at most every ``RENEW_EVERY``): a live run never loses it, a dead one's expires
within ``RUN_LEASE``. And its lease id is its queue message's id (``owner``): the dead run's
message, delivered again (Storage keeps a message's id across deliveries), takes the lease over at
once. Renewing is ETag-guarded like claiming: a run that finds its lease taken over (it stalled
longer than ``RUN_LEASE``) stops with ConflictError (re-queued) instead of writing beside the new
holder. What a pass reports is safe to repeat: its position is stored only at the end, and
``CapturedEvents`` / the links make a repeated round report nothing twice.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.ports import GraphResponse, MailboxGraph, Storage
from shared.rules.errors import ConflictError, ThrottledError
from shared.store import tables

log = logging.getLogger(__name__)
LEASE = timedelta(minutes=10)
RUN_LEASE = timedelta(minutes=2)  # a reconcile's, renewed as it goes (``Lease``)
RENEW_EVERY = timedelta(seconds=20)
BUSY_RETRY_SECONDS = 5.0


class Busy(ThrottledError):
    """Another run holds this user's lease: come back later (never wait here)."""

    def __init__(self, retry_after: float = BUSY_RETRY_SECONDS) -> None:
        super().__init__("another reconcile of this mailbox is running", retry_after=retry_after, code="busy")


@dataclass(frozen=True)
class SyncState:
    tenant: str
    user: str
    delta_link: str | None = None
    window: str | None = None
    account_oid: str | None = None
    held_deletions: int = 0
    held_since: str | None = None
    capture: str | None = None  # capture_plan.scope_key the delta position was read with (None = off)
    lease_id: str | None = None
    lease_until: datetime | None = None
    etag: str | None = None

    def __repr__(self) -> str:  # never print the delta link
        return f"SyncState({self.tenant!r}, {self.user!r}, held={self.held_deletions}, lease={self.lease_id})"


_FIELDS = (
    "delta_link", "window", "account_oid", "held_deletions", "held_since", "capture", "lease_id", "lease_until"
)


def _read(storage: Storage, tenant: str, user: str) -> Any:
    table = storage.table(tables.MAILBOX_SYNC)
    return tables.read(table, tables.key(tenant, user), "", "reading the mailbox sync state")


def load(storage: Storage, tenant: str, user: str) -> SyncState:
    row = _read(storage, tenant, user)
    if row is None:
        return SyncState(tenant, user)
    values = {name: row.get(name) for name in _FIELDS}
    values["held_deletions"] = int(values["held_deletions"] or 0)
    if values["lease_until"] is not None and values["lease_until"].tzinfo is None:
        values["lease_until"] = values["lease_until"].replace(tzinfo=UTC)
    return SyncState(tenant, user, **values, etag=tables.etag_of(row))


def _write(storage: Storage, state: SyncState) -> SyncState:
    entity = {name: getattr(state, name) for name in _FIELDS if getattr(state, name) is not None}
    entity.update(PartitionKey=tables.key(state.tenant, state.user), RowKey="")
    table = storage.table(tables.MAILBOX_SYNC)
    metadata = tables.write(table, entity, state.etag, "saving the mailbox sync state")
    return replace(state, etag=metadata.get("etag"))


def claim(
    storage: Storage, tenant: str, user: str, now: datetime, owner: str | None = None, duration: timedelta = LEASE
) -> SyncState:
    """Take the user's lease, or raise Busy while someone else holds it. ``owner``: a lease id of the
    caller's own; a lease it left behind (its process died) is taken over at once."""
    state = load(storage, tenant, user)
    held = state.lease_id and state.lease_until and state.lease_until > now
    if held and (owner is None or state.lease_id != owner):
        assert state.lease_until is not None
        raise Busy(min(BUSY_RETRY_SECONDS, max(1.0, (state.lease_until - now).total_seconds())))
    try:
        return _write(storage, replace(state, lease_id=owner or uuid.uuid4().hex, lease_until=now + duration))
    except ConflictError:
        raise Busy() from None  # someone claimed it at the same moment


class Lease:
    """A reconcile's lease, renewed while the run goes on (see the module's docstring)."""

    def __init__(
        self, storage: Storage, state: SyncState, now: datetime, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.storage, self.state = storage, state
        self._started, self._clock, self._renewed = now, clock, clock()
        self._at_start = self._renewed

    @classmethod
    def claim(cls, storage: Storage, tenant: str, user: str, now: datetime, owner: str | None = None) -> Lease:
        return cls(storage, claim(storage, tenant, user, now, owner, RUN_LEASE), now)

    def keep(self) -> None:
        """Renew when ``RENEW_EVERY`` has passed since the last write (ConflictError: taken over)."""
        tick = self._clock()
        if tick - self._renewed < RENEW_EVERY.total_seconds():
            return
        now = self._started + timedelta(seconds=tick - self._at_start)
        self.state = _write(self.storage, replace(self.state, lease_until=now + RUN_LEASE))
        self._renewed = tick

    def keeping(self, client: MailboxGraph) -> MailboxGraph:
        """``client``, renewing this lease before each of its requests."""
        return _Keeping(self, client)


class _Keeping:
    def __init__(self, lease: Lease, client: MailboxGraph) -> None:
        self._lease, self._client = lease, client

    @property
    def calendar_id(self) -> str | None:
        return self._client.calendar_id

    @property
    def mailbox_path(self) -> str:
        return self._client.mailbox_path

    def call(self, method: str, path: str, **kwargs: Any) -> GraphResponse:
        self._lease.keep()
        return self._client.call(method, path, **kwargs)


def release(storage: Storage, state: SyncState, **changes: Any) -> SyncState:
    """Store ``changes`` and give the lease back (ConflictError if the lease was lost meanwhile)."""
    return _write(storage, replace(state, lease_id=None, lease_until=None, **changes))


def release_quietly(storage: Storage, state: SyncState) -> None:
    try:
        release(storage, state)
    except Exception as error:  # noqa: BLE001 - the lease expires by itself; the original error matters
        log.info("A mailbox lease was not released (it expires by itself): %s", type(error).__name__)


def held_deletions(storage: Storage, tenant: str, user: str) -> int:
    return load(storage, tenant, user).held_deletions
