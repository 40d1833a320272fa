"""The ``Jobs`` table's ``removal`` row of a user: "Remove sync" as a job (shared/flows/removal.py).

One row per user (PartitionKey ``tenant|user``, the user's backfill partition; RowKey
``removal``), the latest removal: ``job_id``, ``choice`` (future, all), ``cutoff`` (the moment of
"Remove sync"; ``future`` removes events ending after it), ``state`` (``running`` until no target
is left, then ``completed``), ``total`` (targets when it started), ``done`` and ``failed``
(progress, for status), ``content_forgotten`` (the user's kept CRM payloads dropped: the job's
first step, so "Remove sync" answers at once even with thousands of them), ``calendar_id`` /
``calendar_deleted`` (``all`` for a user with a dedicated calendar: the calendar goes in one
request and the job then only records its events as removed), ``cursor`` (the last link RowKey handled, so a resumed run reads on from
there), ``events_removed`` (counted from the links at the end, exact whatever crashed meanwhile),
``callback_id``/``callback_sent`` (``connection.disconnected``, queued once by the run that
completed it, again with the same id if a crash came between), ``attempt`` (transient failures in a
row). Every write is ETag-guarded."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from shared.ports import Storage
from shared.rules.removal_plan import percent
from shared.store import tables
from shared.store.connections import iso

ROW = "removal"
RUNNING, COMPLETED = "running", "completed"
CALLBACK_NAMESPACE = uuid.UUID("8d7c0a52-4c1e-4b8e-9a8e-6f1f3b2d7e41")


@dataclass(frozen=True)
class Removal:
    tenant: str
    user: str
    job_id: str
    choice: str
    cutoff: datetime
    state: str = RUNNING
    total: int = 0
    done: int = 0
    failed: int = 0
    cursor: str = ""
    started_at: datetime | None = None
    completed_at: datetime | None = None
    events_removed: int = 0
    callback_id: str | None = None
    callback_sent: bool = False
    attempt: int = 0
    content_forgotten: bool = False  # the user's kept CRM payloads dropped (the job's first step)
    calendar_id: str | None = None  # a dedicated calendar to delete whole (``all``), one request
    calendar_deleted: bool = False  # it is gone: the rest only records its events as removed
    updated_at: datetime | None = None
    etag: str | None = None

    def completed(self, events_removed: int, now: datetime) -> Removal:
        return replace(
            self,
            state=COMPLETED,
            completed_at=now,
            events_removed=events_removed,
            done=max(self.done, events_removed),
            callback_id=str(uuid.uuid5(CALLBACK_NAMESPACE, f"{self.tenant}|{self.user}|{self.job_id}")),
        )


def partition(tenant: str, user: str) -> str:
    return tables.key(tenant, user)


def get(storage: Storage, tenant: str, user: str) -> Removal | None:
    row = tables.read(storage.table(tables.JOBS), partition(tenant, user), ROW, "reading the removal job")
    if row is None:
        return None
    return Removal(
        tenant,
        user,
        row["job_id"],
        row.get("choice", "all"),
        tables.aware(row["cutoff"]),
        state=row.get("state", RUNNING),
        total=int(row.get("total", 0)),
        done=int(row.get("done", 0)),
        failed=int(row.get("failed", 0)),
        cursor=row.get("cursor") or "",
        started_at=tables.aware(row.get("started_at")),
        completed_at=tables.aware(row.get("completed_at")),
        events_removed=int(row.get("events_removed", 0)),
        callback_id=row.get("callback_id"),
        callback_sent=bool(row.get("callback_sent")),
        attempt=int(row.get("attempt", 0)),
        content_forgotten=bool(row.get("content_forgotten")),
        calendar_id=row.get("calendar_id"),
        calendar_deleted=bool(row.get("calendar_deleted")),
        updated_at=tables.aware(row.get("updated_at")),
        etag=tables.etag_of(row),
    )


def running(storage: Storage, tenant: str, user: str) -> bool:
    found = get(storage, tenant, user)
    return found is not None and found.state == RUNNING


def save(storage: Storage, removal: Removal, now: datetime | None = None) -> Removal:
    """Create (no etag) or replace the row read; ConflictError when someone else wrote first."""
    now = now or datetime.now(UTC)
    entity: dict[str, Any] = {
        "PartitionKey": partition(removal.tenant, removal.user),
        "RowKey": ROW,
        "job_id": removal.job_id,
        "choice": removal.choice,
        "cutoff": removal.cutoff,
        "state": removal.state,
        "total": removal.total,
        "done": removal.done,
        "failed": removal.failed,
        "cursor": removal.cursor,
        "events_removed": removal.events_removed,
        "callback_sent": removal.callback_sent,
        "attempt": removal.attempt,
        "content_forgotten": removal.content_forgotten,
        "calendar_deleted": removal.calendar_deleted,
        "updated_at": now,
    }
    for name in ("started_at", "completed_at", "callback_id", "calendar_id"):
        if getattr(removal, name) is not None:
            entity[name] = getattr(removal, name)
    metadata = tables.write(storage.table(tables.JOBS), entity, removal.etag, "saving the removal job")
    return replace(removal, etag=metadata.get("etag"), updated_at=now)


def view(removal: Removal) -> dict[str, Any]:
    """``status.removal`` and the disconnect answer."""
    return {
        "job_id": removal.job_id,
        "state": removal.state,
        "remove_events": removal.choice,
        "total": removal.total,
        "done": removal.done,
        "failed": removal.failed,
        "percent": 100 if removal.state == COMPLETED else percent(removal.done, removal.total),
        "events_removed": removal.events_removed if removal.state == COMPLETED else None,
        "started_at": iso(removal.started_at) if removal.started_at else None,
        "completed_at": iso(removal.completed_at) if removal.completed_at else None,
    }
