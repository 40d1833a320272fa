"""Noisy neighbour (issue 15): tenant A's CRM sends 5,000 pushes as fast as it can (16 threads, spread
over A's 20 users); meanwhile tenant B sends one push every 2 s (20 in all). B's latency (webhook
sent -> event stored in B's mailbox, read from the emulator's state every 20 ms) p50/p95/max, goal
p95 <= 5 s with one dev host; A's total time (first push sent -> A's last event stored) with B
running, against A alone beforehand (goal: not more than 10 % slower).

A and B are chosen so that they hash to different shards of the work queues (WORK_QUEUE_SHARDS,
default 8; shared/rules/queues.py); both shards are printed. ``BENCH_NOISY_ONE_SHARD=1`` runs the
same with ``WORK_QUEUE_SHARDS=1`` too (one FIFO queue for every tenant, as before issue 15), for
comparison. Sizes: ``BENCH_NOISY_A_PUSHES`` (5000), ``BENCH_NOISY_B_PUSHES`` (20). Writes
bench/out/noisy_neighbour.json."""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.stack import platform_dispatch, running_stack
from shared.rules import queues
from shared.rules.settings import work_queue_shards
from tests.e2e.push.conftest import CrmUser, activity, connect_user, envelope
from tests.support.crm import SignedClient

OUT = Path(__file__).resolve().parent / "out"
A_PUSHES = int(os.environ.get("BENCH_NOISY_A_PUSHES", "5000"))
B_PUSHES = int(os.environ.get("BENCH_NOISY_B_PUSHES", "20"))
A_USERS = 20
B_EVERY = 2.0
CRM_THREADS = 16
# The dev host dispatches queue messages as the platform does (bench/stack.platform_dispatch);
# BENCH_NOISY_THREADS sets the worker's thread pool instead of the platform's default.
WORKER_THREADS = int(os.environ.get("BENCH_NOISY_THREADS") or 0) or None


def _tenants(shards: int) -> tuple[str, str]:
    a = f"tenant-a-{uuid.uuid4().hex[:6]}"
    while True:
        b = f"tenant-b-{uuid.uuid4().hex[:6]}"
        if shards == 1 or queues.shard_of(b, shards) != queues.shard_of(a, shards):
            return a, b


def _stored(stack: Any, oid: str, prefix: str) -> dict[str, float]:
    """Our events in a mailbox whose subject starts with ``prefix``: subject -> time it was stored."""
    store = stack.emulator.store
    with store.lock:
        mailbox = store.mailboxes[oid]
        return {
            e.props.get("subject", ""): e.created.timestamp()
            for e in mailbox.events.values()
            if not e.deleted and str(e.props.get("subject", "")).startswith(prefix)
        }


def _push(client: SignedClient, who: CrmUser, subject: str, n: int) -> None:
    start = datetime.now(UTC).replace(tzinfo=None, microsecond=0) + timedelta(days=1, minutes=30 * (n % 2000))
    data = activity(
        who,
        id=f"{subject}",
        subject=subject,
        start=start.isoformat(),
        end=(start + timedelta(minutes=30)).isoformat(),
    )
    for _ in range(20):
        answer = client.post("/api/crm/events", envelope(who.tenant, "activity.upserted", data))
        if answer.status_code == 202:
            return
        time.sleep(0.5)  # the CRM retries a 5xx
    raise RuntimeError(f"push {subject} refused: {answer.status_code} {answer.text[:200]}")


