"""Callbacks to the CRM (design §3): signed POSTs to ``CRM_CALLBACK_URL``, at least once.

Signed like the CRM's requests (``shared.rules.crm_signature``, a fresh ``X-Request-Id`` per
attempt) but with ``CRM_CALLBACK_SECRET``, never the CRM's request secret: the key that verifies
callbacks cannot sign a request to us.

Producers enqueue an envelope on ``crm-callbacks`` (so a slow or down CRM never blocks sync work);
the callback worker delivers it. Each envelope has an ``id`` the CRM can deduplicate on (reports
of the same Outlook-side change share it: ``callback_messages.report_id``).
A 5xx, 429 or network failure is retried by the queue; a 4xx means the CRM refuses this callback
for good, so it is logged and dropped rather than retried forever.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from shared.ports import Storage
from shared.rules import crm_signature, queues
from shared.rules.callback_messages import (  # noqa: F401 - the kinds are part of this module's face
    ACTIVITY_SYNC_FAILED,
    ACTIVITY_SYNCED,
    BACKFILL_COMPLETED,
    CHANGED_IN_OUTLOOK,
    CONNECTED,
    DELETED_IN_OUTLOOK,
    DISCONNECTED,
    REAUTH_REQUIRED,
    envelope,
)
from shared.rules.errors import PermanentError, TransientError
from shared.store import work_queues

log = logging.getLogger(__name__)

def enqueue(
    storage: Storage,
    kind: str,
    tenant: str,
    user: str | None,
    data: dict[str, Any],
    *,
    delay_seconds: int = 0,
    callback_id: str | None = None,
) -> dict[str, Any]:
    message = envelope(kind, tenant, user, data, callback_id=callback_id)
    work_queues.send(storage, queues.CRM_CALLBACKS, tenant, json.dumps(message), delay_seconds=delay_seconds)
    return message


def deliver(session: Any, url: str, secret: str, body: bytes) -> None:
    """POST one callback, signed; raise TransientError to retry, PermanentError to give up."""
    import requests

    target = urlsplit(url)
    path_and_query = target.path + (f"?{target.query}" if target.query else "")
    request_id = uuid.uuid4().hex
    signature = crm_signature.sign(secret, "POST", path_and_query or "/", body, time.time(), request_id)
    headers = {
        "Content-Type": "application/json",
        crm_signature.HEADER: signature,
        crm_signature.REQUEST_ID_HEADER: request_id,
    }
    try:
        answer = session.post(url, data=body, headers=headers, timeout=(5, 30))
    except requests.RequestException as error:
        raise TransientError(f"CRM callback failed: {type(error).__name__}") from None
    if answer.status_code >= 500 or answer.status_code in (408, 429):
        raise TransientError(f"CRM answered {answer.status_code}", status=answer.status_code)
    if answer.status_code >= 400:
        raise PermanentError(f"CRM refused the callback with {answer.status_code}", status=answer.status_code)
