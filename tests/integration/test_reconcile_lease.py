"""A reconcile that finds the user's lease taken (a calendar move holds it page after page) against
real Table Storage (Azurite): it waits without spending its retry budget, and while it waits it is
still the user's pending run, so Outlook's notifications meanwhile queue no further runs."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from local.azurite import Azurite
from shared.flows import notifications, reconcile
from shared.outlook.throttle import MAX_THROTTLED
from shared.rules import queues
from shared.rules.settings import storage_settings
from shared.store import connections, mailbox_sync, work_queues
from shared.store.connections import CONNECTED, Connection
from shared.store.storage import Storage

pytestmark = pytest.mark.integration


class RecordingStorage(Storage):
    """Real storage that also remembers what was queued (a delayed message cannot be peeked)."""

    sent: list[tuple[str, dict, int]]

    def send(self, queue_name: str, body: str | bytes, *, delay_seconds: int = 0) -> None:
        self.sent.append((queue_name, json.loads(body), delay_seconds))
        super().send(queue_name, body, delay_seconds=delay_seconds)


def test_a_reconcile_waiting_for_a_busy_lease_stays_the_pending_run_and_never_gives_up(azurite: Azurite) -> None:
    storage = RecordingStorage(storage_settings({"AzureWebJobsStorage": azurite.connection_string}))
    storage.sent = []
    services = SimpleNamespace(storage=storage)
    tenant, user, now = f"t-{uuid.uuid4().hex[:8]}", "u1", datetime.now(UTC)
    connections.save(storage, Connection(tenant, user, state=CONNECTED))
    note = {"tenant": tenant, "user": user, "reasons": ["created"], "kind": "notification"}
    assert notifications.request_reconcile(storage, tenant, user, note, now)  # the pending run
    mailbox_sync.claim(storage, tenant, user, now, owner="calendar-move-1")  # a move holds the lease
    storage.sent.clear()

    # Already throttled as often as a message may be: waiting for a lease is not throttling.
    waiting = {**note, "throttled": MAX_THROTTLED, "attempt": 3}
    outcome = reconcile.process(services, json.dumps(waiting).encode(), now)

    assert outcome == reconcile.REQUEUED
    [(queue, again, delay)] = storage.sent
    assert queue == work_queues.name(queues.MAILBOX_RECONCILE, tenant) and 1 <= delay <= 6  # the tenant's shard
    assert again["throttled"] == MAX_THROTTLED and again["attempt"] == 3  # no budget spent
    assert connections.get(storage, tenant, user).recent_errors == ()  # nothing to show the user
    # Still the pending run: another change in Outlook meanwhile queues nothing more (asked as
    # another process would, which has not just queued a run itself).
    notifications._queued_until.clear()
    assert not notifications.request_reconcile(storage, tenant, user, note, now)
    assert len(storage.sent) == 1


def test_a_reconcile_lease_is_short_renewed_while_it_runs_and_taken_over_by_its_own_message(azurite: Azurite) -> None:
    from datetime import timedelta

    from shared.rules.errors import ConflictError

    storage = Storage(storage_settings({"AzureWebJobsStorage": azurite.connection_string}))
    tenant, user, now = f"t-{uuid.uuid4().hex[:8]}", "u1", datetime.now(UTC)
    ticks = [0.0]
    state = mailbox_sync.claim(storage, tenant, user, now, "reconcile-m1", mailbox_sync.RUN_LEASE)
    lease = mailbox_sync.Lease(storage, state, now, clock=lambda: ticks[0])
    ticks[0] = 90.0  # the pass is 90 s in: its next Graph request renews the lease
    lease.keep()
    assert lease.state.lease_until == now + timedelta(seconds=90) + mailbox_sync.RUN_LEASE
    later = now + mailbox_sync.RUN_LEASE + timedelta(seconds=1)
    with pytest.raises(mailbox_sync.Busy):  # a live run keeps its mailbox
        mailbox_sync.claim(storage, tenant, user, later, "reconcile-m2", mailbox_sync.RUN_LEASE)

    # The host dies. Its message, delivered again, takes the lease over at once ...
    again = mailbox_sync.claim(storage, tenant, user, later, "reconcile-m1", mailbox_sync.RUN_LEASE)
    assert again.lease_id == "reconcile-m1"
    # ... and any other run gets it once the dead run's short lease has run out, not 10 minutes later.
    dead_until = later + mailbox_sync.RUN_LEASE
    taken = mailbox_sync.claim(storage, tenant, user, dead_until, "reconcile-m3", mailbox_sync.RUN_LEASE)
    assert taken.lease_id == "reconcile-m3"
    ticks[0] = 200.0  # the stalled first run wakes up: its renewal finds the lease taken over
    with pytest.raises(ConflictError):
        lease.keep()
