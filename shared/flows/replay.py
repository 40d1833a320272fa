"""Replay protection for the CRM's signed calls (the edge in functions/http.py asks this before
any handler runs): a request id is accepted once; see shared/store/request_ids.py."""

from __future__ import annotations

from shared.ports import Storage
from shared.store import request_ids


def first_use(storage: Storage, request_id: str, signed_at: int) -> bool:
    """True the first time a signed request id is seen; False for a replay (answer 409)."""
    return request_ids.claim(storage, request_id, signed_at)
