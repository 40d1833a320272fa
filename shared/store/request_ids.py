"""Replay protection for signed calls: every ``X-Request-Id`` is remembered (a ``RequestIds`` row)
until its signature could no longer verify, and a second use is refused.

A signature is good for ``TOLERANCE_SECONDS`` either side of its timestamp, so a request id is kept
until ``t + TOLERANCE_SECONDS`` plus a margin for clock skew; the daily clean-up deletes rows past
``expires_at`` (shared/flows/housekeeping.py). The row is inserted before the request is handled:
of two concurrent uses of one id only one insert succeeds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.ports import Storage
from shared.rules.crm_signature import TOLERANCE_SECONDS
from shared.rules.errors import ConflictError
from shared.store import tables

MARGIN = timedelta(seconds=60)


def claim(storage: Storage, request_id: str, signed_at: int) -> bool:
    """True the first time ``request_id`` is seen; False for a replay."""
    expires_at = datetime.fromtimestamp(signed_at, UTC) + timedelta(seconds=TOLERANCE_SECONDS) + MARGIN
    entity = {"PartitionKey": tables.key(request_id), "RowKey": "", "expires_at": expires_at}
    try:
        with tables.storage_errors("remembering the request id"):
            storage.table(tables.REQUEST_IDS).create_entity(entity)
    except ConflictError:
        return False
    return True
