"""Users by state, paging through the tables (never the whole table in memory).

States: the connection's own (``connected``, ``reauth_required``, ``disconnected``), and three
that other tables hold: ``held_deletions`` (MailboxSync: Outlook deletions held by the
mass-deletion guard), ``failed_activities`` (Links whose last sync failed for good) and
``removing`` (a "Remove sync" still removing events, in Jobs)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from shared.store import tables

CONNECTION_STATES = ("connected", "reauth_required", "disconnected")
STATES = (*CONNECTION_STATES, "held_deletions", "failed_activities", "removing")
PAGE = 500


@dataclass(frozen=True)
class UserRow:
    tenant: str
    user: str
    state: str
    detail: str = ""

    def line(self) -> str:
        return f"{self.tenant}\t{self.user}\t{self.state}\t{self.detail}"


def _pages(
    table: Any, query: str, parameters: dict[str, Any], select: list[str] | None = None
) -> Iterator[Any]:
    """Every row of a query, page by page (Storage's continuation tokens)."""
    pages = table.query_entities(query, parameters=parameters, select=select, results_per_page=PAGE).by_page()
    for page in pages:
        yield from page


def _ids(partition: str) -> tuple[str, str]:
    parts = tables.unkey(partition)
    return (parts[0], parts[1]) if len(parts) > 1 else (parts[0], "")


def by_state(storage: Any, state: str) -> Iterator[UserRow]:
    if state in CONNECTION_STATES:
        rows = _pages(storage.table(tables.CONNECTIONS), "state eq @s", {"s": state})
        for row in rows:
            errors = json.loads(row.get("recent_errors") or "[]")
            last = f"{errors[0]['kind']}: {errors[0]['message']}" if errors else ""
            detail = "\t".join(x for x in (row.get("account_username") or "", last[:200]) if x)
            yield UserRow(row.get("tenant", ""), row.get("user", ""), state, detail)
    elif state == "held_deletions":
        for row in _pages(storage.table(tables.MAILBOX_SYNC), "held_deletions gt 0", {}):
            tenant, user = _ids(row["PartitionKey"])
            yield UserRow(
                tenant, user, state, f"{row['held_deletions']} held since {row.get('held_since', '?')}"
            )
    elif state == "failed_activities":
        failed: dict[str, int] = {}
        for row in _pages(storage.table(tables.LINKS), "state eq @s", {"s": "failed"}, ["PartitionKey"]):
            failed[row["PartitionKey"]] = failed.get(row["PartitionKey"], 0) + 1
        for partition, count in sorted(failed.items()):
            tenant, user = _ids(partition)
            yield UserRow(tenant, user, state, f"{count} failed")
    elif state == "removing":
        for row in _pages(
            storage.table(tables.JOBS), "RowKey eq @r and state eq @s", {"r": "removal", "s": "running"}
        ):
            tenant, user = _ids(row["PartitionKey"])
            yield UserRow(
                tenant,
                user,
                state,
                f"{row.get('done', 0)}/{row.get('total', 0)} since {row.get('started_at')}",
            )
    else:
        raise SystemExit(f"unknown state {state!r}; one of: {', '.join(STATES)}")
