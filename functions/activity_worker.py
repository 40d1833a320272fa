"""Queue triggers on ``activity-sync`` (one per tenant shard, functions/shards.py): apply one CRM change to one user's Outlook calendar.

All the rules live in ``shared.flows.push``; it re-queues work that must wait (throttling, transient
failures) itself, so an exception here means a message that cannot be read or a bug, and only
those reach the poison queue."""

from __future__ import annotations

import logging

import azure.functions as func

from functions.shards import queue_triggers
from shared.rules.queues import ACTIVITY_SYNC

bp = func.Blueprint()
log = logging.getLogger(__name__)


def sync_activity(msg: func.QueueMessage) -> None:
    from shared import services
    from shared.flows import push

    # Handed out again: whoever held it died mid-way (push.process sweeps what it may have left).
    redelivered = (msg.dequeue_count or 1) > 1
    outcome = push.process(services.get(), msg.get_body(), redelivered=redelivered)
    log.info("activity-sync message %s: %s", msg.id, outcome)


queue_triggers(bp, ACTIVITY_SYNC, "sync_activity", sync_activity)  # one per tenant shard
