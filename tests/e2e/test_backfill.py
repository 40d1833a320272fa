"""Backfill ("Sync") through the whole stack: dev host + Azurite + emulator with throttling on."""

from __future__ import annotations

import copy
import json
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from local.azurite import free_port
from local.processes import Service
from shared.rules.event_render import property_value
from shared.store import tables
from tests.conftest import ROOT, Stack, wait_until
from tests.e2e.push import openapi_contract
from tests.e2e.push.conftest import (
    BASE_ACTIVITY,
    CrmUser,
    activity,
    connect_user,
    envelope,
    ours,
    property_of,
    reconnect,
    send,
    user_path,
    utc,
)
from tests.support.clock import days_from_today

pytestmark = pytest.mark.e2e
BACKFILL = "/api/tenants/{tenant}/users/{user}/backfill"
ZONES = ["America/Bogota", "Europe/Madrid", "Asia/Tokyo", "America/New_York", "Australia/Sydney", "UTC"]


def make_activities(owner: CrmUser, count: int, seed: int = 7) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A mix of eligible and ineligible activities; returns them and the expected outcome of each
    eligible one (its UTC instants, or its dates when all-day)."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    items, expected = [], {}
    for n in range(count):
        data = copy.deepcopy(BASE_ACTIVITY)
        aid = f"bf-{n:05d}"
        zone = ZONES[n % len(ZONES)]
        data.update(
            id=aid,
            owner_user_id=owner.user,
            time_zone=zone,
            subject=f"Actividad {n}",
            url=f"https://crm.example.com/activities/{aid}",
        )
        kind = rng.random()
        eligible = True
        if kind < 0.12:  # ended long ago: outside the 30-day window
            start = now - timedelta(days=rng.randint(40, 400), hours=rng.randint(0, 23))
            eligible = False
        elif kind < 0.25:  # recent past, inside the window
            start = now - timedelta(days=rng.randint(1, 25), hours=rng.randint(0, 23))
        else:
            start = now + timedelta(days=rng.randint(1, 300), hours=rng.randint(0, 23))
        flag = rng.random()
        if flag < 0.05:
            data["status"] = "cancelled"
            eligible = False
        elif flag < 0.08:
            data["type"] = {"id": "type-hidden", "name": "Nota", "show_in_calendar": False}
            eligible = False
        elif flag < 0.10:
            data["show_in_calendar"] = False
            eligible = False
        if n % 9 == 0:  # all-day, on the activity's local dates
            day = start.astimezone(ZoneInfo(zone)).date()
            last = day + timedelta(days=rng.choice([1, 1, 2]))
            data.update(all_day=True, start=day.isoformat(), end=last.isoformat())
            if eligible and datetime.combine(last, datetime.min.time(), ZoneInfo(zone)) < now - timedelta(
                days=30
            ):
                eligible = False
            if eligible:
                expected[aid] = ("all_day", day, last)
        else:
            start = start.replace(minute=rng.choice([0, 15, 30, 45]), second=0, microsecond=0)
            end = start + timedelta(minutes=rng.choice([15, 30, 60, 90]))
            if n % 2:  # wall-clock time in the activity's zone, without offset
                local = ZoneInfo(zone)
                data.update(
                    start=start.astimezone(local).replace(tzinfo=None).isoformat(),
                    end=end.astimezone(local).replace(tzinfo=None).isoformat(),
                )
            else:
                data.update(start=start.isoformat(), end=end.isoformat())
            if eligible:
                expected[aid] = ("timed", start, end)
        items.append(data)
    return items, expected


def post_page(stack: Stack, who: CrmUser, body: dict[str, Any], expect: int) -> dict[str, Any]:
    answer = stack.crm.post(user_path(who.tenant, who.user, "backfill"), body)
    assert answer.status_code == expect, answer.text
    openapi_contract.check("POST", BACKFILL, answer, body)
    return answer.json()


def run_job(stack: Stack, who: CrmUser, items: list[dict[str, Any]], page: int = 500) -> dict[str, Any]:
    job_id = None
    for start in range(0, len(items), page):
        body: dict[str, Any] = {
            "activities": items[start : start + page],
            "last_page": start + page >= len(items),
            "dry_run": False,
        }
        if job_id:
            body["job_id"] = job_id
        answer = post_page(stack, who, body, 202)
        job_id = answer["job_id"]
    assert job_id
    return {"job_id": job_id}


def backfill_status(stack: Stack, who: CrmUser) -> dict[str, Any]:
    answer = stack.crm.get(user_path(who.tenant, who.user, "status"))
    assert answer.status_code == 200, answer.text
    openapi_contract.check("GET", "/api/tenants/{tenant}/users/{user}/status", answer)
    return answer.json()["backfill"]


