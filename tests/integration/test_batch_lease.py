"""The per-mailbox batch lease on real Table Storage (Azurite): two processes never send a
``$batch`` to one mailbox at the same time, and a holder that died does not block it for good."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from local.azurite import Azurite
from shared.outlook.throttle import BATCH_BUSY_DELAY, BATCH_LEASE_SECONDS, BatchLease, MailboxBusy
from shared.rules.settings import storage_settings
from shared.store import tables
from shared.store.storage import Storage

pytestmark = pytest.mark.integration


@pytest.fixture()
def storage(azurite: Azurite) -> Storage:
    return Storage(storage_settings({"AzureWebJobsStorage": azurite.connection_string}))


def test_a_held_lease_sends_the_other_process_back_to_the_queue_briefly(storage: Storage) -> None:
    tenant, user = f"t-{uuid.uuid4().hex[:8]}", "user/1"
    first, second = BatchLease(storage, tenant, user), BatchLease(storage, tenant, user)  # two processes

    with first.held():
        with pytest.raises(MailboxBusy) as busy, second.held():
            pytest.fail("two batches held the mailbox at once")
        assert 0 < busy.value.retry_after <= BATCH_BUSY_DELAY
        assert busy.value.code == "mailbox_busy"
    with second.held():  # given back: the other process goes ahead
        pass

    with pytest.raises(RuntimeError), first.held():
        raise RuntimeError("the $batch call failed")
    with second.held():  # a failure inside still gives it back
        pass


def test_a_lease_left_by_a_dead_process_expires(storage: Storage) -> None:
    tenant, user = f"t-{uuid.uuid4().hex[:8]}", "user/2"
    lease = BatchLease(storage, tenant, user)
    now = datetime.now(UTC)
    storage.table(tables.MAILBOX_GATES).upsert_entity(
        {
            "PartitionKey": tables.key(tenant, user),
            "RowKey": "batch",
            "held_until": now + timedelta(seconds=5),
        }
    )
    with pytest.raises(MailboxBusy):
        with lease.held(now):
            pass
    later = now + timedelta(seconds=6)
    with lease.held(later):
        row = storage.table(tables.MAILBOX_GATES).get_entity(tables.key(tenant, user), "batch")
        assert row["held_until"] >= later + timedelta(seconds=BATCH_LEASE_SECONDS - 1)
