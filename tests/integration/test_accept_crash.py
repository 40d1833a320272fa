"""Found while building the chaos run (issue 10): ``activity_queue.accept`` records the event id, then
queues the work. If the process dies between the two (kill -9, an instance recycled), or storage
fails for the queue write and for the compensating delete, the CRM's retry of the same id must
still get the work queued - not be answered ``duplicate`` with nothing queued (a lost event)."""

from __future__ import annotations

import copy
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from local.azurite import Azurite
from shared.flows import activity_queue
from shared.rules import queues
from shared.rules.contract import parse_crm_event
from shared.rules.settings import storage_settings
from shared.store import tables, work_queues
from shared.store.storage import Storage
from tests.e2e.push.conftest import BASE_ACTIVITY

pytestmark = pytest.mark.integration


class Dies(Exception):
    pass


class DyingStorage:
    """Storage whose next queue write kills the process (as far as accept can tell)."""

    def __init__(self, real: Storage) -> None:
        self.real = real

    def table(self, name: str) -> Any:
        table = self.real.table(name)
        if name != tables.DEDUP:
            return table

        class NoDelete:
            def __getattr__(self, attr: str) -> Any:
                if attr == "delete_entity":
                    raise Dies("the process died before it could forget the id")
                return getattr(table, attr)

        return NoDelete()

    def send(self, *_: Any, **__: Any) -> None:
        raise Dies("the process died before the work was queued")


def test_a_retry_after_a_crash_between_recording_and_queueing_queues_the_work(azurite: Azurite) -> None:
    storage = Storage(storage_settings({"AzureWebJobsStorage": azurite.connection_string}))
    data = copy.deepcopy(BASE_ACTIVITY)
    data["owner_user_id"] = "u1"
    raw = {
        "id": f"evt-{uuid.uuid4().hex}",
        "type": "activity.upserted",
        "tenant_id": f"tenant-{uuid.uuid4().hex[:8]}",
        "occurred_at": "2026-11-27T10:00:00Z",
        "data": data,
    }
    event = parse_crm_event(raw)
    with pytest.raises(Dies):
        activity_queue.accept(DyingStorage(storage), raw, event, datetime.now(UTC))

    assert activity_queue.accept(storage, raw, event, datetime.now(UTC)) == activity_queue.ACCEPTED  # the CRM's retry
    queued = [
        m
        for m in storage.queue(work_queues.name(queues.ACTIVITY_SYNC, event.tenant_id)).peek_messages(max_messages=32)
        if raw["id"].encode() in m.content
    ]
    assert len(queued) == 1 and json.loads(queued[0].content)["event"]["id"] == raw["id"]
    assert activity_queue.accept(storage, raw, event, datetime.now(UTC)) == activity_queue.DUPLICATE  # now it is one
    queue = storage.queue(work_queues.name(queues.ACTIVITY_SYNC, event.tenant_id))
    for message in queue.receive_messages(max_messages=32, visibility_timeout=1):
        if raw["id"].encode() in message.content:
            queue.delete_message(message)
