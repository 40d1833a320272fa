"""Push: Graph requests per activity on the events endpoints (new: goal 1.0; unchanged re-push:
goal 0; the reconcile's delta reads that our own writes' notifications cause are reported apart), latency from
the CRM's webhook to the event being in the mailbox (p50, p95 over 500 activities through the dev
host, Azurite and the emulator), and the host's CPU time per synced activity.

Latency is the event's ``createdDateTime`` in the emulator minus the moment the webhook was sent,
with webhooks sent at a steady pace (not a backlog). CPU is the host process's user+system time
over the run divided by the activities synced (HTTP handler, worker and callback delivery)."""

from __future__ import annotations

import json
import os
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.stack import graph_requests, running_stack
from tests.conftest import wait_until
from tests.e2e.push.conftest import activity, connect_user, envelope, ours, property_of

OUT = Path(__file__).resolve().parent / "out"
COUNT = int(os.environ.get("BENCH_PUSH_COUNT", "500"))
PACE = float(os.environ.get("BENCH_PUSH_PER_SECOND", "20"))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    with running_stack() as stack:
        who = connect_user(stack)
        start = datetime(2027, 1, 15, 10, 0)
        sent_at: dict[str, float] = {}
        cpu_before = _cpu_seconds(stack.host.process.pid)
        requests_before = graph_requests(stack, who.oid, " /events")
        delta_before = graph_requests(stack, who.oid, "/delta")
        for n in range(COUNT):
            activity_id = f"bench-{n}"
            begins = start + timedelta(minutes=30 * n)
            data = activity(
                who,
                id=activity_id,
                start=begins.isoformat(),
                end=(begins + timedelta(minutes=30)).isoformat(),
            )
            sent_at[activity_id] = time.time()
            answer = stack.crm.post("/api/crm/events", envelope(who.tenant, "activity.upserted", data))
            assert answer.status_code == 202, answer.text
            time.sleep(
                max(0.0, sent_at[activity_id] + 1 / PACE - time.time())
            )  # a steady pace, not a backlog
        wait_until(
            lambda: len(stack.callbacks.of_type("activity.synced")) >= COUNT, 300, "every activity synced"
        )
        cpu = _cpu_seconds(stack.host.process.pid) - cpu_before
        per_new = (graph_requests(stack, who.oid, " /events") - requests_before) / COUNT
        delta = graph_requests(stack, who.oid, "/delta") - delta_before
        events = ours(stack, who)
        latencies = sorted(
            datetime.fromisoformat(e["createdDateTime"].replace("Z", "+00:00")).timestamp()
            - sent_at[property_of(e).rsplit("|", 1)[1]]
            for e in events
        )

        repeat = min(COUNT, 100)
        before = graph_requests(stack, who.oid, " /events")
        for n in range(repeat):  # the same content again, as a newer version: nothing to write
            begins = start + timedelta(minutes=30 * n)
            data = activity(
                who,
                id=f"bench-{n}",
                version=2,
                start=begins.isoformat(),
                end=(begins + timedelta(minutes=30)).isoformat(),
            )
            stack.crm.post("/api/crm/events", envelope(who.tenant, "activity.upserted", data))
        wait_until(
            lambda: (
                sum(1 for c in stack.callbacks.of_type("activity.synced") if c["data"]["version"] == 2)
                >= repeat
            ),
            120,
            "unchanged re-pushes acknowledged",
        )
        per_unchanged = (graph_requests(stack, who.oid, " /events") - before) / repeat

    result = {
        "activities": COUNT,
        "events": len(events),
        "duplicates": len(events) - len({property_of(e) for e in events}),
        "graph_requests_per_new_activity": per_new,
        "graph_requests_per_unchanged_repush": per_unchanged,
        "reconcile_delta_requests_during_push": delta,  # notifications of our own writes, coalesced
        "latency_p50_s": statistics.median(latencies),
        "latency_p95_s": latencies[int(0.95 * (len(latencies) - 1))],
        "host_cpu_ms_per_activity": cpu * 1000 / COUNT,
        "pace_per_second": PACE,
        "measured_at": datetime.now(UTC).isoformat(),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "push.json").write_text(json.dumps(result, indent=2))
    print(
        f"push: {per_new:.2f} Graph requests per new activity (goal 1.0), {per_unchanged:.2f} per unchanged "
        f"re-push (goal 0); webhook->event p50 {result['latency_p50_s'] * 1000:.0f} ms, p95 "
        f"{result['latency_p95_s'] * 1000:.0f} ms over {COUNT}; host CPU {result['host_cpu_ms_per_activity']:.1f} "
        f"ms per activity; {result['events']} events, {result['duplicates']} duplicates"
    )


if __name__ == "__main__":
    main()
