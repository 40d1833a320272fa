"""Queue triggers on ``crm-callbacks`` (one per tenant shard: one tenant's burst of callbacks does not
delay another's): deliver each callback to the CRM, signed, at least once."""

from __future__ import annotations

import logging

import azure.functions as func

from functions.shards import queue_triggers
from shared.rules.queues import CRM_CALLBACKS

bp = func.Blueprint()
log = logging.getLogger(__name__)


def deliver_crm_callback(msg: func.QueueMessage) -> None:
    from shared import services
    from shared.flows import callbacks
    from shared.rules.errors import PermanentError

    deps = services.get()
    try:
        callbacks.deliver(
            deps.http, deps.settings.crm_callback_url, deps.settings.crm_callback_secrets[0], msg.get_body()
        )
    except PermanentError as error:
        log.error("Callback dropped: %s", error.message)  # the CRM refuses it; retrying cannot help


queue_triggers(bp, CRM_CALLBACKS, "deliver_crm_callback", deliver_crm_callback)  # one per tenant shard
