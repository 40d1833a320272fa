"""Issue 15: the timers fan out, the queue workers do the Graph and token work.

300 connected users whose subscriptions expire within the renewal margin (seeded as copies of one
real sign-in, tests/support/seed.py). The renewal timer, run through the admin endpoint while the
maintenance workers are switched off, makes no Graph request and refreshes no token, finishes in
under 2 s and leaves per-tenant batches on the tenant shards of ``mailbox-maintenance``; then the
workers renew every due subscription. One user's renewal fails three times (Graph 500) and is
retried through the queue until it succeeds; one user's grant is gone and ends in
``reauth_required``: the only one that does."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import requests

from shared.rules import queues
from shared.rules.settings import DEFAULT_FANOUT_BATCH_SIZE
from shared.store import connections, paging, tables
from tests.conftest import Stack, wait_until
from tests.support.chaos import restart_host
from tests.support.seed import seed_users

pytestmark = pytest.mark.e2e
TENANTS, PER_TENANT = 6, 50  # 300 users due


def maintenance_switch(stack: Stack, disabled: bool) -> dict[str, str]:
    names = ["maintain_mailboxes" if s == 0 else f"maintain_mailboxes_{s}" for s in range(stack.shards)]
    return {f"AzureWebJobs.{name}.Disabled": "true" if disabled else "false" for name in names}


def graph_requests(stack: Stack) -> int:
    counted = stack.control.counters()["mailboxes"]
    return sum(n for per in counted.values() for n in per.get("requests", {}).values())


def invocation_ms(stack: Stack, function: str) -> float:
    found = [
        re.search(rf"Executed '{function}' \(Succeeded, id=[^,]+, (\d+) ms\)", line)
        for line in stack.host.output
    ]
    times = [float(m.group(1)) for m in found if m]
    assert times, f"no successful run of {function} in the host's log"
    return times[-1]


@pytest.mark.timeout(400)
def test_the_renewal_timer_fans_out_and_the_workers_renew_every_due_subscription(stack: Stack) -> None:
    restart_host(stack, kill=False, FANOUT_SPREAD_SECONDS="3", **maintenance_switch(stack, disabled=True))
    try:
        _, seeded = seed_users(stack, TENANTS, PER_TENANT, expires_in=timedelta(hours=30))
        flaky, broken = seeded[7], seeded[60]
        rule = stack.control.add_fault("500", count=3, method="PATCH", path_contains=flaky.subscription_id)
        stack.control.expire_refresh_tokens(broken.oid)
        stack.wait_until_idle()  # the template's own sign-in work is done
        stack.control.reset_counters()
        started = datetime.now(UTC)

        answer = requests.post(f"{stack.url}/admin/functions/renew_subscriptions", json={}, timeout=10)
        assert answer.status_code == 202
        wait_until(
            lambda: any("Executed 'renew_subscriptions'" in line for line in stack.host.output),
            what="the timer's run",
        )
        stack.wait_until_idle()  # the maintenance queues are not polled: nothing else can run
        assert invocation_ms(stack, "renew_subscriptions") < 2000
        assert graph_requests(stack) == 0
        refreshed = paging.pages(
            stack.storage.table(tables.TOKENS), "refreshed_at ge @t", {"t": started}, ["PartitionKey"]
        )
        assert [r for page in refreshed for r in page.rows] == []  # no token refreshed by the timer
        per_tenant = -(-PER_TENANT // DEFAULT_FANOUT_BATCH_SIZE)  # batches of users of one tenant
        assert stack.depth(queues.MAILBOX_MAINTENANCE) == TENANTS * per_tenant
        used = {stack.queue_name(queues.MAILBOX_MAINTENANCE, s.tenant) for s in seeded}
        assert len(used) > 1  # the tenants' work sits in their own shards

        restart_host(
            stack, kill=False, FANOUT_SPREAD_SECONDS="3", **maintenance_switch(stack, disabled=False)
        )
        renewed_after = datetime.now(UTC) + timedelta(days=5)  # a full lifetime, less at most a day of jitter

        def renewed() -> list[str]:
            with stack.emulator.store.lock:
                subs = {s.id: s.expires_at for s in stack.emulator.store.subscriptions.values()}
            return [s.user for s in seeded if s is not broken and subs[s.subscription_id] > renewed_after]

        wait_until(
            lambda: len(renewed()) == len(seeded) - 1, timeout=300, what="every due subscription renewed"
        )
        stack.wait_until_idle()
    finally:
        stack.host.stop()

    assert next(f for f in stack.control.faults() if f["id"] == rule["id"])["hits"] == 3
    assert connections.get(stack.storage, broken.tenant, broken.user).state == connections.REAUTH_REQUIRED
    flaky_now = connections.get(stack.storage, flaky.tenant, flaky.user)
    assert flaky_now.state == connections.CONNECTED
    assert flaky_now.subscription_expires_at
    assert datetime.fromisoformat(flaky_now.subscription_expires_at[:19] + "+00:00") > renewed_after
    reauth = [
        s
        for s in seeded
        if connections.get(stack.storage, s.tenant, s.user).state == connections.REAUTH_REQUIRED
    ]
    assert reauth == [broken]
    assert [c["user_id"] for c in stack.callbacks.of_type("connection.reauth_required")] == [broken.user]
