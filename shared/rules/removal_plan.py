"""Pure decisions of "Remove sync" as a job (shared/flows/removal.py does the I/O).

Which of a user's links name an event to remove, what one inner ``$batch`` answer to a DELETE
means for the count, and the progress shown in ``status.removal``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

REMOVED, GONE, RETRY, FAILED = "removed", "gone", "retry", "failed"


@dataclass(frozen=True)
class Target:
    """A link as removal sees it: its event (None once gone) and the event's end instant."""

    activity_id: str
    event_id: str | None
    end_utc: datetime | None
    sent_before: bool = False  # a DELETE of this job already went out (a crash came after it)
    adopted: bool = False  # the user's own meeting, adopted by the CRM (issue 17): never removed


def is_target(target: Target, choice: str, cutoff: datetime) -> bool:
    """``all``: every event of ours; ``future``: those ending after the moment of "Remove sync"
    (an event without a known end counts as future); ``none``: nothing. Never an adopted event:
    it was the user's before the CRM linked it."""
    if not target.event_id or target.adopted or choice == "none":
        return False
    return choice == "all" or target.end_utc is None or target.end_utc > cutoff


def outcome(status: int, sent_before: bool) -> str:
    """One inner DELETE's answer: 2xx removed it; 404 means it was gone already, which counts as
    removed when this job had sent a DELETE for it before (a crash after Graph, before the link
    was written); 429 and 5xx (and no answer: status 0) are tried again; anything else failed."""
    if 200 <= status < 300:
        return REMOVED
    if status in (404, 410):
        return REMOVED if sent_before else GONE
    if status in (0, 408, 429) or status >= 500:
        return RETRY
    return FAILED


def percent(done: int, total: int) -> int:
    if total <= 0:
        return 100
    return min(100, (done * 100) // total)