def completed(stack: Stack, who: CrmUser, job_id: str, timeout: float) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        found = [c for c in stack.callbacks.of_type("backfill.completed") if c["data"]["job_id"] == job_id]
        return found[0] if found else None

    return wait_until(done, timeout, f"backfill.completed of {job_id}")


def check_events(stack: Stack, who: CrmUser, expected: dict[str, Any]) -> None:
    events = ours(stack, who)
    by_value: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_value.setdefault(property_of(event), []).append(event)
    assert all(len(v) == 1 for v in by_value.values()), "duplicated events"
    assert sorted(by_value) == sorted(property_value(who.tenant, aid) for aid in expected)
    for aid, (kind, start, end) in expected.items():
        event = by_value[property_value(who.tenant, aid)][0]
        if kind == "all_day":
            assert event["isAllDay"] is True
            assert event["start"]["dateTime"].startswith(start.isoformat())
            assert event["end"]["dateTime"].startswith(end.isoformat())
        else:
            assert utc(event) == (
                start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                end.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            ), aid


def dry_counts(stack: Stack, who: CrmUser, items: list[dict[str, Any]]) -> dict[str, int]:
    totals = {"create": 0, "update": 0, "unchanged": 0, "ineligible": 0}
    for start in range(0, len(items), 500):
        body = {"activities": items[start : start + 500], "last_page": True, "dry_run": True}
        answer = post_page(stack, who, body, 200)
        for key, value in answer["counts"].items():
            totals[key] += value
        assert len(answer["plan"]) == len(body["activities"])
    return totals


@pytest.mark.timeout(300)
def test_two_thousand_activities_backfill_exactly_once_under_throttling(stack: Stack) -> None:
    who = connect_user(stack, time_zone="Romance Standard Time")
    items, expected = make_activities(who, 2000)
    stack.control.reset_counters()
    # 33/s: under what the host sustains here (about 40-50 inner requests/s), so the throttle is
    # really met whatever the machine; at 50/s a quiet 2-core machine never reached it.
    stack.control.set_throttling(limit=200, window_seconds=6)

    planned = dry_counts(stack, who, items)
    assert planned["create"] == len(expected)
    assert planned["ineligible"] == len(items) - len(expected)
    assert ours(stack, who) == []  # the dry run wrote nothing
    assert backfill_status(stack, who) is None

    job = run_job(stack, who, items)
    done = completed(stack, who, job["job_id"], timeout=150)["data"]
    assert done == {
        "job_id": job["job_id"],
        "created": planned["create"],
        "updated": 0,
        "unchanged": 0,
        "ineligible": planned["ineligible"],
        "failed": 0,
    }
    check_events(stack, who, expected)
    progress = backfill_status(stack, who)
    assert progress["state"] == "completed" and progress["percent"] == 100.0
    assert progress["done"] == progress["total"] == len(items)
    counters = stack.control.counters(who.oid)["mailboxes"][who.oid]
    assert sum(counters["throttled"].values()) > 0  # throttling really happened
    # One $batch per 20 activities, plus one per throttled remnant. (Other Graph traffic of the
    # mailbox, e.g. the reconcile worker's delta reads after our own writes, is not ours.)
    batches = counters["requests"]["POST /$batch"]
    assert batches <= 0.07 * len(expected), counters

    # The same pages again (a new job): nothing is created, everything is unchanged.
    again = dry_counts(stack, who, items)
    assert again == {
        "create": 0,
        "update": 0,
        "unchanged": len(expected),
        "ineligible": len(items) - len(expected),
    }
    before = stack.control.counters(who.oid)["totals"][who.oid]["batch_inner"]
    job2 = run_job(stack, who, items)
    done2 = completed(stack, who, job2["job_id"], timeout=60)["data"]
    assert done2["created"] == 0 and done2["unchanged"] == len(expected) and done2["failed"] == 0
    assert stack.control.counters(who.oid)["totals"][who.oid]["batch_inner"] == before
    stack.wait_until_idle()
    check_events(stack, who, expected)
    assert len(stack.callbacks.of_type("backfill.completed")) == 2
    assert stack.poisoned("activity-backfill") == []


