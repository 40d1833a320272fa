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
from shared.store import connections, mailbox_sync
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
    assert queue == queues.MAILBOX_RECONCILE and 1 <= delay <= 6
    assert again["throttled"] == MAX_THROTTLED and again["attempt"] == 3  # no budget spent
    assert connections.get(storage, tenant, user).recent_errors == ()  # nothing to show the user
    # Still the pending run: another change in Outlook meanwhile queues nothing more (asked as
    # another process would, which has not just queued a run itself).
    notifications._queued_until.clear()
    assert not notifications.request_reconcile(storage, tenant, user, note, now)
    assert len(storage.sent) == 1
