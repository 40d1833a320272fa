"""Queue trigger on ``activity-sync``: apply one CRM change to one user's Outlook calendar.

All the rules live in ``shared.flows.push``; it re-queues work that must wait (throttling, transient
failures) itself, so an exception here means a message that cannot be read or a bug, and only
those reach the poison queue."""

from __future__ import annotations

import logging

import azure.functions as func

from shared.rules.queues import ACTIVITY_SYNC

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.queue_trigger(arg_name="msg", queue_name=ACTIVITY_SYNC, connection="AzureWebJobsStorage")
def sync_activity(msg: func.QueueMessage) -> None:
    from shared import services
    from shared.flows import push

    outcome = push.process(services.get(), msg.get_body())
    log.info("activity-sync message %s: %s", msg.id, outcome)
