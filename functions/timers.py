"""Timers: housekeeping that keeps connections healthy over weeks of running.

Each timer runs as a single invocation (Flex Consumption does not scale a timer out), so it only reads
connections page by page and fans per-user work out to ``mailbox-maintenance`` (one trigger per tenant
shard, below), where it scales out and retries like every other message: no Graph or token call runs
inside a timer invocation. Clean-up stays here: it is storage-only and paged."""

from __future__ import annotations

import logging

import azure.functions as func

from functions.shards import queue_triggers
from shared.rules.queues import MAILBOX_MAINTENANCE

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.timer_trigger(arg_name="timer", schedule="0 17 3 * * *")
def token_health(timer: func.TimerRequest) -> None:
    """Daily: fan out the grants idle for 30 days to be refreshed, before the 90-day inactivity expiry."""
    from shared import services
    from shared.flows import token_health

    log.info("Token health: %s", token_health.refresh_idle_grants(services.get()))


@bp.timer_trigger(arg_name="timer", schedule="0 7 * * * *")
def renew_subscriptions(timer: func.TimerRequest) -> None:
    """Hourly: fan out the Graph subscriptions expiring within 2 days (or missing) to be renewed."""
    from datetime import UTC, datetime

    from shared import services
    from shared.flows import subscriptions

    log.info("Subscription renewal: %s", subscriptions.renew_due(services.get(), datetime.now(UTC)))


@bp.timer_trigger(arg_name="timer", schedule="0 23 * * * *")
def reconcile_sweep(timer: func.TimerRequest) -> None:
    """Hourly: schedule every connected user's reconcile so none waits over 6 hours (spread out)."""
    from datetime import UTC, datetime

    from shared import services
    from shared.flows import reconcile

    log.info("Reconcile sweep: %s", reconcile.sweep(services.get(), datetime.now(UTC)))


@bp.timer_trigger(arg_name="timer", schedule="0 41 2 * * *")
def clean_up(timer: func.TimerRequest) -> None:
    """Daily: expired sign-in flows, old duplicate-detection rows, dead subscription rows."""
    from datetime import UTC, datetime

    from shared import services
    from shared.flows import housekeeping

    log.info("Clean-up: %s", housekeeping.clean_up(services.get(), datetime.now(UTC)))


def maintain_mailboxes(msg: func.QueueMessage) -> None:
    """The timers' fan-out: renew, refresh or schedule a few users of one tenant (shared/flows/maintenance.py)."""
    from shared import services
    from shared.flows import maintenance

    outcome = maintenance.process(services.get(), msg.get_body())
    log.info("mailbox-maintenance message %s: %s", msg.id, outcome)


queue_triggers(bp, MAILBOX_MAINTENANCE, "maintain_mailboxes", maintain_mailboxes)  # one per tenant shard
