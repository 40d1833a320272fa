"""A "Sync" (backfill) that removes one of our events marks its link "deleting" before the
``$batch`` goes out, as the push does, on real Table Storage (Azurite): a reconcile that reads the
event gone before the link is stored must not report the deletion as the user's."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from local.azurite import Azurite
from shared.flows.backfill_batch import ChunkWrites, Pending
from shared.outlook.graph import GraphResponse
from shared.rules.model import ActivityDeleted
from shared.rules.settings import storage_settings
from shared.rules.sync_plan import Delete, Link, UserContext, plan_deletion
from shared.store import links
from shared.store.storage import Storage

pytestmark = pytest.mark.integration


class RecordingRun(ChunkWrites):
    """The batch-writing steps with Graph replaced by a recorder of the link rows at send time."""

    def send_batch(self, requests: list[dict[str, Any]]) -> dict[str, GraphResponse]:
        self.at_send = [(r["method"], links.get(self.storage, self.tenant, self.user, "act-1")) for r in requests]
        return {r["id"]: GraphResponse(204, {}, None) for r in requests}


def test_a_sync_marks_its_deletions_before_sending_them(azurite: Azurite) -> None:
    storage = Storage(storage_settings({"AzureWebJobsStorage": azurite.connection_string}))
    tenant, user = f"t-{uuid.uuid4().hex[:8]}", "user-1"
    v1 = Link("act-1", 1, outlook_event_id="ev-1", content_hash="h1", change_key="ck1")
    stored = links.save(storage, tenant, user, links.StoredLink(v1, None, {"state": links.SYNCED}))
    decision = plan_deletion(ActivityDeleted("act-1", user, 2), v1, UserContext(tenant, user, connected=True))
    assert isinstance(decision.action, Delete)
    run = RecordingRun()
    run.storage, run.tenant, run.user, run.token, run.job_id = storage, tenant, user, "tok", "job-1"
    run.unsent, run.results, run.retries, run._duplicates = {}, {}, [], []
    run.calendar_id, run.connection = None, SimpleNamespace(mailbox_path="me")  # type: ignore[assignment]

    run._apply({0: Pending(0, decision, stored, stored.etag, "deleted")})

    assert [(method, s.extra.get(links.DELETING)) for method, s in run.at_send] == [("DELETE", "v2")]
    after = links.get(storage, tenant, user, "act-1")
    assert after is not None and (after.link.version, after.link.outlook_event_id) == (2, None)
    assert links.DELETING not in after.extra and run.results == {0: "deleted"}
