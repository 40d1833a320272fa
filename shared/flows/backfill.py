"""Backfill ("Sync"): load a user's earlier CRM activities into Outlook, in pages (design §3).

``POST /api/tenants/{tenant}/users/{user}/backfill`` ``{job_id?, activities[<=500], last_page,
dry_run}``:

- Each item is validated as the webhook validates ``activity.upserted`` data; a bad item is
  reported in the answer (``rejected``: field paths such as ``activities[3].subject``) and the
  valid ones go ahead. An item must belong to the user in the path and appear once per page. A
  bad envelope, or more than 500 items, is a 400 naming the field, and nothing happens.
- The window (``shared.rules.backfill_plan``): items that ended before now - ``SYNC_WINDOW_PAST_DAYS``
  are ``ineligible``; future ones always count.
- ``dry_run``: 200 with the plan (counts and each item's category: create, update, unchanged,
  ineligible, with the reason), computed from the links exactly as the real run decides; reads
  only, writes nothing (no table, no queue, no Graph).
- Otherwise 202 with the job's progress. The page is stored in the ``Jobs`` table (one
  transaction with the job's total, so a page posted twice counts once), items outside the
  window are settled at once, and the rest fan out on ``activity-backfill`` in messages of at
  most 20 activities, each applied with ONE Graph ``$batch`` (``shared.flows.backfill_worker``).
- The first page without ``job_id`` starts a job (its id is in the answer); later pages name it.
  After the last page the job completes once every item is settled; ``backfill.completed``
  ``{job_id, created, updated, unchanged, ineligible, failed}`` is sent once. A new page for a job
  that already got its last page is refused (409); the same page again is accepted (202) and
  changes nothing.
- Backfill items send no ``activity.synced`` callbacks (a backfill can hold thousands); the job's
  counters, its last errors and ``backfill.completed`` report the outcome.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from shared.ports import Services, Storage
from shared.rules import queues
from shared.rules.backfill_plan import (
    CATEGORIES,
    MAX_PAGE,
    chunks,
    in_window,
    page_key,
    plan_item,
    reason,
)
from shared.rules.backfill_plan import category as category_of
from shared.rules.contract import ValidationError, parse_activity
from shared.rules.errors import ConflictError, PermanentError
from shared.rules.model import Activity
from shared.rules.sync_plan import UserContext
from shared.store import backfill_jobs, connections, links, tables, work_queues
from shared.store.backfill_jobs import Job, chunk_key, job_entity, replace_op, transact
from shared.store.connections import CONNECTED

log = logging.getLogger(__name__)
MESSAGE_VERSION = 1
_ID = re.compile(r"[^\x00-\x1f\x7f-\x9f]{1,256}")


class NotConnected(PermanentError):
    """Backfill needs a connected user."""


class JobClosed(PermanentError):
    """The job already received its last page."""


@dataclass(frozen=True)
class Item:
    index: int  # position in the page
    raw: dict[str, Any]
    activity: Activity


@dataclass(frozen=True)
class BackfillRequest:
    job_id: str | None
    items: tuple[Item, ...]
    rejected: tuple[tuple[str, str], ...]  # (field path, message) of items left out
    last_page: bool
    dry_run: bool


def parse_request(body: object, user: str) -> BackfillRequest:
    """The envelope must be right (ValidationError naming each bad field); items are checked one
    by one and a bad one is left out and reported."""
    if not isinstance(body, dict):
        raise ValidationError([("body", "must be a JSON object")])
    errors: list[tuple[str, str]] = []
    job_id = body.get("job_id")
    if job_id is not None and (not isinstance(job_id, str) or not _ID.fullmatch(job_id)):
        errors.append(("job_id", "must be 1 to 256 characters, no control characters"))
    activities = body.get("activities")
    if not isinstance(activities, list):
        errors.append(("activities", "must be an array of activities"))
    elif len(activities) > MAX_PAGE:
        errors.append(
            ("activities", f"must hold at most {MAX_PAGE} activities per page, not {len(activities)}")
        )
    last_page = body.get("last_page")
    if not isinstance(last_page, bool):
        errors.append(("last_page", "must be true or false"))
    dry_run = body.get("dry_run", False)
    if dry_run is None:
        dry_run = False
    if not isinstance(dry_run, bool):
        errors.append(("dry_run", "must be true or false"))
    if errors:
        raise ValidationError(errors)
    assert isinstance(activities, list)
    items: list[Item] = []
    rejected: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(activities):
        path = f"activities[{index}]"
        try:
            activity = parse_activity(raw, path)
        except ValidationError as error:
            rejected.extend(error.errors)
            continue
        if activity.owner_user_id != user:
            rejected.append((f"{path}.owner_user_id", "must be the user in the path"))
            continue
        if activity.id in seen:
            rejected.append(
                (f"{path}.id", f"appears more than once in this page (also activities[{seen[activity.id]}])")
            )
            continue
        seen[activity.id] = index
        items.append(Item(index, raw, activity))
    return BackfillRequest(job_id, tuple(items), tuple(rejected), bool(last_page), bool(dry_run))


def _rejected_json(request: BackfillRequest) -> list[dict[str, str]]:
    return [{"field": path, "message": message} for path, message in request.rejected]


def _context(connection: connections.Connection) -> UserContext:
    return UserContext(
        connection.tenant,
        connection.user,
        connected=connection.state == CONNECTED,
        mailbox_time_zone=connection.mailbox_time_zone,
        locale=connection.locale,
    )


def _connected(services: Services, tenant: str, user: str) -> connections.Connection:
    connection = connections.get(services.storage, tenant, user)
    if connection.state != CONNECTED:
        raise NotConnected(f"the user is {connection.state.replace('_', ' ')}", code="not_connected")
    return connection


# --- dry run ---------------------------------------------------------------------------------------


def dry_run(services: Services, tenant: str, user: str, request: BackfillRequest, now: datetime) -> dict[str, Any]:
    """The plan for this page, decided as the real run decides; nothing is written."""
    connection = _connected(services, tenant, user)
    context = _context(connection)
    stored = (
        {s.link.activity_id: s for s in links.for_user(services.storage, tenant, user)}
        if request.items
        else {}
    )
    settings = services.settings
    plan = []
    counts = Counter({c: 0 for c in CATEGORIES})
    for item in request.items:
        found = stored.get(item.activity.id)
        link = found.link if found else None
        decision = plan_item(
            item.activity,
            link,
            context,
            now,
            past_days=settings.sync_window_past_days,
            completed_activities=settings.completed_activities,
        )
        action = category_of(decision)
        counts[action] += 1
        plan.append({"activity_id": item.activity.id, "action": action, "reason": reason(decision)})
    return {
        "dry_run": True,
        "job_id": request.job_id,
        "counts": dict(counts),
        "plan": plan,
        "rejected": _rejected_json(request),
    }


# --- accepting a page ------------------------------------------------------------------------------


def message(tenant: str, user: str, job_id: str, chunk: str, **extra: Any) -> bytes:
    body = {
        "v": MESSAGE_VERSION,
        "kind": "chunk",
        "tenant": tenant,
        "user": user,
        "job": job_id,
        "chunk": chunk,
        "only": None,
        "owned": {},
        "lookup": [],
        "attempt": 0,
        "throttled": 0,
        **extra,
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def accept_page(
    services: Services, tenant: str, user: str, request: BackfillRequest, now: datetime
) -> dict[str, Any]:
    """Store one page, settle what is out of the window, queue the rest; the job's progress."""
    _connected(services, tenant, user)
    storage = services.storage
    past_days = services.settings.sync_window_past_days
    job_id = request.job_id or str(uuid.uuid4())
    outside = [i for i in request.items if not in_window(i.activity, now, past_days)]
    inside = [i for i in request.items if in_window(i.activity, now, past_days)]
    page = page_key([i.raw for i in request.items]) if request.items else None
    groups = chunks(inside)
    chunk_rows = []
    for n, group in enumerate(groups):
        chunk_rows.append(
            {
                "PartitionKey": backfill_jobs.partition(tenant, user),
                "RowKey": chunk_key(job_id, page or "", n),
                "job_id": job_id,
                "n": len(group),
                "received_at": now,
                "results": "{}",
                **tables.pack([i.raw for i in group]),
            }
        )
    marker = {
        "PartitionKey": backfill_jobs.partition(tenant, user),
        "RowKey": page_marker(job_id, page) if page else "",
        "job_id": job_id,
        "received_at": now,
        "items": len(request.items),
        "chunks": len(chunk_rows),
    }
    duplicate = False
    for _ in range(20):
        job = backfill_jobs.get_job(storage, tenant, user, job_id)
        duplicate = page is not None and job is not None and _page_seen(storage, tenant, user, job_id, page)
        if job is not None and job.last_page and not duplicate:
            raise JobClosed("this job already received its last page; start a new job", code="job_closed")
        base = job or Job(tenant, user, job_id, started_at=now)
        if duplicate:
            if not request.last_page or base.last_page:
                break
            updated = replace(base, last_page=True).with_state()
            ops = [replace_op(job_entity(updated), base.etag)]
        else:
            counts = base.counts.add("ineligible", len(outside)) if outside else base.counts
            updated = replace(
                base,
                total=base.total + len(request.items),
                counts=counts,
                pages=base.pages + 1,
                last_page=base.last_page or request.last_page,
            ).with_state()
            ops = [replace_op(job_entity(updated), base.etag), *(("create", row) for row in chunk_rows)]
            if page:
                ops.append(("create", marker))
        try:
            transact(storage, tables.JOBS, ops, "storing a backfill page")
        except ConflictError:
            continue  # a concurrent page of the same job, or the same page twice: read again
        break
    else:
        raise ConflictError("the backfill job kept changing")
    if not duplicate:
        _enqueue(storage, tenant, user, job_id, [row["RowKey"] for row in chunk_rows])
    else:
        _enqueue(storage, tenant, user, job_id, _never_queued(storage, tenant, user, job_id, page or ""))
    job = backfill_jobs.get_job(storage, tenant, user, job_id)
    assert job is not None
    backfill_jobs.finish(storage, job)
    answer = backfill_jobs.view(job, now)
    answer["duplicate_page"] = duplicate
    answer["page"] = {
        "accepted": len(request.items),
        "queued": len(inside),
        "ineligible": len(outside),
        "rejected": len(request.rejected),
    }
    answer["rejected"] = _rejected_json(request)
    return answer


