"""Issue 7: Outlook -> CRM through the dev host, Azurite and the Graph emulator acting as the user
in Outlook: reschedules and deletions reach the CRM by callback with the exact times, our own
writes never do, lost notifications are caught by the sweep, an expired delta token resyncs
without duplicates, subscriptions are renewed and recreated, and a mass deletion is held."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
import requests

from shared.flows.connect import SUBSCRIPTION_MINUTES
from shared.rules.fanout import EXPIRY_JITTER
from shared.store import links, tables
from tests.conftest import Stack, wait_until
from tests.e2e.push.conftest import DAY as BASE_DAY
from tests.e2e.push.conftest import CrmUser, connect_user, ours, status, synced, upsert, user_path, writes
from tests.e2e.push.openapi_contract import check_callback
from tests.support.clock import days_from_today

# Every date below is computed from the clock: the base activity's DAY (tests.e2e.push.conftest,
# inside the sync window and on standard time in Europe and America, as are the week after it) and
# days after it. Written as calendar dates they would fall out of the delta window one day.
DAY = date.fromisoformat(BASE_DAY)


def day(n: int) -> str:
    """The n-th day after the base activity's, ``YYYY-MM-DD``."""
    return (DAY + timedelta(days=n)).isoformat()

pytestmark = pytest.mark.e2e
CHANGED = "activity.changed_in_outlook"
DELETED = "activity.deleted_in_outlook"


@pytest.fixture()
def ana(stack: Stack) -> CrmUser:
    return connect_user(stack)


def of(stack: Stack, who: CrmUser, kind: str) -> list[dict[str, Any]]:
    found = [c for c in stack.callbacks.of_type(kind) if c["user_id"] == who.user]
    for callback in found:
        check_callback(callback)
    return found


def reconciled_after(stack: Stack, who: CrmUser, moment: str | None) -> str:
    """Wait for a reconcile that finished after ``moment`` (its last_reconcile_at)."""
    return wait_until(
        lambda: (s := status(stack, who)["last_reconcile_at"]) and (moment is None or s > moment) and s,
        what="a reconcile pass",
    )


def pushed(stack: Stack, who: CrmUser, activity_id: str = "act-1", **overrides: Any) -> dict[str, Any]:
    """Push one activity and wait until it is in Outlook and our own echo has been reconciled."""
    before = status(stack, who)["last_reconcile_at"]
    upsert(stack, who, id=activity_id, **overrides)
    synced(stack, who, activity_id, overrides.get("version", 1))
    reconciled_after(stack, who, before)  # the notification of our own write was read
    stack.wait_until_idle()  # and whatever it queued (a callback would be a bug) delivered
    stored = links.get(stack.storage, who.tenant, who.user, activity_id)
    return next(e for e in ours(stack, who) if e["id"] == stored.link.outlook_event_id)


def request_reconcile(stack: Stack, who: CrmUser, **body: Any) -> None:
    answer = stack.crm.post(user_path(who.tenant, who.user, "reconcile"), body)
    assert answer.status_code == 202, answer.text


def test_a_validation_token_with_markup_comes_back_as_plain_text_only(stack: Stack) -> None:
    token = "<script>alert(1)</script> Validation: Testing client application reachability"
    for path in ("/api/graph/notifications", "/api/graph/lifecycle"):
        answer = requests.post(
            f"{stack.url}{path}?validationToken={quote(token, safe='')}",
            headers={"Content-Type": "text/plain; charset=utf-8"},
            timeout=10,
        )
        assert answer.status_code == 200
        assert answer.headers["Content-Type"].split(";")[0] == "text/plain"
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert answer.content == token.encode()  # exactly the decoded token, nothing around it


def test_a_wrong_client_state_is_ignored_but_answered_202(stack: Stack, ana: CrmUser) -> None:
    subscription = stack.control.subscriptions(ana.oid)[0]
    forged = {
        "value": [{"subscriptionId": subscription["id"], "clientState": "guess", "changeType": "updated"}]
    }
    answer = requests.post(f"{stack.url}/api/graph/notifications", json=forged, timeout=10)
    assert answer.status_code == 202
    stack.wait_until_idle()
    row = stack.storage.table(tables.RECONCILE_PENDING).query_entities(
        "PartitionKey eq @pk", parameters={"pk": tables.key(ana.tenant, ana.user)}
    )
    assert list(row) == []  # no reconcile was requested