def test_a_page_posted_twice_counts_once_and_changes_are_updates(stack: Stack) -> None:
    who = connect_user(stack)
    items, expected = make_activities(who, 30, seed=3)
    first = post_page(stack, who, {"activities": items, "last_page": False}, 202)
    twice = post_page(stack, who, {"job_id": first["job_id"], "activities": items, "last_page": True}, 202)
    assert twice["duplicate_page"] is True and twice["total"] == 30
    done = completed(stack, who, first["job_id"], timeout=60)["data"]
    assert done["created"] == len(expected) and done["created"] + done["ineligible"] == 30
    check_events(stack, who, expected)
    # A later page for a closed job is refused.
    closed = stack.crm.post(
        user_path(who.tenant, who.user, "backfill"),
        {"job_id": first["job_id"], "activities": items[:1], "last_page": True},
    )
    assert closed.status_code == 409
    # New versions of three eligible activities: the dry run and the real run both say update.
    changed = []
    for item in items:
        if item["id"] in expected and len(changed) < 3:
            changed.append({**item, "version": 2, "subject": item["subject"] + " (movida)"})
    plan = post_page(stack, who, {"activities": changed, "last_page": True, "dry_run": True}, 200)
    assert plan["counts"]["update"] == 3
    job = post_page(stack, who, {"activities": changed, "last_page": True}, 202)
    assert completed(stack, who, job["job_id"], timeout=60)["data"]["updated"] == 3
    subjects = {property_of(e): e["subject"] for e in ours(stack, who)}
    assert all(subjects[property_value(who.tenant, c["id"])].endswith("(movida)") for c in changed)


def test_bad_pages_and_items(stack: Stack) -> None:
    who = connect_user(stack)
    path = user_path(who.tenant, who.user, "backfill")
    items, _ = make_activities(who, 3, seed=5)
    too_many = stack.crm.post(path, {"activities": [items[0]] * 501, "last_page": True})
    assert too_many.status_code == 400 and too_many.json()["fields"][0]["field"] == "activities"
    envelope = stack.crm.post(path, {"activities": items, "last_page": "yes"})
    assert envelope.status_code == 400 and envelope.json()["fields"][0]["field"] == "last_page"
    bad = [items[0], {**items[1], "subject": 7}, {**items[2], "owner_user_id": "someone-else"}]
    answer = stack.crm.post(path, {"activities": bad, "last_page": True, "dry_run": True})
    assert answer.status_code == 200, answer.text
    openapi_contract.check("POST", BACKFILL, answer)
    assert [r["field"] for r in answer.json()["rejected"]] == [
        "activities[1].subject",
        "activities[2].owner_user_id",
    ]
    assert len(answer.json()["plan"]) == 1
    stranger = stack.crm.post(
        user_path(who.tenant, "never-connected", "backfill"), {"activities": [], "last_page": True}
    )
    assert stranger.status_code == 409


def test_an_unfinished_create_is_found_not_duplicated(stack: Stack) -> None:
    """A create whose answer was lost (the event exists, the link only shows the intent)."""
    who = connect_user(stack)
    items, expected = make_activities(who, 12, seed=11)
    stack.control.add_fault("lost_response", count=1, method="POST", path_contains="$batch")
    job = post_page(stack, who, {"activities": items, "last_page": True}, 202)
    done = completed(stack, who, job["job_id"], timeout=60)["data"]
    assert done["created"] == len(expected) and done["failed"] == 0
    check_events(stack, who, expected)


def test_all_day_and_window_edges_in_the_dry_run(stack: Stack) -> None:
    who = connect_user(stack)
    today = days_from_today(0)
    old = {
        **copy.deepcopy(BASE_ACTIVITY),
        "id": "old",
        "owner_user_id": who.user,
        "all_day": True,
        "start": (today - timedelta(days=40)).isoformat(),
        "end": (today - timedelta(days=39)).isoformat(),
    }
    recent = {
        **old,
        "id": "recent",
        "start": (today - timedelta(days=3)).isoformat(),
        "end": today.isoformat(),
    }
    plan = post_page(stack, who, {"activities": [old, recent], "last_page": True, "dry_run": True}, 200)
    assert [(p["activity_id"], p["action"], p["reason"]) for p in plan["plan"]] == [
        ("old", "ineligible", "out_of_window"),
        ("recent", "create", None),
    ]


def test_backfilled_activities_come_back_when_their_type_is_shown_again(stack: Stack) -> None:
    who = connect_user(stack)
    call_type = {"id": "type-call", "name": "Llamada", "show_in_calendar": True}
    recent = activity(who, id="call-soon", type=call_type)  # the base activity's DAY: inside the window
    long_ago = days_from_today(-40).isoformat()  # ended 40 days ago: outside the 30-day window
    old = activity(who, id="call-old", type=call_type, start=f"{long_ago}T10:00:00", end=f"{long_ago}T11:00:00")
    job = run_job(stack, who, [recent, old])
    assert completed(stack, who, job["job_id"], timeout=60)["data"]["created"] == 1
    assert [property_of(e) for e in ours(stack, who)] == [property_value(who.tenant, "call-soon")]

    send(stack, envelope(who.tenant, "activity_type.updated", {**call_type, "show_in_calendar": False}))
    wait_until(lambda: ours(stack, who) == [], what="the type's events removed")

    send(stack, envelope(who.tenant, "activity_type.updated", call_type))
    wait_until(lambda: ours(stack, who), what="the backfilled call back in the calendar")
    stack.wait_until_idle()
    back = ours(stack, who)
    # Only the one inside the window: the old call never reaches the calendar.
    assert [property_of(e) for e in back] == [property_value(who.tenant, "call-soon")]
    assert back[0]["subject"] == recent["subject"]


