"""Backfill ("Sync") planning: pure rules over frozen dataclasses, no I/O (design §3, §4).

**Window.** A backfill item is eligible only when it ends at or after ``now - past_days``
(``SYNC_WINDOW_PAST_DAYS``, 30 by default); activities in the future always count, however far.
The end is the activity's end instant; for an all-day activity, midnight (in the activity's own
``time_zone``) at the start of its exclusive end date, i.e. when its last day is over. An item
outside the window is reported ``ineligible`` (reason ``out_of_window``) and touches nothing:
an event we already made for it stays as it is.

**Decisions.** Inside the window an item is planned exactly like ``activity.upserted`` with
``replay=True`` (``shared.rules.sync_plan.plan_upsert``): the same version as the link re-decides
against the current flags and content, so posting the same pages again is ``unchanged``.
Categories: ``create``, ``update``, ``unchanged``, ``ineligible`` (``backfill_category``); a
dry run reports exactly these and the real run counts the same ones (plus ``failed``).

**Write-ahead intent** (the same mark the push path writes, ``shared.flows.push``): before a create
is sent, its link row gets ``creating`` set (ETag-guarded), the link itself left as it was
(``version`` -1 for a new row), so whoever finds the mark plans the very same create, with the
same ``generation`` and hence the same deterministic ``transactionId``. Hence:

- ``none``: no link, or a link without the mark: nothing of ours can exist for this generation,
  so the create needs no lookup (this keeps a backfill near one Graph request per twenty
  activities);
- ``owned``: the mark is this message's own token and its create was certainly not carried out
  (an inner 429 is never executed): send the same create again, no lookup;
- ``unfinished``: anybody else's mark (a crash between Graph and the table, a lost answer, a
  create still in flight elsewhere): look the event up by our extended property first and adopt
  it; create only when nothing is found. A create racing one still in flight carries the same
  ``transactionId``, which Graph de-duplicates; whichever link write comes second re-plans.
"""

from __future__ import annotations

import hashlib
import json
import math
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal, TypeVar

from shared.rules.event_time import activity_instants
from shared.rules.model import Activity, ActivityType
from shared.rules.sync_plan import (
    Adopt,
    BackfillCategory,
    CompletedPolicy,
    Decision,
    Link,
    Nothing,
    Unlink,
    UserContext,
    backfill_category,
    plan_upsert,
)

MAX_PAGE = 500
CHUNK_SIZE = 20  # one Graph $batch per chunk (graph-facts §2)
OUT_OF_WINDOW = "out_of_window"
CREATING = "creating"  # link extra key, the push's and the Sync's (and the reconcile reads it): set while a create may be in flight

CATEGORIES: tuple[BackfillCategory, ...] = ("create", "update", "unchanged", "ineligible")
# What the job counts per category (past tense, as backfill.completed reports them).
COUNTED = {"create": "created", "update": "updated", "unchanged": "unchanged", "ineligible": "ineligible"}
COUNTERS = ("created", "updated", "unchanged", "ineligible", "failed")

IntentStatus = Literal["none", "owned", "unfinished"]
T = TypeVar("T")


# --- window ---------------------------------------------------------------------------------------


def window_start(now: datetime, past_days: int) -> datetime:
    return now - timedelta(days=past_days)


def activity_end(activity: Activity) -> datetime:
    """When the activity is over, as a UTC instant."""
    if activity.all_day:
        assert isinstance(activity.end, date)
        midnight = datetime.combine(activity.end, time(0), tzinfo=zoneinfo.ZoneInfo(activity.time_zone))
        return midnight.astimezone(UTC)
    return activity_instants(activity)[1]


def in_window(activity: Activity, now: datetime, past_days: int) -> bool:
    return activity_end(activity) >= window_start(now, past_days)


# --- intents --------------------------------------------------------------------------------------


def intent_status(extra: dict[str, Any] | None, owned_token: str | None) -> IntentStatus:
    """What the link's ``creating`` mark means for the next create (see the module docstring)."""
    mark = (extra or {}).get(CREATING)
    if not mark:
        return "none"
    if owned_token and mark == owned_token:
        return "owned"
    return "unfinished"


ADOPT_BY_UPSERT = "adopt_by_upsert"  # an item with outlook_event_id: send it as activity.upserted


# --- one item -------------------------------------------------------------------------------------


def plan_item(
    activity: Activity,
    link: Link | None,
    user: UserContext,
    now: datetime,
    *,
    past_days: int,
    completed_activities: CompletedPolicy = "keep",
    activity_type: ActivityType | None = None,
) -> Decision:
    """The decision for one backfill item (see the module docstring)."""
    if not in_window(activity, now, past_days):
        return Decision(Nothing(OUT_OF_WINDOW), link)
    decision = plan_upsert(
        activity,
        link,
        user,
        completed_activities=completed_activities,
        activity_type=activity_type,
        replay=True,
    )
    if isinstance(decision.action, Adopt):  # adoption reads the event first: only activity.upserted does it
        return Decision(Nothing(ADOPT_BY_UPSERT), link)
    if isinstance(decision.action, Unlink):  # the user's event stays; only the link changes
        return Decision(Nothing(decision.action.reason), decision.link)
    return decision


def category(decision: Decision) -> BackfillCategory:
    return backfill_category(decision)


def reason(decision: Decision) -> str | None:
    return getattr(decision.action, "reason", None)


# --- pages and chunks -----------------------------------------------------------------------------


def chunks(items: Sequence[T], size: int = CHUNK_SIZE) -> list[Sequence[T]]:
    if size < 1:
        raise ValueError("chunk size must be positive")
    return [items[i : i + size] for i in range(0, len(items), size)]


def page_key(items: Iterable[dict[str, Any]]) -> str:
    """Identifies a page's content, so a page posted twice to one job is accepted once."""
    canonical = json.dumps(list(items), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


# --- progress -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Counts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    ineligible: int = 0
    failed: int = 0

    @property
    def settled(self) -> int:
        return self.created + self.updated + self.unchanged + self.ineligible + self.failed

    def add(self, counted: str, n: int = 1) -> Counts:
        if counted not in COUNTERS:
            raise ValueError(f"unknown counter {counted!r}")
        return replace(self, **{counted: getattr(self, counted) + n})

    def plus(self, other: Counts) -> Counts:
        return Counts(*(getattr(self, c) + getattr(other, c) for c in COUNTERS))

    def as_dict(self) -> dict[str, int]:
        return {c: getattr(self, c) for c in COUNTERS}


def tally(results: Iterable[str]) -> Counts:
    """Counts of settled results (each one of ``COUNTERS``)."""
    counts = Counts()
    for counted in results:
        counts = counts.add(counted)
    return counts


@dataclass(frozen=True, slots=True)
class Progress:
    total: int
    done: int
    percent: float
    estimated_seconds_left: int | None


def progress(total: int, done: int, last_page: bool, started: datetime, now: datetime) -> Progress:
    """Percent of the received items settled, and the time left at the rate so far.

    Until the last page has arrived, the total (and so the estimate) covers the pages received;
    100 % only once the last page is in and every item is settled."""
    done = min(done, total)
    if total == 0:
        percent = 100.0 if last_page else 0.0
    else:
        percent = math.floor(1000 * done / total) / 10
        if percent >= 100 and not last_page:
            percent = 99.9
    left = total - done
    if left == 0:
        eta: int | None = 0
    elif done == 0:
        eta = None  # no rate yet
    else:
        elapsed = max((now - started).total_seconds(), 0.001)
        eta = math.ceil(left * elapsed / done)
    return Progress(total, done, percent, eta)
