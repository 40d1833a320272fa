"""The chaos run, shared by the reduced test (tests/e2e/test_chaos.py) and the full benchmark
(bench/bench_chaos.py): the same plan, driver and verdict.

A seeded plan of CRM changes (creates, updates, no-op updates, cancels, re-plans, hidden
activities, deletions), sent signed to ``POST /api/crm/events`` by several CRM threads in an
interleaved, partly out-of-order stream with repeated deliveries, while the emulator injects
429, 503, dropped connections and lost-answer creates (and creates a twin on a repeated
``transactionId``, so the service's own idempotency is what is measured). Azurite is restarted
once and the dev host killed (``kill -9``) once and started again on the same port. The CRM
behaves as the contract expects: it retries a 5xx or a failed connection with the same event id.

The expected state is computed from the CRM's inputs alone (per activity the highest version
wins): every eligible activity has exactly one event with its subject and instants, nothing else
of ours is in any mailbox, and the poison queues hold exactly the deliberately bad messages.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import requests

from local.processes import Service
from shared.rules import queues
from shared.rules.event_render import parse_property_value
from tests.e2e.push.conftest import (
    EVENTS_PATH,
    CrmUser,
    activity,
    connect_user,
    envelope,
    ours,
    property_of,
    utc,
)
from tests.support.chaos_users import (
    CHANGED,
    DELETE,
    DELETED,
    MOVE,
    Shown,
    UserEdit,
    UsersInOutlook,
    choose_edits,
)
from tests.support.chaos_users import reports as user_reports
from tests.support.crm import SignedClient
from tests.support.stack import graph_quiet, host_idle

CRM_ZONES = ("America/Bogota", "Europe/Madrid", "America/New_York", "Asia/Tokyo", "Australia/Sydney", "UTC")
MAILBOX_ZONES = ("Romance Standard Time", "Pacific Standard Time", "Tokyo Standard Time", "UTC")
HIDDEN_TYPE = {"id": "type-private", "name": "Privado", "show_in_calendar": False}
# Hold a running message invisible this long in the dev host (instead of 10 minutes), so work held
# by the killed host comes back within the run.
HOST_ENV = {"LOCAL_HOST_QUEUE_HOLD_SECONDS": "20"}


@dataclass(frozen=True)
class ChaosConfig:
    activities: int = 150
    users: int = 6
    tenants: int = 2
    seed: int = 20261127
    p429: float = 0.10
    p503: float = 0.05
    p_drop: float = 0.02
    p_lost_create: float = 0.01
    repeated_share: float = 0.05  # deliveries sent twice (same event id)
    shuffled_share: float = 0.15  # activities whose versions are sent in random order
    senders: int = 8  # CRM threads
    bad_queue_items: int = 3  # deliberately unreadable activity-sync messages
    settle_timeout: float = 300.0
    restart_azurite: bool = True
    kill_host: bool = True
    # Dev hosts on the same queues (issue 15): the CRM's deliveries alternate between their HTTP
    # endpoints and every host polls every queue shard, so messages of one user race between hosts;
    # the first host is the one killed, the others take over what it held.
    hosts: int = 2
    # The CRM paces its outbox while this many activity-sync messages wait: Azurite's queue
    # operations slow down with the queue's depth (each receive scans it), Azure's do not.
    max_backlog: int | None = None
    # Issue 21: Graph down (every request 503) a third into the first slice, storage down (Azurite
    # stopped, then started with its data) a third into the second, instead of a restart; and the
    # share of eventful activities that their users change in Outlook (tests/support/chaos_users.py).
    graph_outage_seconds: float = 0.0
    storage_outage_seconds: float = 0.0
    user_edit_share: float = 0.0


@dataclass
class Expected:
    tenant: str
    user: str
    activity_id: str
    event: tuple[str, str, str] | None  # (subject, start UTC, end UTC) or no event


@dataclass
class Plan:
    users: list[CrmUser]
    deliveries: list[dict[str, Any]]  # envelopes in send order (repeats included)
    expected: dict[tuple[str, str], Expected]
    scenarios: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    repeats: int = 0
    shuffled: int = 0


# --- the plan -------------------------------------------------------------------------------------


def _when(rng: random.Random, today: date) -> tuple[str, str, str, str, str]:
    """A timed activity in the sync window at a wall-clock time no DST rule skips or repeats:
    (zone, start, end as sent, start UTC, end UTC)."""
    zone = rng.choice(CRM_ZONES)
    day = today + timedelta(days=rng.randint(2, 300))
    local = datetime(day.year, day.month, day.day, rng.randint(8, 18), rng.choice((0, 15, 30, 45)))
    minutes = rng.choice((15, 30, 45, 60, 90))
    start = local.replace(tzinfo=ZoneInfo(zone))
    end = (start.astimezone(UTC) + timedelta(minutes=minutes)).astimezone(ZoneInfo(zone))
    z = "%Y-%m-%dT%H:%M:%SZ"
    if rng.random() < 0.3:  # with an explicit offset
        sent = (start.isoformat(), end.isoformat())
    else:  # wall-clock, read in time_zone
        sent = (start.strftime("%Y-%m-%dT%H:%M:%S"), end.strftime("%Y-%m-%dT%H:%M:%S"))
    return zone, *sent, start.astimezone(UTC).strftime(z), end.astimezone(UTC).strftime(z)


def build_plan(users: list[CrmUser], config: ChaosConfig, today: date | None = None) -> Plan:
    rng = random.Random(config.seed)  # noqa: S311 - a reproducible plan
    today = today or datetime.now(UTC).date()
    plan = Plan(users, [], {})
    per_activity: list[list[dict[str, Any]]] = []
    scenarios = ("create", "update", "cancel", "delete", "hidden", "replan", "hidden_type")
    weights = (30, 25, 10, 12, 8, 8, 7)
    for n in range(config.activities):
        owner = users[n % len(users)]
        aid = f"chaos-{n}"
        scenario = rng.choices(scenarios, weights)[0]
        plan.scenarios[scenario] += 1
        versions: list[tuple[str, dict[str, Any]]] = []  # (kind, data)

        def upsert(
            version: int,
            when: tuple[str, ...],
            n=n,
            owner=owner,
            aid=aid,
            versions=versions,
            **overrides: Any,
        ) -> None:
            zone, start, end = when[:3]
            data = activity(
                owner,
                id=aid,
                version=version,
                subject=overrides.pop("subject", f"Llamada {n} v{version}"),
                start=start,
                end=end,
                time_zone=zone,
                url=f"https://crm.example.com/activities/{aid}",
                **overrides,
            )
            versions.append(("activity.upserted", data))

        when = _when(rng, today)
        final: tuple[str, str, str] | None = None
        if scenario == "create":
            upsert(1, when)
            final = (f"Llamada {n} v1", when[3], when[4])
        elif scenario == "update":
            upsert(1, when)
            subject = f"Llamada {n} v1"
            for version in range(2, 2 + rng.randint(1, 3)):
                if rng.random() < 0.3:  # a change Outlook does not show
                    upsert(version, when, subject=subject)
                    continue
                when = _when(rng, today)
                subject = f"Llamada {n} v{version} «nueva» & <b>hora</b>"
                upsert(version, when, subject=subject)
            final = (subject, when[3], when[4])
        elif scenario == "cancel":
            upsert(1, when)
            upsert(2, when, status="cancelled")
        elif scenario == "delete":
            upsert(1, when)
            last = 1
            if rng.random() < 0.5:
                upsert(2, _when(rng, today))
                last = 2
            deleted = {"id": aid, "owner_user_id": owner.user, "version": last + 1}
            versions.append(("activity.deleted", deleted))
        elif scenario == "hidden":
            upsert(1, when, show_in_calendar=False)
            if rng.random() < 0.5:
                upsert(2, when, subject=f"Llamada {n} visible")
                final = (f"Llamada {n} visible", when[3], when[4])
        elif scenario == "replan":
            upsert(1, when)
            upsert(2, when, status="cancelled")
            when = _when(rng, today)
            upsert(3, when, subject=f"Llamada {n} otra vez")
            final = (f"Llamada {n} otra vez", when[3], when[4])
        else:  # an activity of a type whose calendar flag is off
            upsert(1, when, type=dict(HIDDEN_TYPE))
        plan.expected[(owner.tenant, aid)] = Expected(owner.tenant, owner.user, aid, final)
        bodies = [envelope(owner.tenant, kind, data) for kind, data in versions]
        for body in bodies:
            plan.kinds[body["type"]] += 1
        if len(bodies) > 1 and rng.random() < config.shuffled_share:
            rng.shuffle(bodies)
            plan.shuffled += 1
        per_activity.append(bodies)

    # Interleave the activities (each keeps its own order unless shuffled), then repeat a few.
    pending = [list(reversed(b)) for b in per_activity]
    while pending:
        index = rng.randrange(len(pending))
        plan.deliveries.append(pending[index].pop())
        if not pending[index]:
            pending.pop(index)
    for body in list(plan.deliveries):
        if rng.random() < config.repeated_share:
            at = rng.randint(plan.deliveries.index(body) + 1, len(plan.deliveries))
            plan.deliveries.insert(at, body)
            plan.repeats += 1
    return plan


# --- driving it ---------------------------------------------------------------------------------


@dataclass
class SendStats:
    answers: Counter = field(default_factory=Counter)  # accepted / duplicate / http status
    retries: Counter = field(default_factory=Counter)  # why a delivery was tried again
    unexpected: list[str] = field(default_factory=list)
    paced_seconds: float = 0.0  # the CRM waiting for the backlog to shrink
    lock: threading.Lock = field(default_factory=threading.Lock)


class Crm:
    """The CRM's outbox: signed deliveries, retried on 5xx or a failed connection (same event id),
    its threads spread over the hosts' endpoints."""

    def __init__(
        self,
        base_urls: list[str],
        secret: str,
        stats: SendStats,
        deadline_seconds: float = 180.0,
        backlog: Callable[[], int] | None = None,
        max_backlog: int | None = None,
    ) -> None:
        self.base_urls, self.secret, self.stats = base_urls, secret, stats
        self.deadline_seconds = deadline_seconds
        self.local = threading.local()
        self.backlog, self.max_backlog = backlog, max_backlog
        self.sent = 0
        self.answered: set[str] = set()  # envelope ids the CRM has had a final answer for

    def pace(self) -> None:
        with self.stats.lock:
            self.sent += 1
            due = self.sent % 25 == 0
        if not (due and self.backlog and self.max_backlog):
            return
        while True:
            try:
                if self.backlog() <= self.max_backlog:
                    return
            except Exception:  # noqa: BLE001 - storage restarting: just go on
                return
            with self.stats.lock:
                self.stats.paced_seconds += 0.5
            time.sleep(0.5)

    def client(self) -> SignedClient:
        if not hasattr(self.local, "client"):  # each CRM thread talks to one host, in turn
            with self.stats.lock:
                self.threads = getattr(self, "threads", 0) + 1
                url = self.base_urls[self.threads % len(self.base_urls)]
            self.local.client = SignedClient(url, self.secret)
        return self.local.client

    def deliver(self, body: dict[str, Any]) -> None:
        self.pace()
        deadline = time.monotonic() + self.deadline_seconds
        pause = 0.2
        while True:
            try:
                answer = self.client().post(EVENTS_PATH, body)
            except requests.RequestException as error:
                why = f"connection: {type(error).__name__}"
            else:
                if answer.status_code == 202:
                    with self.stats.lock:
                        self.stats.answers[answer.json()["status"]] += 1
                        self.answered.add(body["id"])
                    return
                if answer.status_code < 500:
                    with self.stats.lock:
                        self.stats.answers[str(answer.status_code)] += 1
                        self.stats.unexpected.append(f"{answer.status_code}: {answer.text[:300]}")
                        self.answered.add(body["id"])
                    return
                why = f"http {answer.status_code}"
            with self.stats.lock:
                self.stats.retries[why] += 1
            if time.monotonic() > deadline:
                with self.stats.lock:
                    self.stats.unexpected.append(f"gave up delivering {body['id']}: {why}")
                    self.answered.add(body["id"])
                return
            time.sleep(pause)  # the CRM's own retry back-off, not a race with the service
            pause = min(pause * 2, 2.0)


