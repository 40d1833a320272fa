"""One queue trigger per tenant shard of a work queue (shared/rules/queues.py).

``WORK_QUEUE_SHARDS`` is read here, at import, from the environment alone (no SDK, no other
setting), so registering N triggers costs nothing at cold start. Shard 0 keeps the function's own
name and the unsharded queue; shard k is ``<name>_k`` on ``<queue>-k``. Each is its own function,
so on Flex Consumption each scales on its own instances, and the dev host polls each queue."""

from __future__ import annotations

from collections.abc import Callable

import azure.functions as func

from shared.rules import queues
from shared.rules.settings import work_queue_shards

CONNECTION = "AzureWebJobsStorage"


def queue_triggers(
    bp: func.Blueprint, base: str, name: str, handle: Callable[[func.QueueMessage], None]
) -> None:
    """Register ``handle`` on every shard of the work queue ``base``."""
    for shard in range(work_queue_shards()):
        function_name = name if shard == 0 else f"{name}_{shard}"

        def trigger(msg: func.QueueMessage) -> None:
            handle(msg)

        trigger.__name__ = trigger.__qualname__ = function_name
        bp.function_name(function_name)(
            bp.queue_trigger(
                arg_name="msg", queue_name=queues.shard_queue(base, shard), connection=CONNECTION
            )(trigger)
        )
