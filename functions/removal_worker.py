"""Queue triggers on ``mailbox-removal`` (one per tenant shard): "Remove sync" removing a user's events, a few ``$batch``es
of 20 DELETEs per message (the rules: ``shared.flows.removal``, which queues its own continuation
and retries; an exception here means a message that cannot be read or a bug)."""

from __future__ import annotations

import logging

import azure.functions as func

from functions.shards import queue_triggers
from shared.rules.queues import MAILBOX_REMOVAL

bp = func.Blueprint()
log = logging.getLogger(__name__)


def remove_events(msg: func.QueueMessage) -> None:
    from shared import services
    from shared.flows import removal

    outcome = removal.process(services.get(), msg.get_body())
    log.info("mailbox-removal message %s: %s", msg.id, outcome)


queue_triggers(bp, MAILBOX_REMOVAL, "remove_events", remove_events)  # one per tenant shard
