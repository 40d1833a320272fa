"""Queue trigger on ``activity-sync``: apply one CRM change to one user's Outlook calendar.

All the rules live in ``shared.push``; it re-queues work that must wait (throttling, transient
failures) itself, so an exception here means a message that cannot be read or a bug, and only
those reach the poison queue."""

from __future__ import annotations

import logging

import azure.functions as func

from shared.queues import ACTIVITY_SYNC

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.queue_trigger(arg_name="msg", queue_name=ACTIVITY_SYNC, connection="AzureWebJobsStorage")
def sync_activity(msg: func.QueueMessage) -> None:
    from shared import push, services

    outcome = push.process(services.get(), msg.get_body())
    log.info("activity-sync message %s: %s", msg.id, outcome)
