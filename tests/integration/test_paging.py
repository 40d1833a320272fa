"""Paged scans against Azurite (shared/store/paging.py): every matching row exactly once across
pages, one page in memory at a time, and a scan resumed from a page's continuation token."""

from __future__ import annotations

import uuid

import pytest

from local.azurite import Azurite
from shared.rules.settings import storage_settings
from shared.store import connections, paging, tables
from shared.store.storage import Storage

pytestmark = pytest.mark.integration


def test_connected_users_come_page_by_page_each_once_with_only_the_summary_columns(azurite: Azurite) -> None:
    storage = Storage(storage_settings({"AzureWebJobsStorage": azurite.connection_string}))
    prefix = f"paging-{uuid.uuid4().hex[:6]}"
    table = storage.table(tables.CONNECTIONS)
    wanted = set()
    for t in range(3):
        for u in range(9):
            tenant, user = f"{prefix}-{t}", f"user/{u}"
            state = connections.CONNECTED if u % 4 else connections.DISCONNECTED
            table.upsert_entity(
                {
                    "PartitionKey": tables.key(tenant),
                    "RowKey": tables.key(user),
                    "tenant": tenant,
                    "user": user,
                    "state": state,
                    "subscription_id": f"sub-{t}-{u}",
                    "recent_errors": "[]",
                }
            )
            if state == connections.CONNECTED:
                wanted.add((tenant, user))
    pages = list(connections.connected_pages(storage, page_size=5))
    mine = [(s.tenant, s.user) for page in pages for s in page if s.tenant.startswith(prefix)]
    assert sorted(mine) == sorted(wanted) and len(mine) == len(set(mine))
    assert all(len(page) <= 5 for page in pages) and len(pages) >= len(wanted) // 5
    assert all(s.subscription_id for page in pages for s in page if s.tenant.startswith(prefix))

    first = next(paging.pages(table, "state eq @s", {"s": connections.CONNECTED}, ["RowKey"], page_size=5))
    assert first.resume is not None and set(first.rows[0].keys()) == {"RowKey"}
    rest = paging.pages(
        table, "state eq @s", {"s": connections.CONNECTED}, ["RowKey"], page_size=5, resume=first.resume
    )
    resumed = [r["RowKey"] for page in rest for r in page.rows]
    everything = [
        r["RowKey"]
        for page in paging.pages(table, "state eq @s", {"s": connections.CONNECTED}, ["RowKey"])
        for r in page.rows
    ]
    assert [r["RowKey"] for r in first.rows] + resumed == everything
