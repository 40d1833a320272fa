""" "Remove sync" removes exactly the events the user asked to remove, and never one they made."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.store import tables
from tests.conftest import Stack
from tests.e2e.push import openapi_contract
from tests.e2e.push.conftest import connect_user, ours, property_of, status, synced, upsert, user_path

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
    assert answer.json()["events_removed"] == 3 - len(left)
    assert answer.json()["message"] == "La sincronización se eliminó correctamente."
    assert {property_of(e).rsplit("|", 1)[1] for e in ours(stack, who)} == left
    assert own["id"] in {e["id"] for e in stack.control.events(who.oid)}
    assert status(stack, who)["state"] == "disconnected"
    kept = list(
        stack.storage.table(tables.ACTIVITIES).query_entities(
            "PartitionKey eq @pk", parameters={"pk": tables.key(who.tenant)}
        )
    )
    assert len(kept) == 3 and not any("p0" in row for row in kept)  # versions kept, no CRM content
    assert (
        stack.crm.post(user_path(who.tenant, who.user, "disconnect"), {"remove_events": "all"}).json()[
            "events_removed"
        ]
        == 0
    )
