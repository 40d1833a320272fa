"""Timers: housekeeping that keeps connections healthy over weeks of running."""

from __future__ import annotations

import logging

import azure.functions as func

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.timer_trigger(arg_name="timer", schedule="0 17 3 * * *")
def token_health(timer: func.TimerRequest) -> None:
    """Daily: refresh grants idle for 30 days, before the 90-day inactivity expiry."""
    from shared import services
    from shared.flows import token_health

    log.info("Token health: %s", token_health.refresh_idle_grants(services.get()))


@bp.timer_trigger(arg_name="timer", schedule="0 7 * * * *")
def renew_subscriptions(timer: func.TimerRequest) -> None:
    """Hourly: renew Graph subscriptions expiring within 2 days; create missing or dropped ones."""
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