def add_faults(control: Any, config: ChaosConfig) -> None:
    """The fault mix, as marginal rates of Graph requests: rules are tried in order and the first
    whose dice match wins, so each later rule's probability is conditioned on the earlier misses."""
    seed = config.seed
    control.update_settings(transaction_id_mode="duplicate")  # a repeated create makes a twin
    control.add_fault(
        "lost_response", probability=config.p_lost_create, seed=seed, method="POST", path_contains="/events"
    )
    left = 1.0
    for kind, p, extra in (
        ("429", config.p429, {"retry_after": 1}),
        ("503", config.p503, {"retry_after": 1}),
        ("drop", config.p_drop, {}),
    ):
        control.add_fault(
            kind, probability=min(1.0, p / left), seed=seed + len(kind) + int(p * 1000), **extra
        )
        left -= p


def restart_host(stack: Any, *, kill: bool = True, **env: str) -> Service:
    """Kill (``kill -9``) or stop the dev host and start a new one on the same port and settings."""
    old = stack.host
    old.kill() if kill else old.stop()
    stack.__dict__.setdefault("previous_hosts", []).append(old)  # their logs, for a failing run
    stack.host = Service(old.name, old.args, {**old.env, **env}, old.log).start()
    return stack.host


def start_peer_host(stack: Any, **env: str) -> Service:
    """Another dev host with the first one's settings on its own port: the same storage, so it
    polls the same queues (every shard) and competes for their messages."""
    from local.azurite import free_port

    first = stack.host
    peer = Service(f"{first.name}-peer", ["-m", "local.host", "--port", str(free_port())], {**first.env, **env})
    return peer.start()