def test_remove_sync_keeps_no_content_of_backfilled_activities(stack: Stack) -> None:
    who = connect_user(stack)
    items, expected = make_activities(who, 25, seed=5)
    job = run_job(stack, who, items)
    assert completed(stack, who, job["job_id"], timeout=60)["data"]["created"] == len(expected)

    answer = stack.crm.post(user_path(who.tenant, who.user, "disconnect"), {"remove_events": "none"})
    assert answer.status_code == 200, answer.text

    rows = list(
        stack.storage.table(tables.JOBS).query_entities(
            "PartitionKey eq @pk", parameters={"pk": tables.key(who.tenant, who.user)}
        )
    )
    chunks = [row for row in rows if row["RowKey"].startswith("chunk|")]
    assert chunks and not any("p0" in row for row in chunks)  # their counts stay, their content goes
    kept = list(
        stack.storage.table(tables.ACTIVITIES).query_entities(
            "PartitionKey eq @pk", parameters={"pk": tables.key(who.tenant)}
        )
    )
    assert {tables.unkey(row["RowKey"])[0] for row in kept} >= set(expected)  # they were kept...
    assert not any("p0" in row for row in kept)  # ...and now only their versions are
    assert backfill_status(stack, who)["created"] == len(expected)


def test_two_hosts_never_send_batches_to_one_mailbox_at_the_same_time(stack: Stack, tmp_path: Path) -> None:
    """Scale-out: a second instance works the same backfill. Outlook runs four requests of a
    mailbox at once and a $batch uses all four, so overlapping batches would meet 429s; the
    mailbox's batch lease keeps them apart."""
    who = connect_user(stack)
    stack.control.set_notifications(paused=True)  # our creates would start reconciles (more Graph calls)
    # Outlook takes a while per create; a $batch of 20 then lasts about half a second.
    stack.control.add_fault("latency", latency_ms=100, inner=True, method="POST", mailbox=who.oid)
    one_at_a_time = json.loads((ROOT / "host.json").read_text())
    one_at_a_time["extensions"]["queues"]["batchSize"] = 1  # so the first host cannot take every chunk
    (tmp_path / "host.json").write_text(json.dumps(one_at_a_time))
    second = Service(
        "host-2",
        ["-m", "local.host", "--port", str(free_port()), "--host-json", str(tmp_path / "host.json")],
        dict(stack.host.env),
    ).start()
    try:
        items, expected = make_activities(who, 600, seed=11)
        job = run_job(stack, who, items)
        done = completed(stack, who, job["job_id"], timeout=180)["data"]
    finally:
        second.stop()
    assert done["created"] == len(expected) and done["failed"] == 0
    check_events(stack, who, expected)
    for host in (stack.host, second):  # both instances worked on the job
        # backfill_chunk, or backfill_chunk_<k> on the user's tenant shard k (functions/shards.py)
        assert any(re.search(r"Executed 'backfill_chunk(_\d+)?'", line) for line in host.output), host.name
    throttled = stack.control.counters(who.oid)["mailboxes"][who.oid]["throttled"]
    assert throttled == {}  # not one MailboxConcurrency 429 (without the lease: dozens)


def test_after_remove_sync_no_content_is_kept_until_a_new_sync_brings_it(stack: Stack) -> None:
    who = connect_user(stack)
    answer = stack.crm.post(user_path(who.tenant, who.user, "disconnect"), {"remove_events": "none"})
    assert answer.status_code == 200, answer.text

    # The CRM keeps pushing this user's activities: ordering is kept, their content is not.
    while_off = activity(who, id="while-off")
    send(stack, envelope(who.tenant, "activity.upserted", while_off))
    activities = stack.storage.table(tables.ACTIVITIES)
    kept = wait_until(
        lambda: tables.read(activities, tables.key(who.tenant), tables.key("while-off"), "test"),
        what="the pushed activity's version kept",
    )
    assert kept["version"] == 1 and "p0" not in kept

    # Connected again, "Sync" with that same version puts it in the calendar and keeps it.
    reconnect(stack, who.tenant, who.user, who.upn)
    job = run_job(stack, who, [while_off])
    assert completed(stack, who, job["job_id"], timeout=60)["data"]["created"] == 1
    assert "p0" in tables.read(activities, tables.key(who.tenant), tables.key("while-off"), "test")
