"""Scale (issue 15): the timers at 2,000 and 20,000 connected users in 100-user tenants (20,000 users
= 200 tenants), through the dev host, Azurite and the emulator.

Seeding (tests/support/seed.py): one user signs in through the real flow; every other user is a
copy of it written straight into the emulator's in-process state (mailbox, refresh token,
subscription) and into Azurite (``Connections``, encrypted ``Tokens``, ``Subscriptions`` rows, in
100-row entity-group transactions). Every subscription expires in 30 h (due for renewal) and every
grant was last refreshed 31 days ago (due for the keep-alive); nobody was ever reconciled (due for
the sweep).

For each timer, run through ``POST /admin/functions/{name}``:
1. the timer alone (the maintenance and reconcile workers switched off): its invocation's duration
   (the host's ``Executed`` log line), the host's resident memory growth during it (VmHWM after
   minus VmRSS before), the Graph requests it made (emulator counters, goal 0) and the messages it
   enqueued (the ``mailbox-maintenance`` shards' depth);
2. the time until the due work is done (every ``mailbox-maintenance`` shard empty: renewals made,
   grants refreshed, reconciles scheduled) with one dev host and then, after the due state is
   restored and the timer run again, with two hosts on the same queues: the ratio (goal >= 1.8).
   What a second host adds is what a second instance adds on Flex: a second worker's thread pool.
   So each host dispatches as the platform does (``bench.stack.platform_dispatch``: one pool of
   Python's default size, ``min(32, cores + 4)``), and Graph and the identity platform answer after
   ``BENCH_SCALE_GRAPH_LATENCY_MS`` (default 250 ms, the emulator's ``latency`` fault on every
   request during the drains) as they do from Azure, not in the 2 ms of loopback: on this 2-core
   machine a loopback drain measures the machine's CPU, shared by both hosts, Azurite and the
   emulator, and a second host cannot add any (0.8-1.0 before this setting).
``clean_up`` is storage-only and stays in its timer: duration and memory only.
The hosts' peak memory (VmHWM, the largest of all hosts) per size shows whether memory stays flat.

``FANOUT_SPREAD_SECONDS=0`` here (production spreads messages over 300 s, so its drain time is at
least that). Sizes: ``BENCH_SCALE_USERS`` (default ``2000,20000``); above ``BENCH_SCALE_DRAIN_MAX`` (default
2,000) only step 1 runs. Writes bench/out/scale.json.
"""

from __future__ import annotations

import json
import os
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from bench.stack import platform_dispatch, running_stack
from shared.rules import queues
from shared.rules.settings import work_queue_shards
from shared.store import paging, tables
from tests.support.chaos import restart_host, start_peer_host
from tests.support.seed import Seeded, seed_users

OUT = Path(__file__).resolve().parent / "out"
PER_TENANT = 100
ALL_TIMERS = ("renew_subscriptions", "token_health", "reconcile_sweep", "clean_up")
TIMERS = tuple(os.environ.get("BENCH_SCALE_TIMERS", ",".join(ALL_TIMERS)).split(","))  # a subset, in order
if unknown := set(TIMERS) - set(ALL_TIMERS):
    raise SystemExit(f"BENCH_SCALE_TIMERS: unknown {sorted(unknown)}; known {', '.join(ALL_TIMERS)}")
DRAIN_TIMEOUT = float(os.environ.get("BENCH_SCALE_DRAIN_TIMEOUT", "3600"))
# Above this many users only the timers run (no drains): on a 2-core machine, draining 20,000 users'
# renewals (about 240 ms of CPU each) takes hours and measures the machine, not the fan-out.
DRAIN_MAX = int(os.environ.get("BENCH_SCALE_DRAIN_MAX", "2000"))
GRAPH_LATENCY_MS = int(os.environ.get("BENCH_SCALE_GRAPH_LATENCY_MS", "250"))


def _switch(shards: int, on: bool) -> dict[str, str]:
    """Maintenance and reconcile workers on or off (the reconciles the sweep schedules are not
    part of this bench: bench_reconcile.py measures a reconcile)."""
    env = {}
    for s in range(shards):
        suffix = "" if s == 0 else f"_{s}"
        env[f"AzureWebJobs.maintain_mailboxes{suffix}.Disabled"] = "false" if on else "true"
        env[f"AzureWebJobs.reconcile_mailbox{suffix}.Disabled"] = "true"
    return env


def _proc_kb(pid: int, field: str) -> int:
    found = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(found.group(1)) if found else 0


