"""Backfill's pure parts: window, categories, intents, chunking, progress maths, page parsing."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from shared.flows.backfill import parse_request
from shared.flows.backfill_batch import Retry, throttle_pause
from shared.flows.backfill_worker import merge_retries
from shared.rules.backfill_plan import (
    CHUNK_SIZE,
    CREATING,
    OUT_OF_WINDOW,
    Counts,
    activity_end,
    category,
    chunks,
    in_window,
    intent_status,
    page_key,
    plan_item,
    progress,
    reason,
    tally,
)
from shared.rules.contract import ValidationError
from shared.rules.sync_plan import Create, Link, UserContext, after
from tests.unit.activity_builders import activity, activity_json

NOW = datetime(2025, 3, 20, 12, 0, tzinfo=UTC)
USER = UserContext("tenant-1", "user-1", connected=True, mailbox_time_zone="Romance Standard Time")


def plan(act, link=None, **kwargs):
    return plan_item(act, link, USER, NOW, past_days=30, **kwargs)


# --- window ---------------------------------------------------------------------------------------


def test_the_window_counts_from_the_end_of_the_activity() -> None:
    ended_31_days_ago = activity(start="2025-02-17T09:00:00+00:00", end="2025-02-17T11:59:00+00:00")
    ended_30_days_ago = activity(start="2025-02-18T09:00:00+00:00", end="2025-02-18T12:00:00+00:00")
    assert not in_window(ended_31_days_ago, NOW, 30)
    assert in_window(ended_30_days_ago, NOW, 30)
    far_future = activity(start="2031-01-01T09:00:00+00:00", end="2031-01-01T10:00:00+00:00")
    assert in_window(far_future, NOW, 30)  # the future always counts


def test_a_long_activity_that_started_before_the_window_but_ends_inside_counts() -> None:
    assert in_window(activity(start="2024-12-01T09:00:00+00:00", end="2025-03-01T09:00:00+00:00"), NOW, 30)


def test_wall_clock_times_are_read_in_the_activity_zone() -> None:
    act = activity(start="2025-02-18T04:00:00", end="2025-02-18T06:30:00", time_zone="America/Bogota")
    assert activity_end(act) == datetime(2025, 2, 18, 11, 30, tzinfo=UTC)
    assert not in_window(act, NOW, 30)  # 11:30 UTC < 12:00 UTC thirty days back


def test_all_day_activities_end_at_midnight_of_their_exclusive_end_date_in_their_zone() -> None:
    act = activity(all_day=True, start="2025-02-17", end="2025-02-18", time_zone="Asia/Tokyo")
    assert activity_end(act) == datetime(2025, 2, 17, 15, 0, tzinfo=UTC)  # 2025-02-18 00:00 JST
    assert not in_window(act, NOW, 30)
    assert in_window(act, NOW, 31)


# --- decisions ------------------------------------------------------------------------------------


def test_categories_for_new_unchanged_changed_and_ineligible_items() -> None:
    new = plan(activity())
    assert category(new) == "create" and isinstance(new.action, Create)
    stored = after(new, event_id="ev-1", change_key="ck")
    assert category(plan(activity(), stored)) == "unchanged"  # posting the same page again
    assert category(plan(activity(version=2, subject="Moved"), stored)) == "update"
    assert category(plan(activity(subject="Same version, new text"), stored)) == "update"  # replay
    assert category(plan(activity(status="cancelled"))) == "ineligible"
    assert category(plan(activity(show_in_calendar=False))) == "ineligible"
    hidden = activity(type={"id": "t", "name": "Nota", "show_in_calendar": False})
    assert category(plan(hidden)) == "ineligible"
    assert category(plan(activity(version=0), stored)) == "unchanged"  # older than what we applied


def test_outside_the_window_is_ineligible_and_leaves_an_existing_event_alone() -> None:
    old = activity(start="2025-01-01T09:00:00+00:00", end="2025-01-01T10:00:00+00:00")
    stored = Link("act-1", 1, outlook_event_id="ev-1", content_hash="h", generation=1)
    decision = plan(old, stored)
    assert category(decision) == "ineligible" and reason(decision) == OUT_OF_WINDOW
    assert decision.link == stored


def test_a_cancelled_activity_with_our_event_deletes_it() -> None:
    stored = after(plan(activity()), event_id="ev-1", change_key="ck")
    decision = plan(activity(version=2, status="cancelled"), stored)
    assert category(decision) == "ineligible" and decision.action.event_id == "ev-1"


# --- intents --------------------------------------------------------------------------------------


def test_intent_status() -> None:
    assert intent_status(None, None) == "none"
    assert intent_status({"state": "synced"}, "tok") == "none"
    assert intent_status({CREATING: "tok"}, "tok") == "owned"
    assert intent_status({CREATING: "tok"}, None) == "unfinished"
    assert intent_status({CREATING: "other"}, "tok") == "unfinished"
    assert intent_status({CREATING: True}, "tok") == "unfinished"  # the push path's mark


def test_an_intent_row_replans_the_very_same_create() -> None:
    """The intent keeps the link as it was, so the retry has the same generation and transactionId."""
    first = plan(activity())
    intent_row = Link("act-1", -1)  # what is stored with the mark for a new activity
    again = plan(activity(), intent_row)
    assert isinstance(again.action, Create)
    assert again.action.transaction_id == first.action.transaction_id
    recreate = plan(
        activity(version=3), replace(after(first, event_id="e", change_key="c"), outlook_event_id=None)
    )
    assert recreate.action.transaction_id != first.action.transaction_id  # a new generation


# --- chunks, pages, progress ----------------------------------------------------------------------


def test_chunks_of_at_most_twenty() -> None:
    parts = chunks(list(range(45)))
    assert [len(p) for p in parts] == [20, 20, 5] and CHUNK_SIZE == 20
    assert sum(parts, []) == list(range(45))
    assert chunks([]) == []
    with pytest.raises(ValueError):
        chunks([1], 0)


def test_page_key_is_stable_and_content_sensitive() -> None:
    page = [activity_json(id="a"), activity_json(id="b")]
    assert page_key(page) == page_key([dict(reversed(list(p.items()))) for p in page])
    assert page_key(page) != page_key(list(reversed(page)))
    assert page_key(page) != page_key([activity_json(id="a"), activity_json(id="b", version=2)])


def test_counts() -> None:
    counts = tally(["created", "created", "failed", "ineligible"])
    assert counts == Counts(created=2, ineligible=1, failed=1) and counts.settled == 4
    assert counts.plus(Counts(updated=1)).as_dict() == {
        "created": 2,
        "updated": 1,
        "unchanged": 0,
        "ineligible": 1,
        "failed": 1,
    }
    with pytest.raises(ValueError):
        counts.add("deleted")


def test_progress_percent_and_time_left() -> None:
    start = NOW - timedelta(seconds=100)
    p = progress(1000, 250, True, start, NOW)
    assert p.percent == 25.0 and p.estimated_seconds_left == 300
    assert progress(1000, 0, True, start, NOW).estimated_seconds_left is None
    assert progress(3, 1, True, start, NOW).percent == 33.3  # floored, never rounded up
    assert progress(500, 500, False, start, NOW).percent == 99.9  # more pages may come
    done = progress(500, 500, True, start, NOW)
    assert done.percent == 100.0 and done.estimated_seconds_left == 0
    assert progress(0, 0, True, start, NOW).percent == 100.0
    assert progress(0, 0, False, start, NOW).percent == 0.0


# --- retries --------------------------------------------------------------------------------------


def test_throttled_items_go_back_together_after_the_longest_retry_after() -> None:
    merged = merge_retries(
        [
            Retry(6, [1], "throttled", [], {"1": "t"}),
            Retry(9, [4], "throttled", [], {"4": "t"}),
            Retry(0, [2], "transient", [2], {"2": "t"}),
            Retry(0, [3], "transient", [], {}),
        ]
    )
    assert [(r.kind, r.delay, r.indexes, r.lookup, r.owned) for r in merged] == [
        ("throttled", 9, [1, 4], [], {"1": "t", "4": "t"}),
        ("transient", 0, [2, 3], [2], {"2": "t"}),
    ]
    assert throttle_pause(1) == 5.0 and throttle_pause(30) == 30


# --- parsing a page -------------------------------------------------------------------------------


def test_items_are_validated_one_by_one_and_bad_ones_named() -> None:
    body = {
        "activities": [
            activity_json(id="a"),
            activity_json(id="b", subject=7),
            activity_json(id="c", owner_user_id="someone-else"),
            activity_json(id="a"),
            activity_json(id="d", start="not a time"),
        ],
        "last_page": True,
    }
    request = parse_request(body, "user-1")
    assert [i.activity.id for i in request.items] == ["a"]
    fields = [path for path, _ in request.rejected]
    assert fields == [
        "activities[1].subject",
        "activities[2].owner_user_id",
        "activities[3].id",
        "activities[4].start",
    ]
    assert request.last_page is True and request.dry_run is False and request.job_id is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"last_page": True}, "activities"),
        ({"activities": {}, "last_page": True}, "activities"),
        ({"activities": [activity_json()] * 501, "last_page": True}, "activities"),
        ({"activities": [], "last_page": "yes"}, "last_page"),
        ({"activities": [], "last_page": True, "dry_run": 1}, "dry_run"),
        ({"activities": [], "last_page": True, "job_id": ""}, "job_id"),
    ],
)
def test_a_bad_envelope_is_refused_naming_the_field(body, field) -> None:
    with pytest.raises(ValidationError) as raised:
        parse_request(body, "user-1")
    assert [path for path, _ in raised.value.errors] == [field]
