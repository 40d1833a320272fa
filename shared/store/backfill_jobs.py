"""The ``Jobs`` table: backfill jobs, their chunks, and progress counted exactly once.

One partition per user (``tenant|user``), so a job row and its chunk rows can be written in one
entity-group transaction (atomic, ETag-guarded):

- job row ``job|<job id>``: ``total`` (valid items received), ``settled`` and the counters
  (created, updated, unchanged, ineligible, failed), ``last_page``, ``state`` (``receiving`` until
  the last page arrived, then ``running``, then ``completed``), ``started_at``, ``completed_at``,
  ``callback_id``/``callback_sent`` and the last few item ``errors``;
- chunk row ``chunk|<job id>|<page key>|<nnn>``: up to 20 raw activities (compressed, the way the
  push path keeps payloads), and ``results`` (item index -> counter) of the items settled so far.

A page is accepted by one transaction (its chunk rows + the job's ``total``), so a page posted
twice is counted once (its chunk rows exist). Settling items updates the chunk row and the job
counters in one transaction, so redelivered work never counts an item twice. The transaction that
settles the last item (with ``last_page`` received) also marks the job ``completed`` and fixes a
``callback_id``; ``backfill.completed`` is then queued with that id, and only then is
``callback_sent`` set. A crash anywhere in between leaves ``callback_sent`` false, and the next
look at the job (the redelivered chunk message, or ``status`` a little later) queues it again with
the same id: callbacks are at-least-once and the CRM de-duplicates them by id.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from shared.ports import Storage
from shared.rules import callback_messages, queues
from shared.rules.backfill_plan import COUNTERS, Counts, progress
from shared.rules.errors import ConflictError
from shared.store import tables, work_queues
from shared.store.connections import iso

log = logging.getLogger(__name__)

RECEIVING, RUNNING, COMPLETED = "receiving", "running", "completed"
MAX_ERRORS = 20
# How long status leaves a just-completed job's callback to the worker that completed it.
STATUS_WAIT = timedelta(seconds=30)
CALLBACK_NAMESPACE = uuid.UUID("3f0b7c1e-51a4-4f5e-9d5b-3f7a2c9e4b10")
_RETRIES = 20


@dataclass(frozen=True)
class Job:
    tenant: str
    user: str
    job_id: str
    total: int = 0
    counts: Counts = Counts()
    last_page: bool = False
    state: str = RECEIVING
    pages: int = 0
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    completed_at: datetime | None = None
    callback_id: str | None = None
    callback_sent: bool = False
    errors: tuple[dict[str, str], ...] = ()
    etag: str | None = None

    @property
    def settled(self) -> int:
        return self.counts.settled

    def with_state(self) -> Job:
        """``state`` (and completion) as follows from the counters."""
        if self.state == COMPLETED:
            return self
        if self.last_page and self.settled >= self.total:
            return replace(
                self,
                state=COMPLETED,
                completed_at=datetime.now(UTC),
                callback_id=str(uuid.uuid5(CALLBACK_NAMESPACE, f"{self.tenant}|{self.user}|{self.job_id}")),
            )
        return replace(self, state=RUNNING if self.last_page else RECEIVING)


def partition(tenant: str, user: str) -> str:
    return tables.key(tenant, user)


def job_key(job_id: str) -> str:
    return "job|" + tables.key(job_id)


def chunk_key(job_id: str, page: str, index: int) -> str:
    return f"chunk|{tables.key(job_id)}|{page}|{index:03d}"


def job_from_row(tenant: str, user: str, row: Any) -> Job:
    return Job(
        tenant,
        user,
        row["job_id"],
        total=int(row.get("total", 0)),
        counts=Counts(*(int(row.get(c, 0)) for c in COUNTERS)),
        last_page=bool(row.get("last_page")),
        state=row.get("state", RECEIVING),
        pages=int(row.get("pages", 0)),
        started_at=tables.aware(row.get("started_at")) or datetime.now(UTC),
        completed_at=tables.aware(row.get("completed_at")),
        callback_id=row.get("callback_id"),
        callback_sent=bool(row.get("callback_sent")),
        errors=tuple(json.loads(row.get("errors") or "[]")),
        etag=tables.etag_of(row),
    )


def job_entity(job: Job) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": partition(job.tenant, job.user),
        "RowKey": job_key(job.job_id),
        "job_id": job.job_id,
        "total": job.total,
        "settled": job.settled,
        **job.counts.as_dict(),
        "last_page": job.last_page,
        "state": job.state,
        "pages": job.pages,
        "started_at": job.started_at,
        "updated_at": datetime.now(UTC),
        "callback_sent": job.callback_sent,
        "errors": json.dumps(list(job.errors), ensure_ascii=False),
    }
    if job.completed_at:
        entity["completed_at"] = job.completed_at
    if job.callback_id:
        entity["callback_id"] = job.callback_id
    return entity


def get_job(storage: Storage, tenant: str, user: str, job_id: str) -> Job | None:
    from azure.core.exceptions import ResourceNotFoundError

    try:
        with tables.storage_errors("reading a backfill job"):
            row = storage.table(tables.JOBS).get_entity(partition(tenant, user), job_key(job_id))
    except ResourceNotFoundError:
        return None
    return job_from_row(tenant, user, row)


def latest_job(storage: Storage, tenant: str, user: str) -> Job | None:
    with tables.storage_errors("listing backfill jobs"):
        rows = list(
            storage.table(tables.JOBS).query_entities(
                "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
                parameters={"pk": partition(tenant, user), "lo": "job|", "hi": "job}"},
            )
        )
    jobs = [job_from_row(tenant, user, row) for row in rows]
    return max(jobs, key=lambda j: j.started_at) if jobs else None


def get_chunk(storage: Storage, tenant: str, user: str, key: str) -> Any:
    return tables.read(storage.table(tables.JOBS), partition(tenant, user), key, "reading a backfill chunk")


def forget_payloads(storage: Storage, tenant: str, user: str) -> int:
    """ "Remove sync": the user's backfill pages keep no CRM content. Each chunk row loses its
    activities and keeps its counts (ETag-guarded, so a worker settling it meanwhile keeps its
    results); a job still running then fails its remaining items as not connected."""
    table = storage.table(tables.JOBS)
    with tables.storage_errors("listing a user's backfill pages"):
        rows = list(
            table.query_entities(
                "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
                parameters={"pk": partition(tenant, user), "lo": "chunk|", "hi": "chunk}"},
            )
        )
    forgotten = 0
    for row in rows:
        for _ in range(_RETRIES):
            if row is None or "p0" not in row:
                break
            try:
                tables.write(
                    table, tables.without_payload(row), tables.etag_of(row), "forgetting a backfill page"
                )
                forgotten += 1
                break
            except ConflictError:
                row = get_chunk(storage, tenant, user, row["RowKey"])
    return forgotten


def results_of(chunk_row: Any) -> dict[str, str]:
    return json.loads(chunk_row.get("results") or "{}")


def transact(storage: Storage, table: str, operations: list[tuple], what: str) -> list[dict[str, Any]]:
    """One entity-group transaction; ConflictError when an ETag or an existing row got in the way."""
    from azure.data.tables import TableTransactionError

    with tables.storage_errors(what):
        try:
            return storage.table(table).submit_transaction(operations)
        except TableTransactionError as error:
            if error.status_code in (409, 412):
                raise ConflictError(f"{what}: changed by someone else", status=error.status_code) from None
            raise


def replace_op(entity: dict[str, Any], etag: str | None, *, merge: bool = False) -> tuple:
    """A transaction step: create when there is no row yet, else update if unchanged since read."""
    from azure.core import MatchConditions
    from azure.data.tables import UpdateMode

    if etag is None:
        return ("create", entity)
    mode = UpdateMode.MERGE if merge else UpdateMode.REPLACE
    return ("update", entity, {"mode": mode, "etag": etag, "match_condition": MatchConditions.IfNotModified})


def settle(
    storage: Storage,
    tenant: str,
    user: str,
    job_id: str,
    chunk: str,
    results: dict[int, str],
    errors: list[dict[str, str]] | None = None,
) -> Job | None:
    """Record the outcome of some items of one chunk, once each; returns the job afterwards."""
    if not results:
        return get_job(storage, tenant, user, job_id)
    for _ in range(_RETRIES):
        job = get_job(storage, tenant, user, job_id)
        row = get_chunk(storage, tenant, user, chunk)
        if job is None or row is None:
            log.warning("A backfill chunk settled after its job was removed")
            return job
        known = results_of(row)
        new = {str(i): counted for i, counted in results.items() if str(i) not in known}
        if not new:
            return job
        counts = job.counts
        for counted in new.values():
            counts = counts.add(counted)
        kept_errors = (*job.errors, *(errors or []))[-MAX_ERRORS:]
        updated = replace(job, counts=counts, errors=kept_errors).with_state()
        chunk_entity = {
            "PartitionKey": row["PartitionKey"],
            "RowKey": row["RowKey"],
            "results": json.dumps({**known, **new}),
        }
        ops = [
            replace_op(job_entity(updated), job.etag),
            replace_op(chunk_entity, tables.etag_of(row), merge=True),
        ]
        try:
            answer = transact(storage, tables.JOBS, ops, "settling backfill items")
        except ConflictError:
            continue
        return replace(updated, etag=answer[0].get("etag"))
    raise ConflictError("the backfill job kept changing")


def finish(
    storage: Storage, job: Job | None, *, wait: timedelta = timedelta(0), now: datetime | None = None
) -> None:
    """Queue ``backfill.completed`` for a completed job whose callback is not marked sent, then
    mark it. Queue first: a crash before the mark costs a repeat with the same id, never the
    callback. ``wait`` leaves a just-completed job to the worker that completed it (``status``
    uses it so that polling does not repeat what that worker is about to send)."""
    from azure.data.tables import UpdateMode

    if job is None or job.state != COMPLETED or job.callback_sent:
        return
    if job.completed_at and (now or datetime.now(UTC)) - job.completed_at < wait:
        return
    data = {"job_id": job.job_id, **job.counts.as_dict()}
    envelope = callback_messages.envelope(callback_messages.BACKFILL_COMPLETED, job.tenant, job.user, data)
    envelope["id"] = job.callback_id or envelope["id"]
    with tables.storage_errors("queueing backfill.completed"):
        work_queues.send(storage, queues.CRM_CALLBACKS, job.tenant, json.dumps(envelope))
    entity = {"PartitionKey": partition(job.tenant, job.user), "RowKey": job_key(job.job_id)}
    with tables.storage_errors("marking backfill.completed sent"):
        storage.table(tables.JOBS).update_entity({**entity, "callback_sent": True}, mode=UpdateMode.MERGE)
    log.info("backfill.completed queued for job %s", job.job_id)


def view(job: Job, now: datetime | None = None) -> dict[str, Any]:
    """What the CRM sees of a job (202 answers and ``status.backfill``)."""
    now = now or datetime.now(UTC)
    shown = progress(job.total, job.settled, job.last_page, job.started_at, job.completed_at or now)
    return {
        "job_id": job.job_id,
        "state": job.state,
        "received": job.total,
        "total": job.total,
        "done": shown.done,
        **job.counts.as_dict(),
        "counts": job.counts.as_dict(),
        "percent": shown.percent,
        "estimated_seconds_left": shown.estimated_seconds_left,
        "last_page": job.last_page,
        "started_at": iso(job.started_at),
        "completed_at": iso(job.completed_at) if job.completed_at else None,
        "errors": list(job.errors),
    }


def status(storage: Storage, tenant: str, user: str) -> dict[str, Any] | None:
    """``status.backfill``: the user's latest job (sending a lost ``backfill.completed`` on the way)."""
    job = latest_job(storage, tenant, user)
    if job is None:
        return None
    try:
        finish(storage, job, wait=STATUS_WAIT)
    except Exception:  # noqa: BLE001 - status must answer; the next look sends it
        log.warning("backfill.completed could not be queued from status")
    return view(job)
