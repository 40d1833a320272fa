"""Queue triggers and queue output bindings, as the Functions host runs them against Storage.

A poller per queue-triggered function receives up to ``batchSize`` base64 messages, holds each
invisible while its invocation runs, and then:
- success: deletes the message;
- failure: makes it visible again after ``visibilityTimeout``, or, once it has been dequeued
  ``maxDequeueCount`` times, moves it to ``<queue>-poison`` and deletes it.
An empty queue is polled again after a growing pause, up to ``maxPollingInterval``. With
``newBatchThreshold`` set, the next batch is received as soon as no more than that many messages
are still running, as the host does; unset, the poller waits for its whole batch (the dev host's
simpler default, which the suite was built on).

With ``PYTHON_THREADPOOL_THREAD_COUNT`` set, the whole host runs at most that many queue invocations
at once, as the Python worker's thread pool of that size does, and the triggers with messages
waiting take turns (``TakingTurns``): on Flex Consumption each trigger scales on instances of its
own, so one shard's backlog must not hold back another shard's single message here either. Unset,
each trigger runs its whole batch at once (the suite's default).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
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
    new_batch_threshold: int | None = None  # None: the next batch after the whole batch is done


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


class TakingTurns:
    """A host-wide pool of ``size`` threads for queue invocations. Each trigger hands in its batch;
    a free thread takes the next invocation of the trigger whose turn it is (round robin over the
    triggers with invocations waiting), so a trigger with one message waits for one invocation to
    end, not for another trigger's whole backlog."""

    def __init__(self, size: int) -> None:
        self._waiting: dict[str, deque[tuple[Callable[[], None], Future[None]]]] = {}  # in turn order
        self._ready = threading.Condition()
        for n in range(size):
            threading.Thread(target=self._work, name=f"invocation-{n}", daemon=True).start()

    def submit(self, trigger: str, call: Callable[[], None]) -> Future[None]:
        done: Future[None] = Future()
        with self._ready:
            self._waiting.setdefault(trigger, deque()).append((call, done))
            self._ready.notify()
        return done

    def _next(self) -> tuple[Callable[[], None], Future[None]]:
        with self._ready:
            while not self._waiting:
                self._ready.wait()
            trigger = next(iter(self._waiting))
            calls = self._waiting.pop(trigger)
            taken = calls.popleft()
            if calls:
                self._waiting[trigger] = calls  # to the back of the line
            return taken

    def _work(self) -> None:
        while True:
            call, done = self._next()
            try:
                call()
            except BaseException as error:  # noqa: BLE001 - handed to the trigger that waits on it
                done.set_exception(error)
            else:
                done.set_result(None)


def taking_turns(environ: Any) -> TakingTurns | None:
    """The shared pool ``PYTHON_THREADPOOL_THREAD_COUNT`` asks for, or None when it is unset."""
    size = str(environ.get("PYTHON_THREADPOOL_THREAD_COUNT") or "").strip()
    if not size:
        return None
    if not size.isdigit() or not 1 <= int(size) <= 32:
        raise ValueError("PYTHON_THREADPOOL_THREAD_COUNT must be a whole number from 1 to 32")
    return TakingTurns(int(size))


class QueuePoller(threading.Thread):
    def __init__(
        self,
        spec: FunctionSpec,
        options: QueueOptions,
        stopping: threading.Event,
        turns: TakingTurns | None = None,
    ) -> None:
        super().__init__(name=f"queue:{spec.name}", daemon=True)
        self.spec = spec
        self.options = options
        self.stopping = stopping
        self.queue_name = spec.trigger["queueName"]
        self.storage = storage_for(spec.trigger.get("connection", ""))
        self.turns = turns
        # Without the shared pool, the trigger's own threads: as many as it may hold at once.
        self.workers = None if turns else ThreadPoolExecutor(
            options.batch_size + (options.new_batch_threshold or 0), thread_name_prefix=spec.name
        )
        self.running = 0  # messages received and not yet settled
        self.settled = threading.Condition()

    def run(self) -> None:
        pause = 0.1
        while not self.stopping.is_set():
            self._wait_for_room()
            try:
                found = self.poll_once()
            except Exception as error:  # noqa: BLE001 - storage hiccups must not kill the poller
                log.warning("Polling %s failed: %s: %s", self.queue_name, type(error).__name__, error)
                found = 0
            pause = 0.0 if found else min(max(pause * 2, 0.1), self.options.max_polling_interval)
            if pause:
                self.stopping.wait(pause)
        with self.settled:
            self.settled.wait_for(lambda: self.running == 0, timeout=30)
        if self.workers is not None:
            self.workers.shutdown(wait=True)

    def _wait_for_room(self) -> None:
        """With ``newBatchThreshold``: receive again once no more than that many are running."""
        threshold = self.options.new_batch_threshold
        if threshold is not None:
            with self.settled:
                while self.running > threshold and not self.stopping.is_set():
                    self.settled.wait(0.5)

    def poll_once(self) -> int:
        queue = self.storage.queue(self.queue_name)
        messages = list(
            queue.receive_messages(max_messages=self.options.batch_size, visibility_timeout=HOLD_SECONDS)
        )
        if not messages:
            return 0
        # Received messages stay in the queue (invisible) until deleted, so the idle report counts
        # them; each is counted as running from here until it is settled.
        started = [self._submit(message) for message in messages]
        if self.options.new_batch_threshold is None:
            for done in started:
                done.result()
        return len(messages)

    def _submit(self, message: Any) -> Future[None]:
        BUSY.begin()
        with self.settled:
            self.running += 1
        if self.workers is not None:
            return self.workers.submit(self._settle, message)
        assert self.turns is not None
        return self.turns.submit(self.spec.name, lambda: self._settle(message))

    def _settle(self, message: Any) -> None:
        try:
            self.process(message)
        except Exception as error:  # noqa: BLE001 - a storage hiccup settling it; the message comes back
            if self.options.new_batch_threshold is None:
                raise  # the poller waiting on its batch logs it
            log.warning("Settling a message of %s failed: %s: %s", self.queue_name, type(error).__name__, error)
        finally:
            with self.settled:
                self.running -= 1
                self.settled.notify_all()
            BUSY.end()

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
