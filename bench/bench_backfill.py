"""Backfill throughput: 5,000 activities for one mailbox, in pages of 500, against the emulator
with Outlook throttling on (a scaled window), through the whole stack (dev host + Azurite).

Measures:
- Graph HTTP requests per backfilled activity (``POST /$batch`` envelopes / activities; goal
  <= 0.06, i.e. close to one request per 20 activities);
- the achieved rate of successful inner requests while throttled (from the first 429 to the last
  create) / the emulator's ceiling (limit / window; goal >= 0.9);
- duplicates and lost events (both 0), wall time from the first page to ``backfill.completed``.

Graph change notifications are paused in the emulator so that the reconcile worker (reacting to
our own creates) does not share the mailbox's window during the measurement.

Run: ``python -m bench`` (every bench) or ``python bench/bench_backfill.py``. Knobs (environment):
BENCH_BACKFILL_COUNT (5000), BENCH_BACKFILL_LIMIT (1000), BENCH_BACKFILL_WINDOW (30 seconds), i.e.
Outlook's 10,000 per 600 s with the window scaled down twenty times and the limit ten (33/s, twice
the real 16.7/s; the whole local stack runs about 85 creates/s unthrottled).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "out"
COUNT = int(os.environ.get("BENCH_BACKFILL_COUNT", "5000"))
LIMIT = int(os.environ.get("BENCH_BACKFILL_LIMIT", "1000"))
WINDOW = float(os.environ.get("BENCH_BACKFILL_WINDOW", "30"))
PAGE = 500
ZONES = ["America/Bogota", "Europe/Madrid", "Asia/Tokyo", "America/New_York", "UTC"]


class Sampler(threading.Thread):
    """Successful inner creates over time, from the emulator's counters."""

    def __init__(self, control: Any, mailbox: str) -> None:
        super().__init__(daemon=True)
        self.control, self.mailbox = control, mailbox
        self.samples: list[tuple[float, int, int]] = []  # (monotonic, succeeded creates, 429s)
        self.stopping = threading.Event()

    def read(self) -> tuple[int, int]:
        data = self.control.counters(self.mailbox)["mailboxes"].get(self.mailbox, {})
        inner = data.get("batch_inner", {}).get("POST /events", 0)
        throttled = data.get("throttled", {}).get("POST /events", 0)
        return inner - throttled, sum(data.get("throttled", {}).values())

    def run(self) -> None:
        while not self.stopping.is_set():
            ok, throttled = self.read()
            self.samples.append((time.monotonic(), ok, throttled))
            self.stopping.wait(0.2)


def _open_rate(samples: list[tuple[float, int, int]]) -> float | None:
    """Creates per second before the first 429 (how fast the stack goes when Graph lets it)."""
    first = next((s for s in samples if s[2] > 0), samples[-1])
    begun = next((s for s in samples if s[1] > 0), None)
    if begun is None or first[0] <= begun[0]:
        return None
    return (first[1] - begun[1]) / (first[0] - begun[0])


def _steady_rate(samples: list[tuple[float, int, int]]) -> tuple[float | None, float]:
    """Creates per second from the first 429 until the last create, and that span in seconds."""
    first = next((s for s in samples if s[2] > 0), None)
    if first is None:
        return None, 0.0
    final = samples[-1][1]
    last = next(s for s in samples if s[1] == final)
    span = last[0] - first[0]
    return ((last[1] - first[1]) / span if span > 0 else None), span


def run() -> dict[str, Any]:
    from bench.stack import planned_activities, running_stack
    from shared.rules.event_render import PROPERTY_ID, property_value
    from tests.e2e.push.conftest import connect_user, user_path

    with running_stack() as stack:
        # BENCH_BACKFILL_CALENDAR=dedicated: into the dedicated "CRM" calendar ($batch to /me/calendars/{id}/events)
        who = connect_user(stack, calendar=os.environ.get("BENCH_BACKFILL_CALENDAR") or None)
        tenant, mailbox = who.tenant, who.oid
        stack.control.set_notifications(paused=True)
        stack.control.set_throttling(limit=LIMIT, window_seconds=WINDOW)
        stack.control.reset_counters()
        items = planned_activities(who.user, COUNT, prefix="bench", zones=ZONES)
        sampler = Sampler(stack.control, mailbox)
        sampler.start()
        started = time.monotonic()
        job_id = None
        for start in range(0, COUNT, PAGE):
            body: dict[str, Any] = {
                "activities": items[start : start + PAGE],
                "last_page": start + PAGE >= COUNT,
            }
            if job_id:
                body["job_id"] = job_id
            answer = stack.crm.post(user_path(tenant, who.user, "backfill"), body)
            if answer.status_code != 202:
                raise RuntimeError(f"page refused: {answer.status_code} {answer.text[:300]}")
            job_id = answer.json()["job_id"]
        done = stack.callbacks.wait_for("backfill.completed", timeout=1200)[0]["data"]
        wall = time.monotonic() - started
        sampler.stopping.set()
        sampler.join()
        sampler.samples.append((time.monotonic(), *sampler.read()))
        counters = stack.control.counters(mailbox)["mailboxes"][mailbox]
        events = [
            e
            for e in stack.control.events(mailbox)
            if any(p["id"] == PROPERTY_ID for p in e["singleValueExtendedProperties"])
        ]
    values: dict[str, int] = {}
    for event in events:
        value = next(p["value"] for p in event["singleValueExtendedProperties"] if p["id"] == PROPERTY_ID)
        values[value] = values.get(value, 0) + 1
    wanted = {property_value(tenant, item["id"]) for item in items}
    batches = counters["requests"].get("POST /$batch", 0)
    rate, span = _steady_rate(sampler.samples)
    ceiling = LIMIT / WINDOW
    return {
        "activities": COUNT,
        "calendar": os.environ.get("BENCH_BACKFILL_CALENDAR") or "default",
        "inner_endpoints": dict(counters["batch_inner"]),
        "throttling": {"limit": LIMIT, "window_seconds": WINDOW, "ceiling_per_second": ceiling},
        "job": done,
        "graph_http_requests": sum(counters["requests"].values()),
        "graph_batches": batches,
        "requests_per_activity": round(batches / COUNT, 4),
        "inner_requests": sum(counters["batch_inner"].values()),
        "throttled_429s": sum(counters["throttled"].values()),
        "unthrottled_rate_per_second": round(_open_rate(sampler.samples) or 0, 1),
        "throttled_rate_per_second": round(rate, 2) if rate else None,
        "throttled_span_seconds": round(span, 1),
        "rate_vs_ceiling": round(rate / ceiling, 3) if rate else None,
        "duplicates": sum(n - 1 for n in values.values() if n > 1),
        "lost": len(wanted - set(values)),
        "wall_seconds": round(wall, 1),
    }


def main() -> None:
    result = run()
    OUT.mkdir(parents=True, exist_ok=True)
    name = "backfill.json" if result["calendar"] == "default" else f"backfill-{result['calendar']}.json"
    (OUT / name).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"backfill: {result['activities']} activities in {result['wall_seconds']} s; "
        f"{result['requests_per_activity']} Graph requests/activity (goal <= 0.06); "
        f"rate while throttled {result['throttled_rate_per_second']}/s = {result['rate_vs_ceiling']} of the "
        f"ceiling {result['throttling']['ceiling_per_second']:.0f}/s (goal >= 0.9); "
        f"429s {result['throttled_429s']}; duplicates {result['duplicates']}; lost {result['lost']}"
        f" -> bench/out/{name}"
    )


if __name__ == "__main__":
    main()
