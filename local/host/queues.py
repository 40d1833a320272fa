"""Queue triggers and queue output bindings, as the Functions host runs them against Storage.

A poller per queue-triggered function receives up to ``batchSize`` base64 messages, holds each
invisible while its invocation runs, and then:
- success: deletes the message;
- failure: makes it visible again after ``visibilityTimeout``, or, once it has been dequeued
  ``maxDequeueCount`` times, moves it to ``<queue>-poison`` and deletes it.
An empty queue is polled again after a growing pause, up to ``maxPollingInterval``.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Any

from azure.functions.queue import QueueMessage

from local.host.functions import BUSY, FunctionSpec, invoke
from shared.rules.settings import storage_settings
from shared.store.storage import Storage

log = logging.getLogger("host")
# The host keeps a running message invisible for 10 minutes (renewed if longer); a message held by
# a host that died comes back after that. Chaos tests shorten it (LOCAL_HOST_QUEUE_HOLD_SECONDS).
HOLD_SECONDS = int(os.environ.get("LOCAL_HOST_QUEUE_HOLD_SECONDS") or 600)


@dataclass(frozen=True)
class QueueOptions:
    batch_size: int = 16
    max_dequeue_count: int = 5
    visibility_timeout: float = 0.0
    max_polling_interval: float = 2.0


@cache
def storage_for(connection: str) -> Storage:
    """The account a binding's ``connection`` setting names (``AzureWebJobsStorage`` by default)."""
    return Storage(storage_settings(os.environ, connection or "AzureWebJobsStorage"))


def send_outputs(outputs: dict[str, tuple[dict[str, Any], Any]]) -> None:
    """Send queue output binding values: a str or bytes is one message, a list is many."""
    for binding, value in outputs.values():
        if binding["type"] != "queue":
            continue
        queue = storage_for(binding.get("connection", "")).queue(binding["queueName"])
        for item in value if isinstance(value, list) else [value]:
            queue.send_message(item.encode() if isinstance(item, str) else bytes(item))


class QueuePoller(threading.Thread):
    def __init__(self, spec: FunctionSpec, options: QueueOptions, stopping: threading.Event) -> None:
        super().__init__(name=f"queue:{spec.name}", daemon=True)
        self.spec = spec
        self.options = options
        self.stopping = stopping
        self.queue_name = spec.trigger["queueName"]
        self.storage = storage_for(spec.trigger.get("connection", ""))
        self.workers = ThreadPoolExecutor(options.batch_size, thread_name_prefix=spec.name)

    def run(self) -> None:
        pause = 0.1
        while not self.stopping.is_set():
            try:
                found = self.poll_once()
            except Exception as error:  # noqa: BLE001 - storage hiccups must not kill the poller
                log.warning("Polling %s failed: %s: %s", self.queue_name, type(error).__name__, error)
                found = 0
            pause = 0.0 if found else min(max(pause * 2, 0.1), self.options.max_polling_interval)
            if pause:
                self.stopping.wait(pause)
        self.workers.shutdown(wait=True)

    def poll_once(self) -> int:
        queue = self.storage.queue(self.queue_name)
        messages = list(
            queue.receive_messages(max_messages=self.options.batch_size, visibility_timeout=HOLD_SECONDS)
        )
        if not messages:
            return 0
        # Received messages stay in the queue (invisible) until deleted, so the idle report counts
        # them; the batch is counted as running from here until every message is settled.
        with BUSY.working():
            for done in [self.workers.submit(self.process, message) for message in messages]:
                done.result()
        return len(messages)

    def pending(self) -> int:
        """Messages in this queue: visible, held by an invocation, or delayed (a visibility timeout
        not yet over, e.g. a retry after ``Retry-After``). Storage counts all of them."""
        return self.storage.queue(self.queue_name).get_queue_properties().approximate_message_count

    def process(self, message: Any) -> None:
        queue = self.storage.queue(self.queue_name)
        if message.dequeue_count > self.options.max_dequeue_count:
            self.poison(message)
            return
        body = message.content
        trigger = QueueMessage(
            id=message.id,
            body=body,
            dequeue_count=message.dequeue_count,
            expiration_time=message.expires_on,
            insertion_time=message.inserted_on,
            time_next_visible=message.next_visible_on,
            pop_receipt=message.pop_receipt,
        )
        try:
            _, outputs = invoke(self.spec, trigger)
            send_outputs(outputs)
        except Exception:  # noqa: BLE001 - logged by invoke; the message decides its own fate below
            if message.dequeue_count >= self.options.max_dequeue_count:
                self.poison(message)
            else:
                queue.update_message(
                    message,
                    pop_receipt=message.pop_receipt,
                    visibility_timeout=int(self.options.visibility_timeout),
                )
            return
        queue.delete_message(message, pop_receipt=message.pop_receipt)

    def poison(self, message: Any) -> None:
        name = f"{self.queue_name}-poison"
        log.warning("Message %s moved to %s after %d tries", message.id, name, message.dequeue_count)
        self.storage.queue(name).send_message(message.content)
        self.storage.queue(self.queue_name).delete_message(message, pop_receipt=message.pop_receipt)
