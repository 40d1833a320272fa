"""The timers' fan-out and the tenant shards, decided (shared/rules/fanout.py, shared/rules/queues.py,
the paged sweep plan in shared/rules/reconcile_plan.py)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

from shared.rules import queues
from shared.rules.fanout import EXPIRY_JITTER, batches, jittered_expiry, spread_delay
from shared.rules.reconcile_plan import SWEEP_PERIOD, SweepUser, plan_sweep
from shared.rules.settings import work_queue_shards


def test_a_tenant_always_lands_in_the_same_shard_and_tenants_spread_over_all_shards() -> None:
    tenants = [f"tenant-{n}" for n in range(200)]
    first = [queues.shard_of(t, 8) for t in tenants]
    assert first == [queues.shard_of(t, 8) for t in tenants]  # stable: not Python's salted hash()
    # The same in every process and release (SHA-256 of the id), so a redeploy never reroutes a tenant.
    assert [queues.shard_of(t, 8) for t in ("acme", "globex", "initech")] == [0, 7, 3]
    per_shard = Counter(first)
    assert set(per_shard) == set(range(8)) and max(per_shard.values()) < 2 * 200 / 8
    assert {queues.shard_of(t, 1) for t in tenants} == {0}


def test_shard_zero_keeps_the_unsharded_name_and_every_queue_is_listed_once() -> None:
    assert queues.tenant_queue(queues.ACTIVITY_SYNC, "acme", 1) == "activity-sync"
    assert queues.shard_queue(queues.ACTIVITY_SYNC, 0) == "activity-sync"
    assert queues.shard_queue(queues.ACTIVITY_SYNC, 3) == "activity-sync-3"
    every = queues.all_queues(4)
    assert len(every) == len(set(every)) == 4 * len(queues.QUEUE_NAMES)
    assert not any(name.endswith("-poison") for name in every)


def test_the_shard_count_is_a_validated_setting_with_a_default() -> None:
    assert work_queue_shards({}) == 8
    assert work_queue_shards({"WORK_QUEUE_SHARDS": "3"}) == 3
    for bad in ("0", "65", "many"):
        try:
            work_queue_shards({"WORK_QUEUE_SHARDS": bad})
        except Exception as error:  # noqa: BLE001 - SettingsError naming the setting
            assert "WORK_QUEUE_SHARDS" in str(error)
        else:
            raise AssertionError(f"{bad!r} was accepted")


def test_batches_never_mix_tenants_and_hold_at_most_the_batch_size() -> None:
    items = [("a", n) for n in range(45)] + [("b", n) for n in range(3)] + [("a", 99)]
    got = list(batches(items, 20))
    assert [(t, len(b)) for t, b in got] == [("a", 20), ("a", 20), ("a", 5), ("b", 3), ("a", 1)]
    assert [n for _, b in got for n in b] == [n for _, n in items]  # nothing lost, order kept
    assert list(batches([], 20)) == []


def test_a_burst_of_messages_is_spread_over_the_window() -> None:
    rng = random.Random(7)
    delays = [spread_delay(300, rng.random()) for _ in range(1000)]
    assert min(delays) >= 0 and max(delays) < 300
    per_minute = Counter(d // 60 for d in delays)
    assert len(per_minute) == 5 and min(per_minute.values()) > 150  # even, not clustered
    assert spread_delay(0, 0.9) == 0


def test_subscriptions_made_together_expire_spread_over_a_day_and_never_past_their_lifetime() -> None:
    now = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)
    lifetime = timedelta(minutes=10065)
    rng = random.Random(3)
    expiries = [jittered_expiry(now, lifetime, rng.random()) for _ in range(500)]
    assert all(now + lifetime - EXPIRY_JITTER <= e <= now + lifetime for e in expiries)
    hours = Counter(int((now + lifetime - e).total_seconds() // 3600) for e in expiries)
    assert len(hours) == 24  # due in 24 different hourly renewal runs, not one


def test_the_paged_sweep_keeps_spreading_overdue_users_across_pages() -> None:
    now = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)
    first = [SweepUser("t", f"a{i}", None) for i in range(1000)]
    second = [SweepUser("t", f"b{i}", None) for i in range(1000)]
    one = plan_sweep(first, now)
    two = plan_sweep(second, now, overdue_before=len(first))
    delays = [d for _, d in one + two]
    assert len(set(delays)) > 150  # continued, not restarted at 0 on the second page
    assert min(d for _, d in two) >= max(d for _, d in one)
    assert max(delays) < SWEEP_PERIOD.total_seconds()
    many = plan_sweep([SweepUser("t", "x", None)], now, overdue_before=100_000)
    assert 0 <= many[0][1] < SWEEP_PERIOD.total_seconds()  # past the hour's capacity: wraps round it