def poison_items(stack: Any) -> dict[str, list[bytes]]:
    """The ``-poison`` queue of every shard of every work queue, by the work queue's base name."""
    return {f"{base}-poison": stack.poisoned(base) for base in queues.QUEUE_NAMES}


@dataclass
class Verdict:
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    events: int = 0
    queue_depth: int = 0

    @property
    def converged(self) -> bool:
        return not (self.missing or self.extra or self.duplicated or self.wrong)


def verdict(stack: Any, plan: Plan, edits: dict[tuple[str, str], UserEdit] | None = None) -> Verdict:
    """Compare every mailbox with the state the CRM's inputs (and the users' ``edits``) call for."""
    edits = edits or {}
    result = Verdict()
    seen: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for who in plan.users:
        for event in ours(stack, who):
            parsed = parse_property_value(property_of(event))
            key = parsed if parsed else ("?", event["id"])
            seen.setdefault((key[0], key[1]), []).append(event)
            result.events += 1
    for key, expected in plan.expected.items():
        found = seen.pop(key, [])
        shown = edits[key].expected if key in edits else (Shown(*expected.event) if expected.event else None)
        if shown is None:
            if found:
                result.extra.append(key[1])
            continue
        if not found:
            result.missing.append(key[1])
            continue
        if len(found) > 1:
            result.duplicated.append(f"{key[1]} x{len(found)}")
        for event in found:
            problem = _differs(event, shown)
            if problem:
                result.wrong.append(f"{key[1]}: {problem}")
    result.extra.extend(f"{k[1]} (not planned)" for k in seen)
    result.queue_depth = stack.depth(queues.ACTIVITY_SYNC)
    return result


