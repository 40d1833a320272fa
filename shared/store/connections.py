"""A CRM user's connection to their Outlook mailbox, one row per (tenant, user) in ``Connections``.

States: ``never_connected`` (no row) -> ``connected`` <-> ``reauth_required`` -> ``disconnected``
-> ``connected`` again. Every write is ETag-guarded; ``update`` re-reads and re-applies a change
when someone else wrote first, so concurrent workers never lose each other's fields.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from shared.ports import Storage
from shared.rules.calendars import DELEGATED, mailbox_base
from shared.rules.errors import ConflictError
from shared.rules.event_time import iso
from shared.store import tables

NEVER_CONNECTED = "never_connected"
CONNECTED = "connected"
REAUTH_REQUIRED = "reauth_required"
DISCONNECTED = "disconnected"
MAX_RECENT_ERRORS = 10


@dataclass(frozen=True)
class Connection:
    tenant: str
    user: str
    state: str = NEVER_CONNECTED
    locale: str = "es"
    crm_time_zone: str | None = None
    mailbox_time_zone: str | None = None  # Windows name, as mailboxSettings gives it
    account_oid: str | None = None
    account_tid: str | None = None
    account_username: str | None = None
    account_mail: str | None = None  # the mailbox's primary address: its domain is the owner's too
    capture: bool = True  # issue 17: False = the user opted out of meeting capture at connect
    connected_at: str | None = None
    disconnected_at: str | None = None
    subscription_id: str | None = None
    subscription_expires_at: str | None = None
    last_sync_at: str | None = None
    last_reconcile_at: str | None = None
    calendar: str = "default"  # the user's choice: default | dedicated | id (shared.rules.calendars)
    calendar_id: str | None = None  # the calendar events live in; None = the default calendar
    calendar_move: str | None = None  # JSON: the last switch's progress (shared/flows/calendar_move.py)
    online_providers: str | None = None  # JSON: the calendar's allowed online meeting providers (issue 18)
    # issue 19: ``delegated`` (the user signed in; token cache per user) or ``organization`` (the CRM
    # enabled the user under its organisation's admin consent: app-only tokens for ``account_tid``,
    # the mailbox addressed as ``users/{account_oid}``).
    mode: str = DELEGATED
    recent_errors: tuple[dict[str, str], ...] = field(default=())
    etag: str | None = None

    @property
    def mailbox_path(self) -> str:
        """The mailbox's Graph path segment (``me`` or ``users/{id}``; shared.rules.calendars)."""
        return mailbox_base(self.mode, self.account_oid)

    def with_error(self, kind: str, message: str, now: datetime | None = None) -> Connection:
        """Remember a failure the user should see in status (newest first, a few kept)."""
        entry = {"at": iso(now or datetime.now(UTC)), "kind": kind, "message": message}
        return replace(self, recent_errors=(entry, *self.recent_errors)[:MAX_RECENT_ERRORS])


def get(storage: Storage, tenant: str, user: str) -> Connection:
    row = tables.read(
        storage.table(tables.CONNECTIONS), tables.key(tenant), tables.key(user), "reading the connection"
    )
    return Connection(tenant, user) if row is None else _from_row(row)


def _from_row(row: Any) -> Connection:
    values = {
        k: row[k] for k in Connection.__dataclass_fields__ if k in row and k not in ("etag", "recent_errors")
    }
    errors = tuple(json.loads(row.get("recent_errors") or "[]"))
    return Connection(**values, recent_errors=errors, etag=tables.etag_of(row))


def save(storage: Storage, connection: Connection) -> Connection:
    """Insert a new row, or replace the one read (ETag): ConflictError if it changed meanwhile."""
    from azure.core import MatchConditions
    from azure.data.tables import UpdateMode

    entity = {
        k: v for k, v in asdict(connection).items() if k not in ("tenant", "user", "etag") and v is not None
    }
    entity.update(
        PartitionKey=tables.key(connection.tenant),
        RowKey=tables.key(connection.user),
        recent_errors=json.dumps(list(connection.recent_errors)),
        tenant=connection.tenant,
        user=connection.user,
    )
    table = storage.table(tables.CONNECTIONS)
    with tables.storage_errors("saving the connection"):
        if connection.etag is None:
            metadata = table.create_entity(entity)
        else:
            metadata = table.update_entity(
                entity,
                mode=UpdateMode.REPLACE,
                etag=connection.etag,
                match_condition=MatchConditions.IfNotModified,
            )
    return replace(connection, etag=metadata.get("etag"))


def update(storage: Storage, tenant: str, user: str, change: Callable[[Connection], Connection]) -> Connection:
    """Read, change, write; on a concurrent write, read again and re-apply ``change``."""
    for _ in range(10):
        current = get(storage, tenant, user)
        try:
            return save(storage, change(current))
        except ConflictError:
            continue
    raise ConflictError("the connection kept changing while being updated")


def connected_in_tenant(storage: Storage, tenant: str) -> Iterator[Connection]:
    """The tenant's connected users, read page by page from its own partition."""
    with tables.storage_errors("listing the tenant's connections"):
        rows = storage.table(tables.CONNECTIONS).query_entities(
            "PartitionKey eq @pk and state eq @s", parameters={"pk": tables.key(tenant), "s": CONNECTED}
        )
        for row in rows:
            yield _from_row(row)


@dataclass(frozen=True)
class Summary:
    """The few columns the timers decide on (shared/flows/maintenance.py), read page by page."""

    tenant: str
    user: str
    subscription_id: str | None = None
    subscription_expires_at: str | None = None
    last_reconcile_at: str | None = None


SUMMARY_COLUMNS = ["tenant", "user", "subscription_id", "subscription_expires_at", "last_reconcile_at"]


def connected_pages(storage: Storage, *, page_size: int | None = None) -> Iterator[list[Summary]]:
    """Every ``connected`` user, one Table page at a time (never the whole table in memory), in
    PartitionKey order: a tenant's users come together."""
    from shared.store import paging

    for page in paging.pages(
        storage.table(tables.CONNECTIONS),
        "state eq @state",
        {"state": CONNECTED},
        SUMMARY_COLUMNS,
        page_size=page_size or paging.PAGE_SIZE,
        what="listing connections",
    ):
        yield [
            Summary(
                str(row["tenant"]),
                str(row["user"]),
                row.get("subscription_id"),
                row.get("subscription_expires_at"),
                row.get("last_reconcile_at"),
            )
            for row in page.rows
        ]


def in_tenant(storage: Storage, tenant: str, *, mode: str) -> Iterator[Connection]:
    """The tenant's users of one mode (any state), read page by page from its own partition."""
    with tables.storage_errors("listing the tenant's users"):
        rows = storage.table(tables.CONNECTIONS).query_entities(
            "PartitionKey eq @pk and mode eq @m", parameters={"pk": tables.key(tenant), "m": mode}
        )
        for row in rows:
            yield _from_row(row)
