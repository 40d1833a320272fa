"""Removing our events from a mailbox ("Remove sync" with ``future`` or ``all``).

Only events we created are touched: the ids come from our own links. Deletions go 20 at a time
through ``$batch``; an inner 429 is retried after its own Retry-After (a few rounds at most, since
this runs while the CRM waits for the answer); a 404 means the user already deleted it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import datetime

from shared.outlook.graph import BATCH_LIMIT, error_for
from shared.ports import Services
from shared.rules.calendars import ME, event_path
from shared.rules.errors import ConflictError, ThrottledError
from shared.store import links

log = logging.getLogger(__name__)
MAX_ROUNDS = 5
MAX_WAIT_SECONDS = 10.0
IMMUTABLE_IDS = {"Prefer": 'IdType="ImmutableId"'}  # our links hold immutable ids, as push stores them


def remove_events(
    services: Services, token: str, tenant: str, user: str, choice: str, now: datetime, *, mailbox: str = ME
) -> int:
    if choice == "none":
        return 0
    targets = [
        stored
        for stored in links.for_user(services.storage, tenant, user)
        if stored.link.outlook_event_id
        and not stored.link.adopted  # the user's own meeting, adopted by the CRM: never removed
        and (choice == "all" or _ends_after(stored, now))
    ]
    removed = 0
    for _ in range(MAX_ROUNDS):
        if not targets:
            break
        retry, wait = [], 0.0
        for start in range(0, len(targets), BATCH_LIMIT):
            chunk = targets[start : start + BATCH_LIMIT]
            requests_ = [
                {
                    "id": str(i),
                    "method": "DELETE",
                    "url": event_path(s.link.outlook_event_id, absolute=True, mailbox=mailbox),
                    "headers": IMMUTABLE_IDS,
                }
                for i, s in enumerate(chunk)
            ]
            answers = services.graph.batch(token, requests_)
            for i, stored in enumerate(chunk):
                answer = answers.get(str(i))
                problem = error_for(answer.status, answer.headers, answer.body) if answer else None
                if answer is not None and (problem is None or answer.status == 404):
                    removed += answer.status != 404
                    _forget_event(services, tenant, user, stored)
                elif isinstance(problem, ThrottledError):
                    retry.append(stored)
                    wait = max(wait, problem.retry_after)
                else:
                    log.warning(
                        "An event could not be removed: %s", problem.message if problem else "no answer"
                    )
        targets = retry
        if targets:
            time.sleep(min(wait, MAX_WAIT_SECONDS))
    return removed


def _ends_after(stored: links.StoredLink, now: datetime) -> bool:
    end = stored.extra.get("end_utc")
    return end is None or datetime.fromisoformat(end.replace("Z", "+00:00")) > now


def _forget_event(services: Services, tenant: str, user: str, stored: links.StoredLink) -> None:
    """The link stays (its version still guards ordering); only the event is gone."""
    gone = replace(stored.link, outlook_event_id=None, content_hash=None, change_key=None)
    extra = {k: v for k, v in stored.extra.items() if k not in ("state", "end_utc", "web_link")}
    try:
        links.save(services.storage, tenant, user, links.StoredLink(gone, stored.etag, extra))
    except ConflictError:
        pass  # a worker changed the link meanwhile; it will see the event is gone (404) itself