def _differs(event: dict[str, Any], shown: Shown) -> str | None:
    """What of ``shown`` this event does not show, or None."""
    if (event["subject"], *utc(event)) != (shown.subject, shown.start, shown.end):
        return f"{(event['subject'], *utc(event))} != {(shown.subject, shown.start, shown.end)}"
    location = (event.get("location") or {}).get("displayName")
    if shown.location is not None and location != shown.location:
        return f"location {location!r} != {shown.location!r}"
    body = (event.get("body") or {}).get("content") or ""
    if shown.note is not None and shown.note not in body:
        return f"body lacks {shown.note!r}"
    if shown.not_note is not None and shown.not_note in body:
        return f"body still holds {shown.not_note!r}"
    return None


def run_chaos(
    stack: Any,
    config: ChaosConfig,
    *,
    storage: Any,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Connect the users, run the plan under faults, wait for the service to settle and return the
    figures (``report["ok"]`` tells whether the final state is exactly the expected one).
    ``storage`` is the Azurite the stack uses (``restart``, ``stop``, ``start``)."""
    started = time.monotonic()
    rng = random.Random(config.seed)  # noqa: S311
    users = [
        connect_user(
            stack,
            f"chaos-t{n % config.tenants}-{uuid.uuid4().hex[:6]}" if n < config.tenants else None,
            time_zone=MAILBOX_ZONES[n % len(MAILBOX_ZONES)],
            crm_time_zone=rng.choice(CRM_ZONES),
        )
        for n in range(config.tenants)
    ]
    tenants = [u.tenant for u in users]
    users += [
        connect_user(stack, tenants[n % config.tenants], time_zone=MAILBOX_ZONES[n % len(MAILBOX_ZONES)])
        for n in range(config.tenants, config.users)
    ]
    connected_at = time.monotonic()
    today = datetime.now(UTC).date()
    plan = build_plan(users, config, today)
    edits = choose_edits(
        plan.expected, plan.deliveries, users, config.user_edit_share, random.Random(config.seed + 21), _when, today  # noqa: S311
    )
    log(f"plan: {len(plan.deliveries)} deliveries for {config.activities} activities, {len(users)} users, "
        f"{len(edits)} users' edits")

    before = poison_items(stack)
    marker = f"chaos-bad-{uuid.uuid4().hex[:8]}"
    for n in range(config.bad_queue_items):  # deliberately unreadable work: must end in the poison queue
        stack.storage.send(queues.ACTIVITY_SYNC, f"{marker}-{n} is not JSON".encode())
    add_faults(stack.control, config)
    stack.control.reset_counters()

    peers = [start_peer_host(stack, **HOST_ENV) for _ in range(config.hosts - 1)]
    log(f"{config.hosts} dev hosts on the same queues: {[stack.url, *(p.ready['url'] for p in peers)]}")
    stats = SendStats()
    crm = Crm(
        [stack.url, *(p.ready["url"] for p in peers)],
        stack.secrets["CRM_SHARED_SECRET"],
        stats,
        backlog=lambda: stack.depth(queues.ACTIVITY_SYNC),
        max_backlog=config.max_backlog,
    )
    try:
        return _run_plan(
            stack, config, plan, edits, users, tenants, crm, stats, marker, before, started, connected_at, storage, log
        )
    finally:
        for peer in peers:
            peer.stop()
            stack.__dict__.setdefault("previous_hosts", []).append(peer)  # their logs, for a failing run


def _run_plan(
    stack: Any,
    config: ChaosConfig,
    plan: Plan,
    edits: list[UserEdit],
    users: list[CrmUser],
    tenants: list[str],
    crm: Crm,
    stats: SendStats,
    marker: str,
    before: dict[str, list[bytes]],
    started: float,
    connected_at: float,
    storage: Any,
    log: Callable[[str], None],
) -> dict[str, Any]:
    thirds = [plan.deliveries[i::3] for i in range(3)]  # three interleaved slices, sent one after another
    chaos_log: list[str] = []
    people = UsersInOutlook(stack, edits, crm.answered, crm.deliver, connected_at, timeout=config.settle_timeout, log=log)
    people.start()

    def storage_down() -> None:
        storage.stop()
        time.sleep(config.storage_outage_seconds)  # the outage's length: the hosts and the CRM meet it
        storage.start()

    outage_rules: list[str] = []

    def graph_down() -> None:
        outage_rules.append(stack.control.outage(config.graph_outage_seconds)["id"])

    if config.storage_outage_seconds:
        storage_event, storage_name = storage_down, f"storage down {config.storage_outage_seconds:.0f} s"
    elif config.restart_azurite:
        storage_event, storage_name = storage.restart, "Azurite restarted"
    else:
        storage_event, storage_name = None, ""
    with ThreadPoolExecutor(config.senders, thread_name_prefix="crm") as pool:

        def send_all(bodies: list[dict[str, Any]], action: Callable[[], None] | None, name: str) -> None:
            futures: list[Future[None]] = [pool.submit(crm.deliver, b) for b in bodies]
            if action:
                for done in futures[: len(futures) // 3]:
                    done.result()  # a third is through; the rest is in flight or waiting
                at = time.monotonic()
                action()
                chaos_log.append(f"{name} at {at - connected_at:.1f} s, took {time.monotonic() - at:.1f} s")
                log(chaos_log[-1])
            for done in futures:
                done.result()

        send_all(
            thirds[0],
            graph_down if config.graph_outage_seconds else None,
            f"Graph down {config.graph_outage_seconds:.0f} s (from)",
        )
        send_all(thirds[1], storage_event, storage_name)
        send_all(
            thirds[2],
            (lambda: restart_host(stack, **HOST_ENV)) if config.kill_host else None,
            "dev host killed (-9) and restarted",
        )
    sent_at = time.monotonic()
    log(f"sent in {sent_at - connected_at:.1f} s: {dict(stats.answers)}, retries {dict(stats.retries)}")
    people_done = people.join(config.settle_timeout)
    for who in users:  # the CRM asks every mailbox for a reconcile once it has sent everything
        ask_reconcile(stack, who)
    asked_at = time.monotonic()
    log(f"users' edits done ({people_done}) and reconciles asked at {asked_at - connected_at:.1f} s")
    by_key = {(e.owner.tenant, e.activity_id): e for e in edits}

    state = {"last": Verdict(), "poison": {}}

    def settled() -> bool:
        state["last"] = verdict(stack, plan, by_key)
        poison = poison_items(stack)
        state["poison"] = {
            name: [item for item in items if item not in before.get(name, [])]
            for name, items in poison.items()
        }
        bad = [i for i in state["poison"][f"{queues.ACTIVITY_SYNC}-poison"] if marker.encode() in i]
        return (
            state["last"].converged and state["last"].queue_depth == 0 and len(bad) == config.bad_queue_items
        )

    deadline = time.monotonic() + config.settle_timeout
    while not settled() and time.monotonic() < deadline:
        time.sleep(1.0)  # polling the observable state; nothing here races the service
    settled_at = time.monotonic()
    # "Exactly once" and "nothing else" are read only once every host is idle and Graph has no
    # notification left to send; then the calendars are compared once more.
    idle = all_idle(crm.base_urls, stack.emulator, timeout=config.settle_timeout)
    settled()
    final: Verdict = state["last"]
    wrong_reports = _wrong_reports(stack, edits, set(tenants))
    poison: dict[str, list[bytes]] = state["poison"]
    unexpected_poison = {
        name: [_show(i) for i in items if marker.encode() not in i] for name, items in poison.items()
    }
    faults = Counter()
    outage_503 = 0
    for rule in stack.control.faults():
        if rule["id"] in outage_rules:
            outage_503 += rule["hits"]
            continue
        faults[rule["kind"]] += rule["hits"]
    stack.control.clear_faults()
    stack.control.update_settings(transaction_id_mode="dedupe")
    counters = stack.control.counters()
    by_endpoint: Counter = Counter()
    for mailbox in counters.get("mailboxes", {}).values():
        for endpoint, n in mailbox.get("requests", {}).items():
            by_endpoint[endpoint.split("?")[0]] += n
    failed_callbacks = [
        c for c in stack.callbacks.of_type("activity.sync_failed") if c["tenant_id"] in set(tenants)
    ]
    eligible = sum(1 for e in plan.expected.values() if e.event)
    report = {
        "ok": final.converged
        and idle
        and not wrong_reports
        and not any(e.problem for e in edits)
        and final.queue_depth == 0
        and not any(unexpected_poison.values())
        and not stats.unexpected
        and len([i for i in poison.get(f"{queues.ACTIVITY_SYNC}-poison", []) if marker.encode() in i])
        == config.bad_queue_items,
        "config": {k: v for k, v in asdict(config).items()},
        "activities": config.activities,
        "users": len(users),
        "tenants": config.tenants,
        "hosts": config.hosts,
        "scenarios": dict(plan.scenarios),
        "deliveries": len(plan.deliveries),
        "deliveries_by_type": dict(plan.kinds),
        "repeated_deliveries": plan.repeats,
        "shuffled_activities": plan.shuffled,
        "answers": dict(stats.answers),
        "crm_retries": dict(stats.retries),
        "crm_paced_seconds": round(stats.paced_seconds, 1),
        "unexpected_answers": stats.unexpected[:20],
        "chaos": chaos_log,
        "faults_injected": dict(faults),
        "graph_requests": sum(by_endpoint.values()),
        "graph_requests_by_endpoint": dict(by_endpoint.most_common(12)),
        "graph_throttled_429": sum(t.get("throttled", 0) for t in counters.get("totals", {}).values()),
        "expected_events": eligible,
        "expected_without_event": len(plan.expected) - eligible,
        "observed_events": final.events,
        "missing": final.missing[:50],
        "extra": final.extra[:50],
        "duplicated": final.duplicated[:50],
        "wrong": final.wrong[:50],
        "activity_sync_depth": final.queue_depth,
        "poison_deliberate": len(poison.get(f"{queues.ACTIVITY_SYNC}-poison", [])),
        "poison_unexpected": unexpected_poison,
        "sync_failed_callbacks": len(failed_callbacks),
        "idle_after_settling": idle,
        "user_edits": [
            {"activity": e.activity_id, "kind": e.kind, "crm_reacted": e.reaction is not None,
             "at": e.done_at, "crm_at": e.reacted_at, "problem": e.problem}
            for e in edits
        ],
        "outlook_reports": {
            "moves": sum(1 for e in edits if e.kind == MOVE), "deletions": sum(1 for e in edits if e.kind == DELETE),
            "wrong": wrong_reports[:50],
        },
        "graph_outage_503": outage_503,
        "seconds": {
            "connect": round(connected_at - started, 1),
            "send": round(sent_at - connected_at, 1),
            "users_and_reconcile": round(asked_at - sent_at, 1),
            "settle": round(settled_at - asked_at, 1),
            "total": round(settled_at - started, 1),
        },
    }
    if not report["ok"]:
        report["diagnosis"] = _diagnose(stack, plan, users, final, wrong_reports)
    return report


def _diagnose(
    stack: Any, plan: Plan, users: list[CrmUser], final: Verdict, wrong_reports: list[str]
) -> dict[str, Any]:
    """For each activity the verdict names (at most 12): its link row and our events for it, to
    follow with the emulator's trace (``GRAPH_EMULATOR_TRACE``) and the hosts' logs."""
    from shared.store import links

    named = [w.split(":")[0].split(" ")[0] for w in [*final.missing, *final.extra, *final.duplicated, *final.wrong, *wrong_reports]]
    owners = {(u.tenant, u.user): u for u in users}
    out: dict[str, Any] = {}
    for key, expected in plan.expected.items():
        if key[1] not in named or len(out) >= 12:
            continue
        who = owners[(expected.tenant, expected.user)]
        stored = links.get(stack.storage, expected.tenant, expected.user, key[1])
        events = [e for e in ours(stack, who) if (parse_property_value(property_of(e)) or ("", ""))[1] == key[1]]
        out[key[1]] = {
            "link": None if stored is None else {**asdict(stored.link), "extra": stored.extra},
            "events": [
                {k: e.get(k) for k in ("id", "subject", "changeKey", "createdDateTime", "lastModifiedDateTime")}
                for e in events
            ],
        }
    return out


def ask_reconcile(stack: Any, who: CrmUser, tries: int = 20) -> None:
    """The CRM's signed ``POST …/reconcile`` for one mailbox, retried on a 5xx like any delivery."""
    from tests.e2e.push.conftest import user_path

    pause = 0.2
    for _ in range(tries):
        try:
            answer = stack.crm.post(user_path(who.tenant, who.user, "reconcile"), {})
        except requests.RequestException:
            answer = None
        if answer is not None and answer.status_code < 500:
            assert answer.status_code == 202, answer.text
            return
        time.sleep(pause)  # the CRM's back-off
        pause = min(pause * 2, 2.0)
    raise AssertionError(f"the reconcile of {who.user} was never accepted")


def all_idle(host_urls: list[str], emulator: Any, timeout: float) -> bool:
    """``wait_until_idle`` for several hosts on the same queues: every host idle, Graph quiet, and
    no host began work between two readings."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            first = [host_idle(url) for url in host_urls]
            if all(f["idle"] for f in first) and graph_quiet(emulator):
                second = [host_idle(url) for url in host_urls]
                if all(s["idle"] for s in second) and [s["started"] for s in second] == [f["started"] for f in first]:
                    return True
        except requests.RequestException:
            pass  # a host busy restarting its poller: ask again
        time.sleep(0.05)
    return False


def _wrong_reports(stack: Any, edits: list[UserEdit], tenants: set[str]) -> list[str]:
    """Every activity whose Outlook-side reports are not exactly the users' own: one
    ``activity.changed_in_outlook`` per move, one ``activity.deleted_in_outlook`` per deletion."""
    counted = user_reports(stack, tenants)
    wanted: dict[str, dict[tuple[str, str], int]] = {CHANGED: {}, DELETED: {}}
    for e in edits:
        if e.done_at is not None and e.kind in (MOVE, DELETE):
            wanted[CHANGED if e.kind == MOVE else DELETED][(e.owner.tenant, e.activity_id)] = 1
    wrong = []
    for kind, counter in counted.items():
        for key in sorted(set(counter) | set(wanted[kind])):
            if counter.get(key, 0) != wanted[kind].get(key, 0):
                wrong.append(f"{key[1]}: {counter.get(key, 0)} {kind}, expected {wanted[kind].get(key, 0)}")
    return wrong


def _show(item: bytes) -> str:
    return item[:300].decode("utf-8", "replace")


def summary(report: dict[str, Any]) -> str:
    s = report["seconds"]
    return (
        f"chaos: {'OK' if report['ok'] else 'FAILED'} - {report['activities']} activities, "
        f"{report['hosts']} hosts, "
        f"{report['deliveries']} deliveries, {report['users']} users; faults {report['faults_injected']}, "
        f"CRM retries {sum(report['crm_retries'].values())}; expected {report['expected_events']} events, "
        f"observed {report['observed_events']} (missing {len(report['missing'])}, extra {len(report['extra'])}, "
        f"duplicated {len(report['duplicated'])}, wrong {len(report['wrong'])}); "
        f"users' edits {len(report['user_edits'])}, reports not the users' own {len(report['outlook_reports']['wrong'])}, "
        f"idle {report['idle_after_settling']}; "
        f"settled {s['settle']} s after the reconciles were asked ({s['total']} s in all)"
    )


@contextmanager
def standalone_stack(workdir: Any) -> Any:
    """Azurite, the emulator, a CRM receiver and the dev host, outside pytest (the benchmark);
    yields ``(stack, azurite)``. The same ``launch_stack`` as the tests' ``stack`` fixture."""
    import os

    from local.azurite import Azurite
    from local.dev_settings import new_secrets
    from local.emulator import start_emulator
    from tests.support.stack import launch_stack

    with Azurite(workdir) as azurite, start_emulator() as emulator:
        previous = os.environ.get("REQUESTS_CA_BUNDLE")
        os.environ["REQUESTS_CA_BUNDLE"] = emulator.ca_path
        stack = launch_stack(azurite, emulator, new_secrets(), **HOST_ENV)
        try:
            yield stack, azurite
        finally:
            stack.close()
            if previous is None:
                os.environ.pop("REQUESTS_CA_BUNDLE", None)
            else:
                os.environ["REQUESTS_CA_BUNDLE"] = previous
