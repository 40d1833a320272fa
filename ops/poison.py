"""Poison queues: what is in them, and putting messages back on their work queue.

The host moves a message to ``<queue>-poison`` after ``maxDequeueCount`` failed runs (host.json),
which only happens for a message that cannot be read or that crashed the code: work that waits for
Graph or the CRM re-queues itself instead. Replay after fixing the cause (or once the thing it
depended on is back): the message goes to the end of its work queue, as it was, and leaves the
poison queue only once it is there."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from shared.store.work_queues import every_queue

PEEK_LIMIT = 32  # what Storage returns per peek
HIDE_SECONDS = 60  # a message being replayed is hidden this long; if ops dies, it comes back


@dataclass(frozen=True)
class Poisoned:
    queue: str
    id: str
    inserted_on: str
    dequeue_count: int
    body: str

    def summary(self, width: int = 160) -> str:
        text = " ".join(self.body.split())
        return f"{self.id}  {self.inserted_on}  tries={self.dequeue_count}  {text[:width]}"


def work_queue(name: str) -> str:
    """``activity-sync-3`` or ``activity-sync-3-poison`` -> ``activity-sync-3`` (every tenant shard
    of a work queue has its own poison queue: README "Scale"); unknown names refused."""
    base = name[: -len("-poison")] if name.endswith("-poison") else name
    if base not in every_queue():
        raise SystemExit(f"unknown queue {name!r}; one of: {', '.join(every_queue())}")
    return base


def _text(content: Any) -> str:
    return content.decode("utf-8", "replace") if isinstance(content, bytes | bytearray) else str(content)


def counts(storage: Any) -> dict[str, int]:
    """Messages in each poison queue (approximate, as Storage reports it)."""
    found = {}
    for name in every_queue():
        properties = storage.queue(f"{name}-poison").get_queue_properties()
        found[f"{name}-poison"] = int(properties.approximate_message_count or 0)
    return found


def peek(storage: Any, queue: str, limit: int = PEEK_LIMIT) -> list[Poisoned]:
    name = f"{work_queue(queue)}-poison"
    messages = storage.queue(name).peek_messages(max_messages=min(limit, PEEK_LIMIT))
    return [
        Poisoned(name, m.id, str(m.inserted_on), int(m.dequeue_count or 0), _text(m.content))
        for m in messages
    ]


def replay(storage: Any, queue: str, ids: set[str] | None = None, limit: int = 1000) -> list[str]:
    """Move poison messages (those in ``ids``, or all) back to their work queue; returns their ids.
    Sent first, then deleted: a crash in between leaves a copy in both (work is idempotent)."""
    target = work_queue(queue)
    poison = storage.queue(f"{target}-poison")
    work = storage.queue(target)
    moved: list[str] = []
    skipped = []
    while len(moved) < limit:
        batch = list(
            poison.receive_messages(messages_per_page=32, visibility_timeout=HIDE_SECONDS, max_messages=32)
        )
        if not batch:
            break
        for message in batch:
            if ids is not None and message.id not in ids:
                skipped.append(message)
                continue
            work.send_message(message.content)
            poison.delete_message(message, pop_receipt=message.pop_receipt)
            moved.append(message.id)
        if ids is not None and ids <= set(moved):
            break
    for message in skipped:  # not asked for: visible again at once
        poison.update_message(message, pop_receipt=message.pop_receipt, visibility_timeout=0)
    return moved


def describe(item: Poisoned) -> dict[str, Any]:
    try:
        body: Any = json.loads(item.body)
    except ValueError:
        body = item.body
    return {
        "queue": item.queue,
        "id": item.id,
        "inserted_on": item.inserted_on,
        "tries": item.dequeue_count,
        "body": body,
    }