def _graph_requests(stack: Any) -> int:
    counted = stack.control.counters()["mailboxes"]
    return sum(n for per in counted.values() for n in per.get("requests", {}).values())


def _run_timer(stack: Any, name: str) -> dict[str, Any]:
    """The timer alone, workers off: duration, memory growth, Graph requests, messages enqueued."""
    requests.get(f"{stack.url}/api/health", timeout=30)  # warm: the SDKs load, not counted as the timer's
    stack.control.reset_counters()
    pid = stack.host.process.pid
    rss_before = _proc_kb(pid, "VmRSS")
    lines_before = len(stack.host.output)
    answer = requests.post(f"{stack.url}/admin/functions/{name}", json={}, timeout=10)
    assert answer.status_code == 202, answer.text
    pattern = re.compile(rf"Executed '{name}' \((\w+), id=[^,]+, (\d+) ms\)")
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while True:
        found = [m for line in stack.host.output[lines_before:] if (m := pattern.search(line))]
        if found:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not finish")
        time.sleep(0.05)
    outcome, ms = found[-1].group(1), int(found[-1].group(2))
    return {
        "outcome": outcome,
        "seconds": round(ms / 1000, 3),
        "memory_growth_mb": round((_proc_kb(pid, "VmHWM") - rss_before) / 1024, 1),
        "graph_requests": _graph_requests(stack),
        "messages_enqueued": stack.depth(queues.MAILBOX_MAINTENANCE),
        "tally": next(
            (line.strip() for line in stack.host.output[lines_before:] if f"{_label(name)}:" in line), None
        ),
    }