def _burst(stack: Any, users: list[CrmUser], label: str, count: int) -> float:
    """A's CRM: ``count`` pushes as fast as it can; seconds until the last one is in Outlook."""
    local = threading.local()

    def send(n: int) -> None:
        if not hasattr(local, "client"):
            local.client = SignedClient(stack.url, stack.secrets["CRM_SHARED_SECRET"])
        _push(local.client, users[n % len(users)], f"{label}-{n:05d}", n)

    started = time.time()
    with ThreadPoolExecutor(CRM_THREADS) as pool:
        list(pool.map(send, range(count)))
    accepted = time.time() - started
    while sum(len(_stored(stack, u.oid, f"{label}-")) for u in users) < count:
        if time.time() - started > 3600:
            raise RuntimeError(f"{label}: not every push reached Outlook")
        time.sleep(0.2)
    done = max(t for u in users for t in _stored(stack, u.oid, f"{label}-").values())
    print(
        f"  {label}: {count} pushes accepted in {accepted:.1f} s, all in Outlook after {done - started:.1f} s"
    )
    return done - started


def run(shards: int) -> dict[str, Any]:
    with running_stack(WORK_QUEUE_SHARDS=str(shards), **platform_dispatch(WORKER_THREADS)) as stack:
        tenant_a, tenant_b = _tenants(shards)
        a_users = [connect_user(stack, tenant_a) for _ in range(A_USERS)]
        b = connect_user(stack, tenant_b)
        stack.wait_until_idle(timeout=900)
        alone = _burst(stack, a_users, "alone", A_PUSHES)
        stack.wait_until_idle(timeout=900)  # A's own reconciles (our writes' echoes) done too

        latencies: list[float] = []
        b_client = SignedClient(stack.url, stack.secrets["CRM_SHARED_SECRET"])

        def tenant_b_pushes() -> None:
            sent: dict[str, float] = {}
            for n in range(B_PUSHES):
                subject = f"b-{n:03d}"
                sent[subject] = time.time()
                _push(b_client, b, subject, n)
                time.sleep(max(0.0, sent[subject] + B_EVERY - time.time()))
            deadline = time.time() + 3600
            while len(_stored(stack, b.oid, "b-")) < B_PUSHES and time.time() < deadline:
                time.sleep(0.02)
            stored = _stored(stack, b.oid, "b-")
            latencies.extend(stored[s] - sent[s] for s in sent if s in stored)

        b_thread = threading.Thread(target=tenant_b_pushes)
        b_thread.start()
        with_b = _burst(stack, a_users, "noisy", A_PUSHES)
        b_thread.join()
        latencies.sort()
        p95 = latencies[max(0, int(round(0.95 * len(latencies))) - 1)] if latencies else None
        return {
            "work_queue_shards": shards,
            "tenant_a_shard": queues.shard_of(tenant_a, shards),
            "tenant_b_shard": queues.shard_of(tenant_b, shards),
            "a_pushes": A_PUSHES,
            "a_users": A_USERS,
            "b_pushes": B_PUSHES,
            "b_delivered": len(latencies),
            "b_latency_p50_s": round(statistics.median(latencies), 2) if latencies else None,
            "b_latency_p95_s": round(p95, 2) if p95 is not None else None,
            "b_latency_max_s": round(latencies[-1], 2) if latencies else None,
            "a_alone_s": round(alone, 1),
            "a_with_b_s": round(with_b, 1),
            "a_slowdown_pct": round(100 * (with_b - alone) / alone, 1),
        }


def main() -> None:
    runs = [run(work_queue_shards())]
    if os.environ.get("BENCH_NOISY_ONE_SHARD") == "1":
        runs.append(run(1))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "noisy_neighbour.json").write_text(json.dumps(runs, indent=2) + "\n")
    for r in runs:
        print(
            f"noisy neighbour ({r['work_queue_shards']} shards, A in {r['tenant_a_shard']}, B in "
            f"{r['tenant_b_shard']}): B p50 {r['b_latency_p50_s']} s, p95 {r['b_latency_p95_s']} s "
            f"(goal <= 5), max {r['b_latency_max_s']} s, {r['b_delivered']}/{r['b_pushes']}; A {r['a_pushes']} "
            f"pushes {r['a_alone_s']} s alone, {r['a_with_b_s']} s with B ({r['a_slowdown_pct']:+} %, goal <= +10 %)"
        )


if __name__ == "__main__":
    main()
