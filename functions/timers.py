"""Timers: housekeeping that keeps connections healthy over weeks of running."""

from __future__ import annotations

import logging

import azure.functions as func

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.timer_trigger(arg_name="timer", schedule="0 17 3 * * *")
def token_health(timer: func.TimerRequest) -> None:
    """Daily: refresh grants idle for 30 days, before the 90-day inactivity expiry."""
    from shared import services, token_health

    log.info("Token health: %s", token_health.refresh_idle_grants(services.get()))
