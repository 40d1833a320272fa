"""A "Sync" (backfill) create whose answer may have been lost looks its event up by our property,
as the push does (``sync_plan.after_lookup``): it never writes an older version over a newer
version's event nor deletes it, and its PATCH of the event it adopts is ``If-Match`` what the
lookup saw. Graph is a recorder; the run is the worker's own ``ChunkRun``."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from shared.flows.backfill_batch import Pending
from shared.flows.backfill_worker import ChunkRun
from shared.outlook.graph import GraphResponse
from shared.rules.event_render import VERSION_PROPERTY_ID
from shared.rules.sync_plan import UserContext, plan_upsert
from tests.unit.activity_builders import activity

USER = UserContext("tenant-1", "user-1", connected=True, mailbox_time_zone="UTC", locale="es")


class RecordingRun(ChunkRun):
    """The worker's run with Graph answering from ``answers(request)`` and recording what was sent."""

    def __init__(self, answers: Any) -> None:  # only what the steps tested here read
        self.answers, self.sent = answers, []
        self.msg, self.tenant, self.user, self.token = {}, "tenant-1", "user-1", "tok"
        self.calendar_id, self.connection = None, SimpleNamespace(mailbox_path="me")  # type: ignore[assignment]
        self.now = datetime(2027, 1, 10, tzinfo=UTC)
        self.unsent, self.results, self.retries, self._duplicates, self.errors = {}, {}, [], [], []
        self.activity_ids = {0: "act-1"}

    def send_batch(self, requests: list[dict[str, Any]]) -> dict[str, GraphResponse]:
        self.sent.extend(requests)
        return {r["id"]: self.answers(r) for r in requests}


def found(event_id: str, change_key: str, written: int) -> dict[str, Any]:
    return {"id": event_id, "changeKey": change_key, "end": {"dateTime": "2027-01-15T16:00:00", "timeZone": "UTC"},
            "singleValueExtendedProperties": [{"id": VERSION_PROPERTY_ID, "value": str(written)}]}


def lookup_then(event: dict[str, Any], patch_answer: int) -> Any:
    def answer(request: dict[str, Any]) -> GraphResponse:
        if request["method"] == "GET":
            return GraphResponse(200, {}, {"value": [event]})
        return GraphResponse(patch_answer, {}, {"error": {"code": "ErrorIrresolvableConflict", "message": "changed"}})
    return answer


def unfinished_create(version: int) -> dict[int, Pending]:
    decision = plan_upsert(activity(version=version), None, USER)
    return {0: Pending(0, decision, None, None, "created")}


def test_a_lookup_that_finds_a_newer_versions_event_writes_nothing_and_deletes_nothing() -> None:
    run = RecordingRun(lookup_then(found("ev-1", "ck-v3", 3), 200))
    plans = unfinished_create(2)

    run._lookup([0], plans)
    run._apply(plans)

    assert [r["method"] for r in run.sent] == ["GET"]  # the lookup, and nothing after it
    assert "$expand" in run.sent[0]["url"] or "%24expand" in run.sent[0]["url"]
    assert run.results == {0: "unchanged"} and run.retries == []


def test_the_event_a_lookup_finds_is_patched_if_it_is_still_what_the_lookup_saw() -> None:
    run = RecordingRun(lookup_then(found("ev-1", "ck-seen", 2), 412))  # written there since the lookup
    plans = unfinished_create(2)

    run._lookup([0], plans)
    run._apply(plans)

    patch = run.sent[1]
    assert (patch["method"], patch["headers"].get("If-Match")) == ("PATCH", 'W/"ck-seen"')
    # Not failed, not written over: the next run looks again (and finds the newer version's event).
    assert run.results == {} and [(r.indexes, r.lookup, r.owned) for r in run.retries] == [([0], [0], {})]
