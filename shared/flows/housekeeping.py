"""Daily clean-up of rows nobody needs any more. Every delete tolerates a row already gone, so two
overlapping runs (or a run racing the code that uses the row) are harmless.

- ``OAuthFlows``: sign-ins started and never finished, once ``expires_at`` (10 minutes) is past.
- ``Dedup``: the CRM event ids seen (``received_at``). Kept ``DEDUP_DAYS`` (a CRM retries within
  minutes, not weeks); a row that also holds a large event's payload (``p0``...) is referenced by
  its queued message, so it is kept ``DEDUP_PAYLOAD_DAYS`` (the longest a message can wait).
- ``Subscriptions``: rows of subscriptions expired over a day ago (Graph dropped them; a current
  subscription is renewed days before it expires).
- ``ReconcilePending``: markers whose run never came and that no notification replaced.
- ``RequestIds``: the ``X-Request-Id`` of signed calls, once their signature could no longer
  verify (``expires_at``, minutes after the call).
- ``Jobs``: the pages (chunk rows, with the CRM's activities) and page markers of a backfill job
  completed over ``JOB_PAGES_DAYS`` ago, or left unfinished over ``ABANDONED_JOB_DAYS`` (the CRM
  never sent its last page). The job row stays: ``status`` still shows its counts, and the
  activities themselves are kept in ``Activities`` as pushed ones are.

Every scan is paged (shared/store/paging.py): one page of keys in memory at a time, deleted before
the next page is read, so the run is storage-only and its memory does not grow with the tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any

from shared.ports import Services, Storage
from shared.store import paging, tables

DEDUP_DAYS = 7
DEDUP_PAYLOAD_DAYS = 21
SUBSCRIPTION_GRACE = timedelta(days=1)
MARKER_GRACE = timedelta(hours=1)
JOB_PAGES_DAYS = 7
ABANDONED_JOB_DAYS = 30


def clean_up(services: Services, now: datetime) -> dict[str, int]:
    storage = services.storage
    return {
        "oauth_flows": _expired_flows(storage, now),
        "dedup": _old_dedup(storage, now),
        "subscriptions": _expired_subscriptions(storage, now),
        "pending_markers": _stale_markers(storage, now),
        "request_ids": _expired_request_ids(storage, now),
        "backfill_pages": _finished_backfill_pages(storage, now),
    }


def _delete(table: Any, rows: Iterable[Any]) -> int:
    from azure.core.exceptions import ResourceNotFoundError

    deleted = 0
    for row in rows:
        try:
            with tables.storage_errors("cleaning up"):
                table.delete_entity(row["PartitionKey"], row["RowKey"])
            deleted += 1
        except ResourceNotFoundError:
            pass
    return deleted


def _query(table: Any, query: str | None, parameters: dict[str, Any], select: list[str]) -> Iterator[list[Any]]:
    """The matching rows, one page at a time."""
    for page in paging.pages(table, query, parameters, select, what="listing rows to clean up"):
        yield page.rows


def _expired_flows(storage: Storage, now: datetime) -> int:
    table = storage.table(tables.OAUTH_FLOWS)
    pages = _query(table, "expires_at lt @now", {"now": now}, ["PartitionKey", "RowKey"])
    return sum(_delete(table, rows) for rows in pages)


def _old_dedup(storage: Storage, now: datetime) -> int:
    table = storage.table(tables.DEDUP)
    cutoff = now - timedelta(days=DEDUP_DAYS)
    payload_cutoff = now - timedelta(days=DEDUP_PAYLOAD_DAYS)
    pages = _query(
        table, "received_at lt @cutoff", {"cutoff": cutoff}, ["PartitionKey", "RowKey", "received_at", "p0"]
    )
    return sum(
        _delete(table, [r for r in rows if r.get("p0") is None or tables.aware(r["received_at"]) < payload_cutoff])
        for rows in pages
    )


def _expired_subscriptions(storage: Storage, now: datetime) -> int:
    table = storage.table(tables.SUBSCRIPTIONS)
    pages = _query(table, None, {}, ["PartitionKey", "RowKey", "expires_at"])
    return sum(
        _delete(table, [r for r in rows if _expired(r.get("expires_at"), now - SUBSCRIPTION_GRACE)]) for rows in pages
    )


def _stale_markers(storage: Storage, now: datetime) -> int:
    table = storage.table(tables.RECONCILE_PENDING)
    pages = _query(table, "expires_at lt @cutoff", {"cutoff": now - MARKER_GRACE}, ["PartitionKey", "RowKey"])
    return sum(_delete(table, rows) for rows in pages)


def _expired_request_ids(storage: Storage, now: datetime) -> int:
    table = storage.table(tables.REQUEST_IDS)
    pages = _query(table, "expires_at lt @now", {"now": now}, ["PartitionKey", "RowKey"])
    return sum(_delete(table, rows) for rows in pages)


def _finished_backfill_pages(storage: Storage, now: datetime) -> int:
    table = storage.table(tables.JOBS)
    abandoned = now - timedelta(days=ABANDONED_JOB_DAYS)
    job_pages = _query(
        table,
        "updated_at lt @cutoff",  # only job rows carry updated_at
        {"cutoff": now - timedelta(days=JOB_PAGES_DAYS)},
        ["PartitionKey", "job_id", "state", "updated_at"],
    )
    deleted = 0
    for job in (job for jobs in job_pages for job in jobs):
        if job.get("state") != "completed" and tables.aware(job["updated_at"]) >= abandoned:
            continue
        for kind in ("chunk", "page"):
            prefix = f"{kind}|{tables.key(job['job_id'])}|"
            pages = _query(
                table,
                "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
                {"pk": job["PartitionKey"], "lo": prefix, "hi": prefix[:-1] + "}"},
                ["PartitionKey", "RowKey"],
            )
            deleted += sum(_delete(table, rows) for rows in pages)
    return deleted


def _expired(value: Any, cutoff: datetime) -> bool:
    if isinstance(value, datetime):
        return tables.aware(value) < cutoff
    if not isinstance(value, str) or not value:
        return False
    try:
        return tables.aware(datetime.fromisoformat(_trim(value))) < cutoff
    except ValueError:
        return False


def _trim(text: str) -> str:
    """Graph's ``2026-01-01T00:00:00.0000000Z`` (7 digits) as ``fromisoformat`` reads it."""
    text = text.replace("Z", "+00:00")
    if "." in text:
        head, _, rest = text.partition(".")
        digits = "".join(c for c in rest if c.isdigit())
        zone = rest[len(digits) :]
        text = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    return text
