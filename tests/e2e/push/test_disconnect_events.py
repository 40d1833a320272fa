""" "Remove sync" removes exactly the events the user asked to remove, and never one they made."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from local.processes import Service
from shared.store import tables
from tests.conftest import Stack, wait_until
from tests.e2e.push import openapi_contract
from tests.e2e.push.conftest import (
    RETURN_URL,
    activity,
    connect_user,
    ours,
    property_of,
    status,
    synced,
    upsert,
    user_path,
)
from tests.support.clock import days_from_today

pytestmark = pytest.mark.e2e
DISCONNECT = "/api/tenants/{tenant}/users/{user}/disconnect"


def at(moment: datetime) -> str:
    return moment.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("choice", "left"),
    [("none", {"past", "soon", "later"}), ("future", {"past"}), ("all", set())],
)
def test_disconnect_removes_only_our_chosen_events(stack: Stack, choice: str, left: set[str]) -> None:
    who = connect_user(stack)
    now = datetime.now(UTC)
    for activity_id, starts in (
        ("past", now - timedelta(days=2)),
        ("soon", now + timedelta(hours=3)),
        ("later", now + timedelta(days=20)),
    ):
        upsert(
            stack, who, id=activity_id, start=at(starts), end=at(starts + timedelta(hours=1)), time_zone="UTC"
        )
        synced(stack, who, activity_id, 1)
    own = stack.control.user_create_event(
        who.oid,
        {
            "subject": "Dentista",
            "start": {"dateTime": at(now + timedelta(days=1))[:-1], "timeZone": "UTC"},
            "end": {"dateTime": at(now + timedelta(days=1, hours=1))[:-1], "timeZone": "UTC"},
        },
    )

    answer = stack.crm.post(user_path(who.tenant, who.user, "disconnect"), {"remove_events": choice})

    assert answer.status_code == 200, answer.text
    openapi_contract.check("POST", DISCONNECT, answer, {"remove_events": choice})
    removal = answer.json()["removal"]
    if choice == "none":
        assert removal is None
        assert answer.json()["message"] == "La sincronización se eliminó correctamente."
    else:
        assert (removal["state"], removal["total"], removal["remove_events"]) == ("running", 3 - len(left), choice)
        assert answer.json()["message"].startswith("La sincronización se eliminó correctamente. Los eventos")
    stack.callbacks.wait_for("connection.disconnected")
    stack.wait_until_idle()
    (done,) = [c for c in stack.callbacks.of_type("connection.disconnected") if c["user_id"] == who.user]
    assert done["data"]["events_removed"] == 3 - len(left)
    assert {property_of(e).rsplit("|", 1)[1] for e in ours(stack, who)} == left
    assert own["id"] in {e["id"] for e in stack.control.events(who.oid)}
    assert status(stack, who)["state"] == "disconnected"
    kept = list(
        stack.storage.table(tables.ACTIVITIES).query_entities(
            "PartitionKey eq @pk", parameters={"pk": tables.key(who.tenant)}
        )
    )
    assert len(kept) == 3 and not any("p0" in row for row in kept)  # versions kept, no CRM content
    again = stack.crm.post(user_path(who.tenant, who.user, "disconnect"), {"remove_events": "all"})
    assert again.json()["status"] == "disconnected" and again.json()["removal"] is None
    stack.wait_until_idle()
    assert len(stack.callbacks.of_type("connection.disconnected")) == 1  # nothing more to remove or report


# --- "Remove sync" as a job (issue 21) ----------------------------------------------------------------

HOLD = {"LOCAL_HOST_QUEUE_HOLD_SECONDS": "5"}  # work held by a killed host comes back after 5 s


def restart(stack: Stack, *, kill: bool) -> None:
    """Kill (-9) or stop the dev host and start it again on the same port and settings."""
    old = stack.host
    old.kill() if kill else old.stop()
    stack.host = Service(old.name, old.args, {**old.env, **HOLD}, old.log).start()


@pytest.mark.timeout(1200)  # 2,000 events created by a real backfill, then removed (minutes on Azurite)
def test_remove_sync_of_2000_events_answers_at_once_survives_kill_9_and_calls_back_once(stack: Stack) -> None:
    restart(stack, kill=False)
    who = connect_user(stack)
    first = days_from_today(2)
    items = []
    for n in range(2000):
        day = first + timedelta(days=n % 200)
        items.append(
            activity(
                who,
                id=f"rm-{n:05d}",
                start=f"{day.isoformat()}T{8 + n % 10:02d}:00:00",
                end=f"{day.isoformat()}T{8 + n % 10:02d}:30:00",
                time_zone="UTC",
                url=f"https://crm.example.com/activities/rm-{n:05d}",
            )
        )
    job = None
    for start in range(0, len(items), 500):
        body = {"activities": items[start : start + 500], "last_page": start + 500 >= len(items)}
        if job:
            body["job_id"] = job
        page = stack.crm.post(user_path(who.tenant, who.user, "backfill"), body)
        assert page.status_code == 202, page.text
        job = page.json()["job_id"]
    completed = stack.callbacks.wait_for("backfill.completed", timeout=600)
    assert completed[0]["data"]["created"] == 2000
    assert len(ours(stack, who)) == 2000
    own = [
        stack.control.user_create_event(
            who.oid,
            {
                "subject": f"Propio {n}",
                "start": {"dateTime": f"{(first + timedelta(days=n)).isoformat()}T09:00:00", "timeZone": "UTC"},
                "end": {"dateTime": f"{(first + timedelta(days=n)).isoformat()}T10:00:00", "timeZone": "UTC"},
            },
        )["id"]
        for n in range(3)
    ]

    began = time.monotonic()
    answer = stack.crm.post(user_path(who.tenant, who.user, "disconnect"), {"remove_events": "all"})
    took = time.monotonic() - began

    assert answer.status_code == 200, answer.text
    openapi_contract.check("POST", DISCONNECT, answer, {"remove_events": "all"})
    removal = answer.json()["removal"]
    assert (removal["state"], removal["total"], removal["events_removed"]) == ("running", 2000, None)
    assert took < 15, f"Remove sync took {took:.1f} s to answer"
    assert stack.control.subscriptions(who.oid) == []  # no more notifications, at once
    assert status(stack, who)["state"] == "disconnected"
    refused = stack.crm.post(
        user_path(who.tenant, who.user, "connect"),
        {"return_url": RETURN_URL, "time_zone": "UTC", "locale": "en", "login_hint": who.upn},
    )
    assert refused.status_code == 409 and refused.json()["error"] == "removal_in_progress"
    assert "still being removed" in refused.json()["message"]
    upsert(stack, who, id="pushed-after", version=1)  # the sync stopped: this never reaches Outlook

    wait_until(lambda: (status(stack, who)["removal"] or {}).get("done", 0) >= 100, 400, "100 events removed")
    restart(stack, kill=True)  # kill -9 in the middle of the removal
    progress = status(stack, who)["removal"]
    assert progress["state"] == "running" and 100 <= progress["done"] < 2000 and progress["percent"] < 100

    stack.callbacks.wait_for("connection.disconnected", timeout=600)
    stack.wait_until_idle()
    assert ours(stack, who) == []  # all 2,000 removed ...
    left = {e["id"] for e in stack.control.events(who.oid)}
    assert left == set(own)  # ... and only those: the user's own events stay
    (done,) = stack.callbacks.of_type("connection.disconnected")  # once
    assert done["data"] == {"events_removed": 2000}
    final = status(stack, who)["removal"]
    assert (final["state"], final["events_removed"], final["percent"]) == ("completed", 2000, 100)
    with pytest.raises(Exception, match="ResourceNotFound|Not Found"):  # the grant went with the work
        stack.storage.table(tables.TOKENS).get_entity(tables.key(who.tenant), tables.key(who.user))
    assert stack.storage.queue("mailbox-removal-poison").peek_messages() == []
    assert [c for c in stack.callbacks.of_type("activity.synced") if c["data"]["activity_id"] == "pushed-after"] == []