def test_a_move_in_outlook_is_reported_with_the_exact_times_and_our_writes_are_not(
    stack: Stack, ana: CrmUser
) -> None:
    event = pushed(stack, ana)
    assert of(stack, ana, CHANGED) == [] and of(stack, ana, DELETED) == []  # our own write: no callback
    patches = writes(stack, ana, "PATCH")

    # The user drags it to the next morning, in a Pacific-time Outlook.
    stack.control.user_move_event(
        ana.oid,
        event["id"],
        start={"dateTime": f"{day(1)}T07:30:00", "timeZone": "Pacific Standard Time"},
        end={"dateTime": f"{day(1)}T08:15:00", "timeZone": "Pacific Standard Time"},
    )
    changed = stack.callbacks.wait_for(CHANGED)
    stack.wait_until_idle()
    times = ("activity_id", "start", "end", "all_day")  # the fields this callback had before issue 16
    assert [{k: c["data"][k] for k in times} for c in of(stack, ana, CHANGED)] == [
        {
            "activity_id": "act-1",
            "start": f"{day(1)}T15:30:00Z",  # Pacific standard time is UTC-8
            "end": f"{day(1)}T16:15:00Z",
            "all_day": False,
        }
    ]
    assert set(changed[0]["data"]["changes"]) == {"start", "end"}
    assert changed[0]["tenant_id"] == ana.tenant

    # Reported once: the link holds the user's changeKey; nothing was written back to Outlook.
    stored = links.get(stack.storage, ana.tenant, ana.user, "act-1")
    assert stored.link.change_key == next(e for e in ours(stack, ana) if e["id"] == event["id"])["changeKey"]
    before = status(stack, ana)["last_reconcile_at"]
    request_reconcile(stack, ana)
    reconciled_after(stack, ana, before)
    stack.wait_until_idle()  # the pass's callbacks, if any, are delivered after it ends
    assert len(of(stack, ana, CHANGED)) == 1
    assert writes(stack, ana, "PATCH") == patches

    # A subject edit in Outlook is not a reschedule: nothing is reported.
    stack.control.user_update_event(ana.oid, event["id"], {"subject": "Mi propio título"})
    wait_until(
        lambda: (
            links.get(stack.storage, ana.tenant, ana.user, "act-1").extra.get("ol_key")
            == next(e for e in ours(stack, ana) if e["id"] == event["id"])["changeKey"]
        ),
        what="the edit to be read",
    )
    stack.wait_until_idle()
    assert len(of(stack, ana, CHANGED)) == 1


def test_a_deletion_in_outlook_is_reported_and_a_newer_crm_version_creates_it_again(
    stack: Stack, ana: CrmUser
) -> None:
    event = pushed(stack, ana)
    stack.control.user_delete_event(ana.oid, event["id"])
    deleted = stack.callbacks.wait_for(DELETED)
    assert [c["data"] for c in deleted if c["user_id"] == ana.user] == [{"activity_id": "act-1"}]
    stored = wait_until(
        lambda: (
            (s := links.get(stack.storage, ana.tenant, ana.user, "act-1")).link.outlook_event_id is None and s
        ),
        what="the link to be detached",
    )
    assert stored.extra.get("deleted_in_outlook_at")
    stack.wait_until_idle()
    assert len(of(stack, ana, DELETED)) == 1 and of(stack, ana, CHANGED) == []

    upsert(stack, ana, version=2, subject="Reprogramada desde el CRM")
    synced(stack, ana, "act-1", 2)
    again = ours(stack, ana)
    assert len(again) == 1 and again[0]["id"] != event["id"]
    assert again[0]["subject"] == "Reprogramada desde el CRM"


def held_in_graph(stack: Stack, rule: dict[str, Any]) -> None:
    """Wait until a request matched by the ``hold`` fault ``rule`` waits inside the emulator (it
    waits there until ``release_holds``, 30 s at most)."""
    wait_until(
        lambda: any(f["id"] == rule["id"] and f["hits"] == 1 for f in stack.control.faults()),
        what="the retry held in Graph",
    )


