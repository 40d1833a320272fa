"""Table Storage conventions shared by every repository: table names, key escaping, and mapping
storage errors into the error tree (shared/rules/errors.py).

Keys: Table Storage forbids ``/ \\ # ?`` and control characters in PartitionKey and RowKey, and CRM
or Graph ids may contain any of them. ``key()`` percent-escapes exactly those (and ``%`` itself),
so keys stay readable, unique and reversible.

Payloads: a JSON document kept in a row (a CRM activity, a backfill page) is compressed and split
over ``Edm.Binary`` properties ``p0``, ``p1``, ... (``pack`` / ``unpack``), 64 KiB being the most one
property holds.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, overload

from shared.rules.errors import ConflictError, PermanentError, ThrottledError, TransientError

# Every table the service uses; infra/ creates the same list.
CONNECTIONS = "Connections"
TOKENS = "Tokens"
OAUTH_FLOWS = "OAuthFlows"
SUBSCRIPTIONS = "Subscriptions"
LINKS = "Links"
DEDUP = "Dedup"
JOBS = "Jobs"
MAILBOX_GATES, ACTIVITIES, ACTIVITY_TYPES = "MailboxGates", "Activities", "ActivityTypes"  # push worker
MAILBOX_SYNC, RECONCILE_PENDING = (
    "MailboxSync",
    "ReconcilePending",
)  # reconcile: delta state + lease, coalescing
REQUEST_IDS = "RequestIds"  # replay protection of signed calls (shared/store/request_ids.py)
TENANT_SETTINGS = "TenantSettings"  # one row per tenant: the settings document (shared/store/tenant_settings.py)
CAPTURED_EVENTS = "CapturedEvents"  # what was reported per captured Outlook meeting (shared/store/captured_events.py)
ORGANIZATIONS = "Organizations"  # CRM tenant <-> Microsoft tenant of organisation mode (shared/store/organizations.py)
TABLE_NAMES = (
    CONNECTIONS,
    TOKENS,
    OAUTH_FLOWS,
    SUBSCRIPTIONS,
    LINKS,
    DEDUP,
    JOBS,
    MAILBOX_GATES,
    ACTIVITIES,
    ACTIVITY_TYPES,
    MAILBOX_SYNC,
    RECONCILE_PENDING,
    REQUEST_IDS,
    TENANT_SETTINGS,
    CAPTURED_EVENTS,
    ORGANIZATIONS,
)

_FORBIDDEN = re.compile(r"[%/\\#?\x00-\x1f\x7f-\x9f]")


def key(*parts: str) -> str:
    """One Table key from one or more ids, escaped; parts are joined with ``|`` (escaped inside)."""
    return "|".join(_FORBIDDEN.sub(lambda m: f"%{ord(m.group()):02X}", p).replace("|", "%7C") for p in parts)


def unkey(value: str) -> list[str]:
    from urllib.parse import unquote

    return [unquote(part) for part in value.split("|")]


@contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Translate Azure SDK errors raised inside the block into the service's error tree.

    ``ResourceNotFoundError`` passes through unchanged: for a read it means "no such row"."""
    from azure.core.exceptions import (
        HttpResponseError,
        ResourceExistsError,
        ResourceModifiedError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    try:
        yield
    except ResourceNotFoundError:
        raise  # absence is an answer, not a failure: callers decide
    except (ResourceExistsError, ResourceModifiedError) as error:
        raise ConflictError(f"{what}: changed by someone else", status=error.status_code) from None
    except (ServiceRequestError, ServiceResponseError) as error:
        raise TransientError(f"{what}: storage unreachable ({type(error).__name__})") from None
    except HttpResponseError as error:
        status = error.status_code or 0
        if status == 412:
            raise ConflictError(f"{what}: changed by someone else", status=412) from None
        if status in (429, 503):
            raise ThrottledError(f"{what}: storage busy", retry_after=1.0, status=status) from None
        if status >= 500:
            raise TransientError(f"{what}: storage error {status}", status=status) from None
        raise PermanentError(f"{what}: storage refused ({status})", status=status) from None


def etag_of(entity: Any) -> str | None:
    return getattr(entity, "metadata", {}).get("etag")


def read(table: Any, partition: str, row: str, what: str) -> Any | None:
    """One row, or None when there is none."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        with storage_errors(what):
            return table.get_entity(partition, row)
    except ResourceNotFoundError:
        return None


def write(table: Any, entity: dict[str, Any], etag: str | None, what: str) -> dict[str, Any]:
    """Optimistic concurrency in one place: insert when ``etag`` is None (ConflictError if the row
    appeared meanwhile), else replace only if the row is still the one read (ConflictError if not).
    Returns the write's metadata (its new ``etag``)."""
    from azure.core import MatchConditions
    from azure.data.tables import UpdateMode

    with storage_errors(what):
        if etag is None:
            return table.create_entity(entity)
        return table.update_entity(
            entity, mode=UpdateMode.REPLACE, etag=etag, match_condition=MatchConditions.IfNotModified
        )


@overload
def aware(value: datetime) -> datetime: ...
@overload
def aware(value: None) -> None: ...
def aware(value: datetime | None) -> datetime | None:
    """A datetime read back from a table, as UTC: Azurite returns some without their zone."""
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --- payloads -------------------------------------------------------------------------------------

PAYLOAD_PART_BYTES = 60_000  # Edm.Binary properties hold 64 KiB each


def pack(obj: Any) -> dict[str, bytes]:
    """JSON, compressed, split over Edm.Binary properties ``p0``, ``p1``, ..."""
    data = zlib.compress(json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode(), 6)
    return {
        f"p{i}": data[start : start + PAYLOAD_PART_BYTES]
        for i, start in enumerate(range(0, len(data), PAYLOAD_PART_BYTES))
    }


def unpack(row: Any) -> Any:
    """The document ``pack`` stored in ``row``, or None when the row holds none."""
    parts = []
    while f"p{len(parts)}" in row:
        parts.append(bytes(row[f"p{len(parts)}"]))
    if not parts:
        return None
    return json.loads(zlib.decompress(b"".join(parts)))


def without_payload(row: Any) -> dict[str, Any]:
    """The row's own properties, its packed document left out."""
    return {k: v for k, v in dict(row).items() if not (k[:1] == "p" and k[1:].isdigit())}