def _label(name: str) -> str:
    return {
        "renew_subscriptions": "Subscription renewal",
        "token_health": "Token health",
        "reconcile_sweep": "Reconcile sweep",
        "clean_up": "Clean-up",
    }[name]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (``/proc/<pid>/stat`` fields 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _azurite_pids() -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"azurite" in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def _machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy (``/proc/stat``: all but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def _drain(stack: Any, hosts: int, peaks: list[int]) -> dict[str, Any]:
    """Start ``hosts`` hosts with the workers on; seconds until every maintenance shard is empty,
    and the cores each part of the stack kept busy meanwhile (CPU seconds / wall seconds): on this
    2-core machine a drain whose machine is near 2 cores busy measures the machine, not the hosts."""
    restart_host(stack, kill=False, **_switch(stack.shards, on=True))
    peers = [start_peer_host(stack) for _ in range(hosts - 1)]
    hosts_pids = [h.process.pid for h in (stack.host, *peers)]
    parts = {"hosts": hosts_pids, "azurite": _azurite_pids(), "bench_and_emulator": [os.getpid()]}
    if GRAPH_LATENCY_MS:
        stack.control.add_fault("latency", latency_ms=GRAPH_LATENCY_MS, area="any")
    cpu_before = {part: sum(map(_cpu_seconds, pids)) for part, pids in parts.items()}
    machine_before = _machine_busy_seconds()
    started = time.monotonic()
    try:
        while stack.depth(queues.MAILBOX_MAINTENANCE) > 0:
            if time.monotonic() - started > DRAIN_TIMEOUT:
                raise RuntimeError(f"the due work was not done in {DRAIN_TIMEOUT:.0f} s")
            time.sleep(0.2)
        wall = time.monotonic() - started
        cores = {
            part: round((sum(map(_cpu_seconds, pids)) - cpu_before[part]) / wall, 2)
            for part, pids in parts.items()
        }
        cores["machine"] = round((_machine_busy_seconds() - machine_before) / wall, 2)
        return {"seconds": round(wall, 1), "cores_busy": cores}
    finally:
        stack.control.clear_faults()
        for host in (stack.host, *peers):
            peaks.append(_proc_kb(host.process.pid, "VmHWM"))
        for peer in peers:
            peer.stop()
        restart_host(stack, kill=False, **_switch(stack.shards, on=False))


def _restore(stack: Any, name: str, seeded: list[Seeded]) -> None:
    """Put the due state back (what the drain just did) so the two-host run has the same work."""
    expires = datetime.now(UTC) + timedelta(hours=30)
    text = expires.isoformat().replace("+00:00", "Z")
    if name == "renew_subscriptions":
        with stack.emulator.store.lock:
            for s in seeded:
                stack.emulator.store.subscriptions[s.subscription_id].expires_at = expires
        _merge_all(stack, tables.CONNECTIONS, seeded, {"subscription_expires_at": text})
    elif name == "token_health":
        _merge_all(stack, tables.TOKENS, seeded, {"refreshed_at": datetime.now(UTC) - timedelta(days=31)})
    for name_ in queues.all_queues(stack.shards, (queues.MAILBOX_RECONCILE,)):
        stack.storage.queue(name_).clear_messages()  # the sweep's scheduled reconciles (not run here)


def _merge_all(stack: Any, table_name: str, seeded: list[Seeded], values: dict[str, Any]) -> None:
    from azure.data.tables import UpdateMode

    table = stack.storage.table(table_name)
    by_tenant: dict[str, list[Seeded]] = {}
    for s in seeded:
        by_tenant.setdefault(s.tenant, []).append(s)
    for tenant, users in by_tenant.items():
        for start in range(0, len(users), 100):
            table.submit_transaction(
                [
                    (
                        "upsert",
                        {"PartitionKey": tables.key(tenant), "RowKey": tables.key(u.user), **values},
                        {"mode": UpdateMode.MERGE},
                    )
                    for u in users[start : start + 100]
                ]
            )


def one_size(users: int) -> dict[str, Any]:
    tenants = max(1, users // PER_TENANT)
    with running_stack(
        FANOUT_SPREAD_SECONDS="0", **platform_dispatch(), **_switch(work_queue_shards(), on=False)
    ) as stack:
        seed_started = time.monotonic()
        _, seeded = seed_users(stack, tenants, PER_TENANT, expires_in=timedelta(hours=30))
        _merge_all(stack, tables.TOKENS, seeded, {"refreshed_at": datetime.now(UTC) - timedelta(days=31)})
        seed_seconds = round(time.monotonic() - seed_started, 1)
        result: dict[str, Any] = {
            "users": len(seeded),
            "tenants": tenants,
            "seed_seconds": seed_seconds,
            "graph_latency_ms_in_drains": GRAPH_LATENCY_MS,
            "worker_threads_per_host": stack.host.env["PYTHON_THREADPOOL_THREAD_COUNT"],
        }
        peaks: list[int] = []
        for name in TIMERS:
            _restore(stack, name, seeded)  # an earlier timer's work (a renewal refreshes tokens) undone
            timer = _run_timer(stack, name)
            peaks.append(_proc_kb(stack.host.process.pid, "VmHWM"))
            entry: dict[str, Any] = {"timer": timer}
            if name != "clean_up" and len(seeded) <= DRAIN_MAX:
                one = _drain(stack, 1, peaks)
                _restore(stack, name, seeded)
                entry["timer_again"] = _run_timer(stack, name)
                two = _drain(stack, 2, peaks)
                _restore(stack, name, seeded)
                entry.update(
                    done_one_host_s=one["seconds"],
                    done_two_hosts_s=two["seconds"],
                    speedup=round(one["seconds"] / two["seconds"], 2) if two["seconds"] else None,
                    cores_busy_one_host=one["cores_busy"],
                    cores_busy_two_hosts=two["cores_busy"],
                )
            result[name] = entry
        result["host_peak_memory_mb"] = round(max(peaks, default=0) / 1024, 1)
        result["tokens_rows"] = sum(
            len(p.rows)
            for p in paging.pages(stack.storage.table(tables.TOKENS), None, None, ["PartitionKey"])
        )
    return result


def main() -> None:
    sizes = [int(n) for n in os.environ.get("BENCH_SCALE_USERS", "2000,20000").split(",") if n.strip()]
    results = [one_size(n) for n in sizes]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    for r in results:
        timers = "; ".join(_summary(name, r[name]) for name in TIMERS)
        print(
            f"scale: {r['users']} users / {r['tenants']} tenants - {timers}; host peak {r['host_peak_memory_mb']} MB"
        )


def _summary(name: str, entry: dict[str, Any]) -> str:
    timer = entry["timer"]
    said = (
        f"{name} {timer['seconds']} s, +{timer['memory_growth_mb']} MB, {timer['graph_requests']} Graph "
        f"requests, {timer['messages_enqueued']} messages"
    )
    if "speedup" in entry:
        said += (
            f", due work done in {entry['done_one_host_s']} s (1 host) / {entry['done_two_hosts_s']} s "
            f"(2 hosts) = x{entry['speedup']}, machine {entry['cores_busy_one_host']['machine']} / "
            f"{entry['cores_busy_two_hosts']['machine']} cores busy"
        )
    return said


if __name__ == "__main__":
    main()