@pytest.mark.parametrize("first_reader", ["reconcile", "push retry"])
def test_a_crm_reschedule_whose_answer_was_lost_is_never_reported_as_the_users_move(
    stack: Stack, ana: CrmUser, first_reader: str
) -> None:
    """Found by the wider chaos run. Graph applied our PATCH of v2 but its answer was lost, so the
    link still holds v1 when the event is read again: by the reconcile its notification wakes, or
    by the push's retry, whose If-Match gets a 412. Each must take the change for our own write
    (the event's crmVersion, 2, is newer than the link's), not for the user's move."""
    event = pushed(stack, ana)
    reconciled = status(stack, ana)["last_reconcile_at"]
    stack.control.add_fault("lost_response", count=1, method="PATCH", path_contains=event["id"], mailbox=ana.oid)
    if first_reader == "reconcile":  # the retry waits inside Graph until the reconcile has read the event
        retry = stack.control.add_fault("hold", count=1, method="PATCH", path_contains=event["id"], mailbox=ana.oid)
    else:  # the retry reads the event first; the reconcile reads it after
        stack.control.set_notifications(paused=True)

    upsert(stack, ana, version=2, start=f"{day(1)}T08:00:00", end=f"{day(1)}T09:00:00")
    if first_reader == "reconcile":
        held_in_graph(stack, retry)
        reconciled_after(stack, ana, reconciled)
        assert links.get(stack.storage, ana.tenant, ana.user, "act-1").link.version == 1  # not stored yet
        stack.control.release_holds()
    synced(stack, ana, "act-1", 2, timeout=60)
    stack.control.set_notifications(paused=False)
    stack.wait_until_idle()

    assert of(stack, ana, CHANGED) == [] and of(stack, ana, DELETED) == []
    shown = next(e for e in ours(stack, ana) if e["id"] == event["id"])
    stored = links.get(stack.storage, ana.tenant, ana.user, "act-1")
    assert (stored.link.version, stored.link.change_key) == (2, shown["changeKey"])
    assert shown["startUtc"].startswith(f"{day(1)}T13:00:00")  # 08:00 in Bogotá: the CRM's time
    assert len(ours(stack, ana)) == 1


def test_a_crm_cancel_whose_delete_answer_was_lost_is_never_reported_as_the_users_deletion(
    stack: Stack, ana: CrmUser
) -> None:
    """Found by the full chaos run (a cancel, or a CRM deletion, reported back as "deleted in
    Outlook"). Graph deleted our event but the answer was lost, and the reconcile its notification
    woke reads the event gone while the link still names it. The link's write-ahead "deleting"
    mark says it is ours."""
    event = pushed(stack, ana)
    reconciled = status(stack, ana)["last_reconcile_at"]
    stack.control.add_fault("lost_response", count=1, method="DELETE", path_contains=event["id"], mailbox=ana.oid)
    # The retry waits inside Graph until the reconcile has read the deletion.
    retry = stack.control.add_fault("hold", count=1, method="DELETE", path_contains=event["id"], mailbox=ana.oid)

    upsert(stack, ana, version=2, status="cancelled")
    held_in_graph(stack, retry)
    reconciled_after(stack, ana, reconciled)
    assert links.get(stack.storage, ana.tenant, ana.user, "act-1").link.version == 1  # not stored yet
    stack.control.release_holds()
    wait_until(
        lambda: links.get(stack.storage, ana.tenant, ana.user, "act-1").link.version == 2,
        what="the cancel to be applied",
        timeout=60,
    )
    stack.wait_until_idle()

    assert of(stack, ana, DELETED) == [] and of(stack, ana, CHANGED) == []
    synced(stack, ana, "act-1", 2)  # the CRM hears the cancel is shown (no event)
    assert ours(stack, ana) == []
    stored = links.get(stack.storage, ana.tenant, ana.user, "act-1")
    assert (stored.link.version, stored.link.outlook_event_id) == (2, None)
    assert links.DELETING not in stored.extra and "deleted_in_outlook_at" not in stored.extra


def move_unnoticed(stack: Stack, who: CrmUser, event: dict[str, Any], day: str) -> None:
    """The user moves the event to 09:00 UTC on ``day`` and Graph's notification of it is lost."""
    stack.control.set_notifications(drop_probability=1.0)
    mark = stack.control.deliveries()["last_seq"]
    stack.control.user_move_event(
        who.oid,
        event["id"],
        start={"dateTime": f"{day}T09:00:00", "timeZone": "UTC"},
        end={"dateTime": f"{day}T10:00:00", "timeZone": "UTC"},
    )
    dropped = stack.control.deliveries(after=mark, at_least=1, timeout=10, mailbox=who.oid, outcome="dropped")
    stack.control.set_notifications(drop_probability=0.0)
    # Really lost: Graph dropped the notification of this very event, and sent nothing else about it.
    assert [d["payload"]["value"][0]["resourceData"]["id"] for d in dropped["value"]] == [event["id"]]
    sent = stack.control.deliveries(after=mark, mailbox=who.oid)["value"]
    assert [d["outcome"] for d in sent] == ["dropped"], sent
    stack.wait_until_idle()  # so a test's "nothing reported yet" is not just "not yet""


