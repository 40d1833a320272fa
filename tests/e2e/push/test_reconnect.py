"""What the CRM pushes while a user's grant is broken is not lost: reconnecting replays it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests

from shared.rules import queues
from shared.store import tables, work_queues
from tests.conftest import Stack, wait_until
from tests.e2e.push.conftest import connect_user, ours, reconnect, status, synced, upsert

pytestmark = pytest.mark.e2e


def test_activities_pushed_during_reauth_required_arrive_after_reconnecting(stack: Stack) -> None:
    who = connect_user(stack)
    upsert(stack, who, id="before")
    synced(stack, who, "before", 1)
    tokens = stack.storage.table(tables.TOKENS)
    row = tokens.get_entity(tables.key(who.tenant), tables.key(who.user))
    row["refreshed_at"] = datetime.now(UTC) - timedelta(days=31)  # idle long enough for the health timer
    tokens.update_entity(row)
    stack.control.expire_refresh_tokens(who.oid)
    requests.post(f"{stack.url}/admin/functions/token_health", json={}, timeout=10)
    wait_until(lambda: status(stack, who)["state"] == "reauth_required", what="reauth_required")

    upsert(stack, who, id="during", subject="Pushed while the grant was broken")
    upsert(stack, who, id="before", version=2, subject="Changed while the grant was broken")
    wait_until(
        lambda: stack.storage.queue(work_queues.name(queues.ACTIVITY_SYNC, who.tenant))
        .get_queue_properties()
        .approximate_message_count
        == 0,
        what="the worker to take both pushes",
    )
    assert {e["subject"] for e in ours(stack, who)} == {
        "Revisar la renovación con Ana"
    }  # nothing applied yet

    reconnect(stack, who.tenant, who.user, who.upn)

    synced(stack, who, "during", 1)
    synced(stack, who, "before", 2)
    assert sorted(e["subject"] for e in ours(stack, who)) == [
        "Changed while the grant was broken",
        "Pushed while the grant was broken",
    ]
    assert status(stack, who)["state"] == "connected"


def test_pushes_keep_working_when_access_tokens_expire(stack: Stack) -> None:
    stack.control.set_identity(access_token_lifetime=120)  # MSAL refreshes tokens this short-lived
    try:
        who = connect_user(stack)
        before = stack.storage.table(tables.TOKENS).get_entity(tables.key(who.tenant), tables.key(who.user))[
            "cache"
        ]
        upsert(stack, who, id="after-expiry")
        synced(stack, who, "after-expiry", 1)
    finally:
        stack.control.set_identity(access_token_lifetime=3600)
    after = stack.storage.table(tables.TOKENS).get_entity(tables.key(who.tenant), tables.key(who.user))[
        "cache"
    ]
    assert after != before  # refreshed with the refresh token, and the rotated cache saved
    assert [e["subject"] for e in ours(stack, who)] == ["Revisar la renovación con Ana"]
    assert status(stack, who)["state"] == "connected"
