"""Queue trigger on ``mailbox-removal``: "Remove sync" removing a user's events, a few ``$batch``es
of 20 DELETEs per message (the rules: ``shared.flows.removal``, which queues its own continuation
and retries; an exception here means a message that cannot be read or a bug)."""

from __future__ import annotations

import logging

import azure.functions as func

from shared.rules.queues import MAILBOX_REMOVAL

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.queue_trigger(arg_name="msg", queue_name=MAILBOX_REMOVAL, connection="AzureWebJobsStorage")
def remove_events(msg: func.QueueMessage) -> None:
    from shared import services
    from shared.flows import removal

    outcome = removal.process(services.get(), msg.get_body())
    log.info("mailbox-removal message %s: %s", msg.id, outcome)