def test_lost_notifications_are_caught_by_the_sweep(stack: Stack, ana: CrmUser) -> None:
    event = pushed(stack, ana)
    move_unnoticed(stack, ana, event, day(5))
    # Six hours and more since this user's last reconcile: the sweep takes them first.
    stack.storage.table(tables.CONNECTIONS).update_entity(
        {
            "PartitionKey": tables.key(ana.tenant),
            "RowKey": tables.key(ana.user),
            "last_reconcile_at": (datetime.now(UTC) - timedelta(hours=7)).isoformat().replace("+00:00", "Z"),
        }
    )  # merge: the rest of the row stays
    answer = requests.post(f"{stack.url}/admin/functions/reconcile_sweep", json={}, timeout=10)
    assert answer.status_code == 202
    stack.callbacks.wait_for(CHANGED)
    stack.wait_until_idle()
    assert [c["data"]["start"] for c in of(stack, ana, CHANGED)] == [f"{day(5)}T09:00:00Z"]


def test_an_expired_delta_token_resyncs_without_duplicate_callbacks(stack: Stack, ana: CrmUser) -> None:
    first = pushed(stack, ana, "act-1")
    second = pushed(stack, ana, "act-2", start=f"{day(3)}T10:00:00", end=f"{day(3)}T11:00:00")
    stack.control.user_move_event(
        ana.oid,
        first["id"],
        start={"dateTime": f"{day(0)}T18:00:00", "timeZone": "UTC"},
        end={"dateTime": f"{day(0)}T19:00:00", "timeZone": "UTC"},
    )
    stack.callbacks.wait_for(CHANGED)
    stack.control.invalidate_delta_tokens(ana.oid)
    stack.control.user_move_event(
        ana.oid,
        second["id"],
        start={"dateTime": f"{day(4)}T10:00:00", "timeZone": "UTC"},
        end={"dateTime": f"{day(4)}T11:00:00", "timeZone": "UTC"},
    )
    stack.callbacks.wait_for(CHANGED, count=2)
    before = status(stack, ana)["last_reconcile_at"]
    request_reconcile(stack, ana)  # one more pass over the new round: still nothing new
    reconciled_after(stack, ana, before)
    stack.wait_until_idle()
    reported = sorted((c["data"]["activity_id"], c["data"]["start"]) for c in of(stack, ana, CHANGED))
    assert reported == [("act-1", f"{day(0)}T18:00:00Z"), ("act-2", f"{day(4)}T10:00:00Z")]
    assert of(stack, ana, DELETED) == []


def test_a_subscription_near_expiry_is_renewed_by_the_timer(stack: Stack, ana: CrmUser) -> None:
    before = stack.control.subscriptions(ana.oid)[0]
    soon = (datetime.now(UTC) + timedelta(days=1)).isoformat().replace("+00:00", "Z")
    stack.storage.table(tables.CONNECTIONS).update_entity(
        {
            "PartitionKey": tables.key(ana.tenant),
            "RowKey": tables.key(ana.user),
            "subscription_expires_at": soon,
        }
    )
    stack.control.advance_clock(days=5, hours=23)  # Graph's side: about a day left as well
    answer = requests.post(f"{stack.url}/admin/functions/renew_subscriptions", json={}, timeout=10)
    assert answer.status_code == 202
    renewed = wait_until(lambda: status(stack, ana)["subscription_expires_at"] != soon and status(stack, ana))
    after = stack.control.subscriptions(ana.oid)
    assert [s["id"] for s in after] == [before["id"]]  # the same subscription, extended
    # Renewed (PATCHed) to a new expiry: the full lifetime from now less up to a day of jitter, so it
    # is not necessarily later than the one the sign-in set moments ago; status shows Graph's answer.
    assert after[0]["expirationDateTime"] != before["expirationDateTime"]
    assert after[0]["expirationDateTime"][:19] == renewed["subscription_expires_at"][:19]
    left = datetime.fromisoformat(renewed["subscription_expires_at"].replace("Z", "+00:00")) - datetime.now(
        UTC
    )
    # The full lifetime less at most a day of jitter (renewals of users who connected together spread).
    assert left > timedelta(minutes=SUBSCRIPTION_MINUTES) - EXPIRY_JITTER - timedelta(minutes=5)
    assert renewed["state"] == "connected"


