"""Reconcile cost (issue 9, item 3): a calendar with 5,000 of OUR events and 5,000 of the user's,
then 10 user changes (5 of ours moved, 2 of ours deleted, 3 of the user's edited). Counted: the Graph
requests of one incremental delta pass against a full listing; goal <= ceil(changes / page size) + 1
delta requests.

How the calendar is built (through the whole stack: dev host, Azurite, the emulator):
- ours: one backfill job (``POST .../backfill``, pages of 500 future activities) until
  ``backfill.completed``, so every event carries our extended property and has a link row;
- the user's: created as the user through the emulator's control API (a thread pool).
Graph change notifications are dropped by the emulator for the whole run (``drop_probability`` 1),
so no reconcile runs unless asked: each pass below is one signed ``POST .../reconcile``.

Passes:
1. the initial pass (no delta link yet): a full delta round over the sync window; its requests are
   the "full listing" as the reconcile does it. For comparison, a plain ``GET /me/calendarView``
   listing of the 10,000 events at the same page size costs ceil(10,000 / page size) requests.
2. after the 10 changes, one incremental pass from the stored delta link: its ``/delta`` requests
   are what the goal is about; the GETs by id it makes to verify deletions (``@removed`` items) are
   reported apart, as is every other endpoint it touched.

The page size is the one the reconcile asks for with ``Prefer: odata.maxpagesize``
(``shared.flows.reconcile.DELTA_PAGE_SIZE``, 100; Graph's default would be 10). ``BENCH_RECONCILE_PAGE``
changes the emulator's default page, which only matters for requests that ask for none.

Run: ``python -m bench.bench_reconcile``. Knobs: BENCH_RECONCILE_OURS (5000), BENCH_RECONCILE_THEIRS
(5000), BENCH_RECONCILE_PAGE (emulator default).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.stack import graph_requests, planned_activities, running_stack
from tests.conftest import wait_until
from tests.e2e.push.conftest import CrmUser, connect_user, ours, property_of, user_path

OUT = Path(__file__).resolve().parent / "out"
OURS = int(os.environ.get("BENCH_RECONCILE_OURS", "5000"))
THEIRS = int(os.environ.get("BENCH_RECONCILE_THEIRS", "5000"))
PAGE_SIZE = os.environ.get("BENCH_RECONCILE_PAGE")
BACKFILL_PAGE = 500
MOVES, DELETES, EDITS = 5, 2, 3


def _backfill(stack: Any, who: CrmUser, count: int) -> dict[str, Any]:
    items = planned_activities(who.user, count, prefix="rec")
    job_id = None
    for first in range(0, count, BACKFILL_PAGE):
        body: dict[str, Any] = {
            "activities": items[first : first + BACKFILL_PAGE],
            "last_page": first + BACKFILL_PAGE >= count,
            "dry_run": False,
        }
        if job_id:
            body["job_id"] = job_id
        answer = stack.crm.post(user_path(who.tenant, who.user, "backfill"), body)
        if answer.status_code != 202:
            raise RuntimeError(f"backfill page refused: {answer.status_code} {answer.text[:300]}")
        job_id = answer.json()["job_id"]
    return stack.callbacks.wait_for("backfill.completed", timeout=600)[0]["data"]


def _user_event(n: int) -> dict[str, Any]:
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0, tzinfo=None)
    start += timedelta(days=1 + n % 300, hours=12 + n % 8, minutes=15)
    return {
        "subject": f"Personal {n}",
        "start": {"dateTime": start.isoformat(), "timeZone": "UTC"},
        "end": {"dateTime": (start + timedelta(minutes=45)).isoformat(), "timeZone": "UTC"},
    }


def _user_events(stack: Any, who: CrmUser, count: int) -> list[str]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        created = list(
            pool.map(lambda n: stack.control.user_create_event(who.oid, _user_event(n)), range(count))
        )
    return [e["id"] for e in created]


def _activity_id(event: dict[str, Any]) -> str:
    from shared.rules.event_render import parse_property_value

    parsed = parse_property_value(property_of(event))
    assert parsed is not None
    return parsed[1]


def _requests(stack: Any, who: CrmUser) -> Counter[str]:
    counted = stack.control.counters(who.oid)["mailboxes"].get(who.oid, {}).get("requests", {})
    return Counter(counted)


def _one_pass(stack: Any, who: CrmUser, settle: float = 2.0) -> tuple[Counter[str], float]:
    """Ask for one reconcile and wait until it ran and nothing is left on its queue; the Graph
    requests it made (per endpoint) and its wall time."""
    from shared.rules import queues
    from shared.store import connections, mailbox_sync

    queue = stack.storage.queue(stack.queue_name(queues.MAILBOX_RECONCILE, who.tenant))
    before_at = connections.get(stack.storage, who.tenant, who.user).last_reconcile_at
    before = _requests(stack, who)
    started = time.monotonic()
    answer = stack.crm.post(user_path(who.tenant, who.user, "reconcile"), {})
    if answer.status_code != 202:
        raise RuntimeError(f"reconcile refused: {answer.status_code} {answer.text[:300]}")

    def done() -> bool:
        if connections.get(stack.storage, who.tenant, who.user).last_reconcile_at == before_at:
            return False
        if mailbox_sync.load(stack.storage, who.tenant, who.user).lease_id:
            return False
        return queue.get_queue_properties().approximate_message_count == 0

    wait_until(done, 300, "the reconcile pass finished")
    wall = time.monotonic() - started
    time.sleep(settle)  # nothing else should arrive; if it does, it is counted (honestly) below
    return _requests(stack, who) - before, wall


def main() -> None:
    with running_stack() as stack:
        who = connect_user(stack)
        stack.control.set_notifications(drop_probability=1.0)  # no reconcile unless asked
        stack.control.set_throttling(limit=1_000_000, window_seconds=600)
        if PAGE_SIZE:
            stack.control.update_settings(delta_page_size=int(PAGE_SIZE))
        from shared.flows.reconcile import DELTA_PAGE_SIZE

        page = int(DELTA_PAGE_SIZE.split("=")[1])  # what every delta request of the reconcile asks for

        built = time.monotonic()
        job = _backfill(stack, who, OURS)
        theirs = _user_events(stack, who, THEIRS)
        mine = ours(stack, who)
        build_seconds = time.monotonic() - built
        total = len(stack.control.events(who.oid))

        initial, initial_wall = _one_pass(stack, who)
        initial_delta = sum(n for endpoint, n in initial.items() if "/delta" in endpoint)

        # 10 user changes: move 5 of ours, delete 2 of ours, edit 3 of the user's (subject only).
        for event in mine[:MOVES]:
            begins = datetime.fromisoformat(event["startUtc"].replace("Z", "+00:00")) + timedelta(hours=2)
            stack.control.user_move_event(
                who.oid,
                event["id"],
                {"dateTime": begins.replace(tzinfo=None).isoformat(), "timeZone": "UTC"},
                {
                    "dateTime": (begins + timedelta(hours=1)).replace(tzinfo=None).isoformat(),
                    "timeZone": "UTC",
                },
            )
        for event in mine[MOVES : MOVES + DELETES]:
            stack.control.user_delete_event(who.oid, event["id"])
        for event_id in theirs[:EDITS]:
            stack.control.user_update_event(who.oid, event_id, {"subject": "Edited in Outlook"})
        changes = MOVES + DELETES + EDITS
        moved_ids = {_activity_id(e) for e in mine[:MOVES]}
        deleted_ids = {_activity_id(e) for e in mine[MOVES : MOVES + DELETES]}

        incremental, incremental_wall = _one_pass(stack, who)
        try:  # the callbacks are queued by the pass and delivered just after it
            wait_until(
                lambda: (
                    len(stack.callbacks.of_type("activity.changed_in_outlook")) >= MOVES
                    and len(stack.callbacks.of_type("activity.deleted_in_outlook")) >= DELETES
                ),
                60,
                "the pass's callbacks",
            )
        except AssertionError:
            pass  # reported as counted below
        reported_moves = {
            c["data"]["activity_id"] for c in stack.callbacks.of_type("activity.changed_in_outlook")
        }
        reported_deletions = {
            c["data"]["activity_id"] for c in stack.callbacks.of_type("activity.deleted_in_outlook")
        }
        delta_requests = sum(n for endpoint, n in incremental.items() if "/delta" in endpoint)
        reads_by_id = incremental.get("GET /events/{id}", 0)
        other = {k: v for k, v in incremental.items() if "/delta" not in k and k != "GET /events/{id}"}
        total_delta = graph_requests(stack, who.oid, "/delta")

    goal = math.ceil(changes / page) + 1
    result = {
        "our_events": len(mine),
        "user_events": len(theirs),
        "calendar_events": total,
        "backfill": job,
        "build_seconds": round(build_seconds, 1),
        "page_size": page,
        "prefer_maxpagesize_sent": DELTA_PAGE_SIZE,
        "changes": {"moved_ours": MOVES, "deleted_ours": DELETES, "edited_users": EDITS, "total": changes},
        "incremental_pass": {
            "delta_requests": delta_requests,
            "goal_delta_requests": goal,
            "meets_goal": delta_requests <= goal,
            "verify_reads_by_id": reads_by_id,
            "other_requests": other,
            "all_requests": sum(incremental.values()),
            "wall_seconds": round(incremental_wall, 2),
            "moves_reported": len(moved_ids & reported_moves),
            "deletions_reported": len(deleted_ids & reported_deletions),
            "unexpected_callbacks": len((reported_moves - moved_ids) | (reported_deletions - deleted_ids)),
        },
        "initial_full_pass": {
            "delta_requests": initial_delta,
            "all_requests": sum(initial.values()),
            "requests": dict(initial),
            "wall_seconds": round(initial_wall, 1),
        },
        "plain_calendarview_listing_requests": math.ceil(total / page),
        "delta_requests_whole_run": total_delta,
        "measured_at": datetime.now(UTC).isoformat(),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "reconcile.json").write_text(json.dumps(result, indent=2) + "\n")
    inc = result["incremental_pass"]
    print(
        f"reconcile: {changes} user changes in a calendar of {total} ({len(mine)} ours): incremental pass "
        f"{delta_requests} delta requests (goal <= ceil({changes}/{page})+1 = {goal}) + {reads_by_id} GETs by id "
        f"to verify deletions, {inc['all_requests']} Graph requests in all, {inc['wall_seconds']} s; "
        f"{inc['moves_reported']}/{MOVES} moves and {inc['deletions_reported']}/{DELETES} deletions reported; "
        f"initial full pass {initial_delta} delta requests ({result['initial_full_pass']['all_requests']} in all, "
        f"{result['initial_full_pass']['wall_seconds']} s); plain calendarView listing at page {page}: "
        f"{result['plain_calendarview_listing_requests']} requests -> bench/out/reconcile.json"
    )


if __name__ == "__main__":
    main()
