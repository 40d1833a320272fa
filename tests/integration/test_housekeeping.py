"""The daily clean-up against real Table Storage (Azurite): what is past its time goes, what is
still in use stays, whatever else shares the tables."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from local.azurite import Azurite
from shared.flows import housekeeping
from shared.rules.backfill_plan import Counts
from shared.rules.settings import storage_settings
from shared.store import backfill_jobs, tables
from shared.store.storage import Storage

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 27, 3, 17, tzinfo=UTC)


def iso_z(moment: datetime) -> str:
    """As Graph writes expirationDateTime (a string, unlike the other tables' datetimes)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def exists(storage: Storage, table: str, pk: str, rk: str) -> bool:
    return tables.read(storage.table(table), pk, rk, "checking") is not None


def test_clean_up_removes_only_what_is_past_its_time(azurite: Azurite) -> None:
    storage = Storage(storage_settings({"AzureWebJobsStorage": azurite.connection_string}))
    tag = uuid.uuid4().hex[:8]
    old, recent = NOW - timedelta(days=40), NOW - timedelta(hours=2)

    flows = storage.table(tables.OAUTH_FLOWS)
    flows.upsert_entity(
        {"PartitionKey": f"gone-{tag}", "RowKey": "", "expires_at": NOW - timedelta(minutes=1)}
    )
    flows.upsert_entity(
        {"PartitionKey": f"live-{tag}", "RowKey": "", "expires_at": NOW + timedelta(minutes=9)}
    )

    dedup = storage.table(tables.DEDUP)
    dedup.upsert_entity({"PartitionKey": tag, "RowKey": "old", "received_at": NOW - timedelta(days=8)})
    dedup.upsert_entity({"PartitionKey": tag, "RowKey": "new", "received_at": recent})
    # A big event's payload is referenced by its queued message: kept longer.
    dedup.upsert_entity(
        {"PartitionKey": tag, "RowKey": "payload", "received_at": NOW - timedelta(days=8), "p0": b"x"}
    )

    subscriptions = storage.table(tables.SUBSCRIPTIONS)
    subscriptions.upsert_entity(
        {"PartitionKey": f"gone-{tag}", "RowKey": "", "expires_at": iso_z(NOW - timedelta(days=7))}
    )
    subscriptions.upsert_entity(
        {"PartitionKey": f"live-{tag}", "RowKey": "", "expires_at": iso_z(NOW + timedelta(days=6))}
    )

    pending = storage.table(tables.RECONCILE_PENDING)
    pending.upsert_entity({"PartitionKey": tag, "RowKey": "stale", "expires_at": NOW - timedelta(hours=2)})
    pending.upsert_entity({"PartitionKey": tag, "RowKey": "fresh", "expires_at": NOW + timedelta(minutes=5)})

    # Backfill jobs: long-completed and abandoned ones lose their pages; recent and running ones keep them.
    jobs = storage.table(tables.JOBS)
    user = f"user/{tag}"
    cases = {
        "done-long-ago": ("completed", old),
        "done-today": ("completed", recent),
        "running": ("running", old + timedelta(days=15)),
        "abandoned": ("receiving", old),  # the CRM never sent its last page
    }
    for job_id, (state, updated_at) in cases.items():
        job = backfill_jobs.Job(f"t-{tag}", user, job_id, total=1, counts=Counts(created=1), state=state)
        jobs.upsert_entity({**backfill_jobs.job_entity(job), "updated_at": updated_at})
        for key in (backfill_jobs.chunk_key(job_id, "pg", 0), f"page|{tables.key(job_id)}|pg"):
            jobs.upsert_entity(
                {"PartitionKey": backfill_jobs.partition(f"t-{tag}", user), "RowKey": key, "received_at": old}
            )

    counted = housekeeping.clean_up(SimpleNamespace(storage=storage), NOW)

    assert not exists(storage, tables.OAUTH_FLOWS, f"gone-{tag}", "")
    assert exists(storage, tables.OAUTH_FLOWS, f"live-{tag}", "")
    assert [exists(storage, tables.DEDUP, tag, rk) for rk in ("old", "new", "payload")] == [False, True, True]
    assert not exists(storage, tables.SUBSCRIPTIONS, f"gone-{tag}", "")
    assert exists(storage, tables.SUBSCRIPTIONS, f"live-{tag}", "")
    assert [exists(storage, tables.RECONCILE_PENDING, tag, rk) for rk in ("stale", "fresh")] == [False, True]
    pk = backfill_jobs.partition(f"t-{tag}", user)
    left = sorted(row["RowKey"] for row in jobs.query_entities("PartitionKey eq @pk", parameters={"pk": pk}))
    assert left == sorted(
        [
            *(backfill_jobs.job_key(job_id) for job_id in cases),  # every job row stays
            backfill_jobs.chunk_key("done-today", "pg", 0),
            "page|done-today|pg",
            backfill_jobs.chunk_key("running", "pg", 0),
            "page|running|pg",
        ]
    )
    assert counted["backfill_pages"] >= 4 and counted["oauth_flows"] >= 1

    # A second run finds nothing more of ours to remove.
    housekeeping.clean_up(SimpleNamespace(storage=storage), NOW)
    assert len(list(jobs.query_entities("PartitionKey eq @pk", parameters={"pk": pk}))) == len(left)