def test_a_removed_subscription_is_recreated(stack: Stack, ana: CrmUser) -> None:
    old = stack.control.subscriptions(ana.oid)[0]["id"]
    stack.control.send_lifecycle(old, "subscriptionRemoved")
    fresh = wait_until(
        lambda: [s for s in stack.control.subscriptions(ana.oid) if s["id"] != old], what="a new subscription"
    )
    assert len(fresh) == 1 and fresh[0]["lifecycleNotificationUrl"] == f"{stack.url}/api/graph/lifecycle"
    wait_until(lambda: status(stack, ana)["subscription_expires_at"] == fresh[0]["expirationDateTime"])
    # The new subscription works: a change in Outlook still reaches the CRM.
    event = pushed(stack, ana)
    stack.control.user_delete_event(ana.oid, event["id"])
    stack.callbacks.wait_for(DELETED)


def test_reauthorization_required_reauthorizes_the_same_subscription(stack: Stack, ana: CrmUser) -> None:
    before = stack.control.subscriptions(ana.oid)
    assert len(before) == 1

    def reauthorized() -> int:
        counted = stack.control.counters(ana.oid)["mailboxes"].get(ana.oid, {}).get("requests", {})
        return sum(
            n
            for endpoint, n in counted.items()
            if endpoint.startswith("POST /subscriptions/") and endpoint.endswith("/reauthorize")
        )

    stack.control.send_lifecycle(before[0]["id"], "reauthorizationRequired")
    wait_until(reauthorized, what="POST /subscriptions/{id}/reauthorize")
    assert [s["id"] for s in stack.control.subscriptions(ana.oid)] == [before[0]["id"]]  # not a new one
    assert status(stack, ana)["state"] == "connected"
    # It still delivers: a change in Outlook reaches the CRM.
    event = pushed(stack, ana)
    stack.control.user_delete_event(ana.oid, event["id"])
    stack.callbacks.wait_for(DELETED)


def test_missed_notifications_are_caught_by_a_reconcile(stack: Stack, ana: CrmUser) -> None:
    event = pushed(stack, ana)
    move_unnoticed(stack, ana, event, day(6))
    assert of(stack, ana, CHANGED) == []  # after the barrier in move_unnoticed

    # Graph tells us it could not deliver some notifications: the reconcile finds the move.
    stack.control.send_lifecycle(stack.control.subscriptions(ana.oid)[0]["id"], "missed")
    stack.callbacks.wait_for(CHANGED)
    stack.wait_until_idle()
    assert [c["data"]["start"] for c in of(stack, ana, CHANGED)] == [f"{day(6)}T09:00:00Z"]


def test_a_mass_deletion_is_held_flagged_and_released_on_confirmation(stack: Stack, ana: CrmUser) -> None:
    count = 22  # over 20 and over half of the linked events
    for i in range(count):
        upsert(
            stack,
            ana,
            id=f"act-{i}",
            start=f"{days_from_today(i + 2)}T10:00:00",  # inside the window, in the future
            end=f"{days_from_today(i + 2)}T11:00:00",
        )
    for i in range(count):
        synced(stack, ana, f"act-{i}", 1)
    # The reconcile our own creates' notifications start must be over before the user deletes: one
    # that read delta before the deletions and finished after would pass for the requested one.
    stack.wait_until_idle()
    stack.control.set_notifications(drop_probability=1.0)
    for event in ours(stack, ana):
        stack.control.user_delete_event(ana.oid, event["id"])
    before = status(stack, ana)["last_reconcile_at"]
    request_reconcile(stack, ana)
    reconciled_after(stack, ana, before)
    stack.wait_until_idle()

    now = status(stack, ana)
    assert now["held_deletions"] == count
    assert now["recent_errors"][0]["kind"] == "mass_deletion"
    assert of(stack, ana, DELETED) == []
    assert all(s.link.outlook_event_id for s in links.for_user(stack.storage, ana.tenant, ana.user))

    request_reconcile(stack, ana, confirm_deletions=True)
    stack.callbacks.wait_for(DELETED, count=count)
    stack.wait_until_idle()
    assert sorted(c["data"]["activity_id"] for c in of(stack, ana, DELETED)) == sorted(
        f"act-{i}" for i in range(count)
    )
    wait_until(lambda: status(stack, ana)["held_deletions"] == 0, what="the hold to be released")
    assert not any(s.link.outlook_event_id for s in links.for_user(stack.storage, ana.tenant, ana.user))