def _enqueue(storage: Storage, tenant: str, user: str, job_id: str, keys: list[str]) -> None:
    """One message per chunk, then the chunks are marked ``queued`` (one transaction)."""
    if not keys:
        return
    for key in keys:
        with tables.storage_errors("queueing backfill work"):
            work_queues.send(storage, queues.ACTIVITY_BACKFILL, tenant, message(tenant, user, job_id, key))
    from azure.data.tables import UpdateMode

    pk = backfill_jobs.partition(tenant, user)
    ops = [
        ("upsert", {"PartitionKey": pk, "RowKey": key, "queued": True}, {"mode": UpdateMode.MERGE})
        for key in keys
    ]
    transact(storage, tables.JOBS, ops, "marking backfill work queued")


def _never_queued(storage: Storage, tenant: str, user: str, job_id: str, page: str) -> list[str]:
    """The same page again: chunks stored but never queued (a crash right after storing the page)."""
    prefix = chunk_key(job_id, page, 0)[:-3]
    with tables.storage_errors("reading a backfill page"):
        rows = storage.table(tables.JOBS).query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            parameters={"pk": backfill_jobs.partition(tenant, user), "lo": prefix, "hi": prefix + "~"},
            select=["RowKey", "queued"],
        )
        return [row["RowKey"] for row in rows if not row.get("queued")]


def page_marker(job_id: str, page: str) -> str:
    return f"page|{tables.key(job_id)}|{page}"


def _page_seen(storage: Storage, tenant: str, user: str, job_id: str, page: str) -> bool:
    """Each accepted page leaves a marker row (written in the page's transaction)."""
    return backfill_jobs.get_chunk(storage, tenant, user, page_marker(job_id, page)) is not None


def status(services: Services, tenant: str, user: str) -> dict[str, Any] | None:
    return backfill_jobs.status(services.storage, tenant, user)
