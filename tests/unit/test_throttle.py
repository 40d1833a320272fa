"""The mailbox gate and the retry policy of the activity-sync worker (pure decisions)."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

from shared.outlook import throttle
from shared.outlook.throttle import backoff_seconds, closed_until, gate_wait, next_step

NOW = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)


def test_an_open_gate_lets_calls_through_and_a_closed_one_says_how_long_to_wait() -> None:
    assert gate_wait(None, NOW) == 0
    assert gate_wait(NOW - timedelta(seconds=1), NOW) == 0
    assert gate_wait(NOW + timedelta(seconds=7.5), NOW) == 7.5


def test_closing_the_gate_never_shortens_an_earlier_closing() -> None:
    later = NOW + timedelta(seconds=30)
    assert closed_until(None, NOW, 10) == NOW + timedelta(seconds=10)
    assert closed_until(later, NOW, 10) == later
    assert closed_until(later, NOW, 60) == NOW + timedelta(seconds=60)
    assert closed_until(None, NOW, -5) == NOW  # a nonsense Retry-After never means "the past"
    assert closed_until(None, NOW, 10**9) == NOW + timedelta(seconds=throttle.MAX_DELAY)


def test_throttled_messages_wait_what_graph_asked_and_do_not_use_up_transient_attempts() -> None:
    rng = random.Random(1)
    step = next_step("throttled", attempt=2, throttled=0, retry_after=10, rng=rng)
    assert step.retry and 10 <= step.delay <= 11
    assert (step.attempt, step.throttled) == (2, 1)
    assert next_step("throttled", 0, 0, retry_after=2.128, rng=rng).delay in (3, 4)  # fractional values too
    assert next_step("throttled", 0, 0, retry_after=0, rng=rng).delay >= 1


def test_transient_failures_back_off_exponentially_then_give_up() -> None:
    rng = random.Random(7)
    delays = []
    attempt = 0
    while True:
        step = next_step("transient", attempt, 0, rng=rng)
        if not step.retry:
            break
        delays.append(step.delay)
        attempt = step.attempt
    assert attempt == throttle.MAX_ATTEMPTS - 1
    assert len(delays) == throttle.MAX_ATTEMPTS - 1
    assert delays == sorted(delays) and delays[0] in (1, 2) and delays[-1] >= 40


def test_backoff_is_capped_and_jittered() -> None:
    rng = random.Random(3)
    assert all(0.8 <= backoff_seconds(1, rng) <= 1.2 for _ in range(50))
    assert all(backoff_seconds(30, rng) <= throttle.BACKOFF_CAP for _ in range(50))


def test_endless_throttling_is_given_up_eventually() -> None:
    assert not next_step("throttled", 0, throttle.MAX_THROTTLED, retry_after=1).retry


def test_at_most_four_requests_in_flight_per_mailbox_per_process() -> None:
    import threading

    inside, peak, lock = 0, 0, threading.Lock()
    release = threading.Event()
    entered = threading.Semaphore(0)

    def work() -> None:
        nonlocal inside, peak
        with throttle.InFlight.slot("tenant|user-x", timeout=5):
            with lock:
                inside += 1
                peak = max(peak, inside)
            entered.release()
            release.wait(5)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=work) for _ in range(7)]
    for t in threads:
        t.start()
    for _ in range(4):
        assert entered.acquire(timeout=5)
    assert not entered.acquire(timeout=0.2)  # the fifth waits for a slot
    release.set()
    for t in threads:
        t.join(5)
    assert peak == 4


def test_waiting_for_another_run_always_comes_back_and_spends_no_budget() -> None:
    rng = random.Random(7)
    for retry_after in (0, 1.0, 4.2):
        step = next_step("wait", 3, throttle.MAX_THROTTLED, retry_after=retry_after, rng=rng)
        assert step.retry and (step.attempt, step.throttled) == (3, throttle.MAX_THROTTLED)
        assert max(1, math.ceil(retry_after)) <= step.delay <= math.ceil(retry_after) + 1
