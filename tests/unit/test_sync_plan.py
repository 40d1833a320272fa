from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from shared.rules.errors import PermanentError
from shared.rules.event_render import VERSION_PROPERTY_ID, property_value, transaction_id
from shared.rules.model import ActivityDeleted, ActivityType, ActivityTypeUpdated
from shared.rules.sync_plan import (
    ACTIVITY_HIDDEN,
    CANCELLED,
    COMPLETED,
    COMPLETED_KEPT,
    DELETED,
    NOT_CONNECTED,
    OWNER_CHANGED,
    STALE,
    TYPE_CHANGED,
    TYPE_HIDDEN,
    UNCHANGED,
    Create,
    Decision,
    Delete,
    Link,
    MassDeletionRefused,
    Nothing,
    Replay,
    Update,
    UserContext,
    adopt,
    after,
    after_lookup,
    backfill_category,
    check_mass_deletion,
    pending_deletions,
    plan_deletion,
    plan_type_update,
    plan_upsert,
)
from tests.unit.activity_builders import activity

USER = UserContext("tenant-1", "user-1", connected=True, mailbox_time_zone="Romance Standard Time", locale="es")
OFFLINE = replace(USER, connected=False)
A = activity(version=5)

LINK_STATES = {
    "none": None,
    "event": Link("act-1", 5, "evt-1", "old-hash", "ck-1", generation=1, type_id="type-call"),
    "removed": Link("act-1", 5, None, None, None, generation=1, type_id="type-call"),
    "tombstone": Link("act-1", 5, None, None, None, generation=1, tombstone=True, type_id="type-call"),
    "tombstone_pending": Link("act-1", 5, "evt-1", "old-hash", "ck-1", generation=1, tombstone=True,
                              type_id="type-call"),
}
VERSIONS = {"lower": 4, "equal": 5, "higher": 6}


def expected(status: str, shown: bool, type_shown: bool, state: str, order: str, connected: bool,
             policy: str, replay: bool) -> tuple[type, str | None]:
    """design §4, spelled out independently of the implementation."""
    if not connected:
        return Nothing, NOT_CONNECTED
    if state.startswith("tombstone") and order in ("lower", "equal"):
        return Nothing, DELETED
    if state != "none" and (order == "lower" or (order == "equal" and not replay)):
        return Nothing, STALE
    has_event = state in ("event", "tombstone_pending")
    reason = (CANCELLED if status == "cancelled" else ACTIVITY_HIDDEN if not shown
              else TYPE_HIDDEN if not type_shown else COMPLETED if status == "completed" else None)
    if reason == COMPLETED and policy == "keep" and has_event:
        return Nothing, COMPLETED_KEPT
    if reason:
        return (Delete, reason) if has_event else (Nothing, reason)
    return (Update, None) if has_event else (Create, None)


CASES = [
    (status, shown, type_shown, state, order, connected, policy, replay)
    for status, shown, type_shown, state, connected, policy, replay in itertools.product(
        ("planned", "completed", "cancelled"), (True, False), (True, False), LINK_STATES, (True, False),
        ("keep", "remove"), (False, True))
    for order in (["higher"] if state == "none" else VERSIONS)
]


@pytest.mark.parametrize(("status", "shown", "type_shown", "state", "order", "connected", "policy", "replay"), CASES)
def test_transition_table(status: str, shown: bool, type_shown: bool, state: str, order: str, connected: bool,
                          policy: str, replay: bool) -> None:
    link = LINK_STATES[state]
    version = VERSIONS[order]
    a = replace(A, version=version, status=status, show_in_calendar=shown,
                type=ActivityType("type-call", "Llamada", type_shown))
    d = plan_upsert(a, link, USER if connected else OFFLINE, completed_activities=policy, replay=replay)

    kind, reason = expected(status, shown, type_shown, state, order, connected, policy, replay)
    assert type(d.action) is kind
    if reason is not None:
        assert d.action.reason == reason  # type: ignore[union-attr]
    if kind is Nothing and reason in (NOT_CONNECTED, STALE, DELETED):
        assert d.link == link  # ignored: nothing recorded
        return
    assert d.link is not None
    assert (d.link.activity_id, d.link.version, d.link.tombstone, d.link.type_id) == ("act-1", version, False,
                                                                                     "type-call")
    if kind is Create:
        generation = (link.generation if link else 0) + 1
        assert d.link.generation == generation and d.link.outlook_event_id is None
        assert d.action.transaction_id == transaction_id("tenant-1", "user-1", "act-1", generation)
        assert d.action.lookup_value == property_value("tenant-1", "act-1")
        assert d.link.content_hash == d.action.content_hash
    elif kind is Update:
        assert d.action.event_id == "evt-1" and d.link.outlook_event_id == "evt-1"
        assert d.link.content_hash == d.action.content_hash != "old-hash"
        assert "transactionId" not in d.action.patch
        assert d.action.patch["singleValueExtendedProperties"] == [
            {"id": VERSION_PROPERTY_ID, "value": str(version)}]
    elif kind is Delete:
        assert d.action.event_id == "evt-1"
        assert (d.link.outlook_event_id, d.link.content_hash, d.link.change_key) == (None, None, None)
    elif reason == COMPLETED_KEPT:
        assert d.link.outlook_event_id == "evt-1" and d.link.content_hash == "old-hash"  # untouched
    else:
        assert d.link.outlook_event_id is None


def apply(decision: Decision, event_id: str = "evt-new", change_key: str = "ck") -> Link | None:
    return after(decision, event_id=event_id, change_key=change_key)


def test_lifecycle_create_unchanged_update_remove_and_create_again() -> None:
    d1 = plan_upsert(activity(version=1), None, USER)
    assert isinstance(d1.action, Create)
    link = apply(d1, "evt-1", "ck-1")
    assert link is not None and link.outlook_event_id == "evt-1" and link.change_key == "ck-1"

    d2 = plan_upsert(activity(version=2), link, USER)  # a new version with the same visible content
    assert d2.action == Nothing(UNCHANGED)
    link = apply(d2)
    assert link is not None and link.version == 2 and link.change_key == "ck-1"

    d3 = plan_upsert(activity(version=3, subject="Call Ana (moved)"), link, USER)
    assert isinstance(d3.action, Update) and d3.action.patch["subject"] == "Call Ana (moved)"
    link = apply(d3, change_key="ck-2")

    d4 = plan_upsert(activity(version=4, status="cancelled"), link, USER)
    assert d4.action == Delete("evt-1", CANCELLED)
    link = apply(d4)

    d5 = plan_upsert(activity(version=5), link, USER)  # planned again
    assert isinstance(d5.action, Create) and isinstance(d1.action, Create)
    assert d5.action.transaction_id != d1.action.transaction_id
    assert d5.link is not None and d5.link.generation == 2


def test_a_retried_create_plans_the_same_transaction_id() -> None:
    first = plan_upsert(activity(version=1), None, USER)
    again = plan_upsert(activity(version=1), None, USER)
    assert first == again


def test_a_create_found_by_its_property_is_adopted_not_duplicated() -> None:
    created = plan_upsert(activity(version=1), None, USER)
    adopted = adopt(created, "evt-found")
    assert isinstance(adopted.action, Update) and adopted.action.event_id == "evt-found"
    assert "transactionId" not in adopted.action.patch and adopted.action.patch["subject"]
    assert adopted.link is not None and adopted.link.outlook_event_id == "evt-found"
    assert adopted.link.generation == 1 and adopted.link.content_hash == adopted.action.content_hash
    with pytest.raises(ValueError):
        adopt(plan_upsert(activity(version=1, status="cancelled"), None, USER), "evt-found")


def _found(event_id: str, change_key: str, written: int | None) -> dict[str, object]:
    """An event of ours as a lookup answers it: the version our last write put on it, if any."""
    props = [] if written is None else [{"id": VERSION_PROPERTY_ID, "value": str(written)}]
    return {"id": event_id, "changeKey": change_key, "singleValueExtendedProperties": props}


@pytest.mark.parametrize(
    ("found", "outcome"),
    [
        ([], "create"),
        ([_found("evt-a", "ck-a", 2)], "adopt evt-a if-match ck-a, delete []"),
        ([_found("evt-a", "ck-a", 1), _found("evt-b", "ck-b", None)], "adopt evt-a if-match ck-a, delete ['evt-b']"),
        ([_found("evt-a", "ck-a", 3)], "leave alone"),  # a newer version's event, its link not stored yet
        ([_found("evt-a", "ck-a", 2), _found("evt-b", "ck-b", 3)], "leave alone"),  # nor its twin deleted
    ],
)
def test_what_a_lost_create_does_with_what_its_lookup_found(found, outcome) -> None:
    """Shared by the push and the Sync: version 2's create whose answer may have been lost."""
    created = plan_upsert(activity(version=2), None, USER)
    decision, duplicates = after_lookup(created, found)
    if decision is None:
        said = "leave alone"
    elif isinstance(decision.action, Create):
        said = "create"
    else:
        assert isinstance(decision.action, Update) and decision.link is not None
        assert decision.link.outlook_event_id == decision.action.event_id
        said = f"adopt {decision.action.event_id} if-match {decision.link.change_key}, delete {duplicates}"
    assert said == outcome


def test_cancelled_before_planned_arrives_late_never_creates() -> None:
    d = plan_upsert(activity(version=2, status="cancelled"), None, USER)
    assert d.action == Nothing(CANCELLED) and d.link is not None and d.link.version == 2
    late = plan_upsert(activity(version=1), d.link, USER)
    assert late.action == Nothing(STALE)


def test_deletion_leaves_a_tombstone_that_late_upserts_cannot_cross() -> None:
    link = apply(plan_upsert(activity(version=3), None, USER), "evt-1")
    d = plan_deletion(ActivityDeleted("act-1", "user-1", 3), link, USER)
    assert d.action == Delete("evt-1", DELETED)
    assert d.link is not None and d.link.tombstone and d.link.outlook_event_id is None
    for version in (1, 3):
        assert plan_upsert(activity(version=version), d.link, USER).action == Nothing(DELETED)
        assert plan_upsert(activity(version=version), d.link, USER, replay=True).action == Nothing(DELETED)
    restored = plan_upsert(activity(version=4), d.link, USER)  # strictly newer: restored in the CRM
    assert isinstance(restored.action, Create) and restored.link is not None
    assert not restored.link.tombstone and restored.link.generation == 2


def test_deletion_before_any_upsert() -> None:
    d = plan_deletion(ActivityDeleted("act-1", "user-1", 2), None, USER)
    assert d.action == Nothing(DELETED) and d.link == Link("act-1", 2, tombstone=True)
    assert plan_upsert(activity(version=2), d.link, USER).action == Nothing(DELETED)


def test_deletion_is_idempotent_and_stale_deletions_are_ignored() -> None:
    tomb = Link("act-1", 4, tombstone=True)
    again = plan_deletion(ActivityDeleted("act-1", "user-1", 4), tomb, USER)
    assert again.action == Nothing(DELETED) and again.link == tomb
    older = plan_deletion(ActivityDeleted("act-1", "user-1", 2), tomb, USER)
    assert older.action == Nothing(DELETED) and older.link == tomb  # never lowers the version
    live = Link("act-1", 6, "evt-1", "h", generation=1)
    stale = plan_deletion(ActivityDeleted("act-1", "user-1", 5), live, USER)
    assert stale.action == Nothing(STALE) and stale.link == live


def test_deletion_while_disconnected_is_finished_after_reconnecting() -> None:
    live = Link("act-1", 3, "evt-1", "h", "ck", generation=1)
    d = plan_deletion(ActivityDeleted("act-1", "user-1", 4), live, OFFLINE)
    assert d.action == Nothing(NOT_CONNECTED)
    assert d.link == replace(live, version=4, tombstone=True)  # the event id is kept for later
    assert pending_deletions([d.link], OFFLINE) == []
    [cleanup] = pending_deletions([d.link, live, Link("x", 1, tombstone=True)], USER)
    assert cleanup.action == Delete("evt-1", DELETED) and cleanup.link is not None
    assert cleanup.link.outlook_event_id is None and cleanup.link.tombstone
    # a duplicate deletion after reconnecting also removes it
    assert plan_deletion(ActivityDeleted("act-1", "user-1", 4), d.link, USER).action == Delete("evt-1", DELETED)


def test_owner_change_removes_the_event_from_the_previous_owner() -> None:
    link = Link("act-1", 5, "evt-1", "h", generation=1)
    d = plan_upsert(activity(version=6, owner_user_id="user-2"), link, USER)
    assert d.action == Delete("evt-1", OWNER_CHANGED)
    new_owner = replace(USER, user_id="user-2")
    assert isinstance(plan_upsert(activity(version=6, owner_user_id="user-2"), None, new_owner).action, Create)


def test_latest_type_record_overrides_the_copy_inside_the_activity() -> None:
    link = Link("act-1", 5, "evt-1", "h", generation=1)
    off = ActivityType("type-call", "Llamada", False)
    assert plan_upsert(activity(version=6), link, USER, activity_type=off).action == Delete("evt-1", TYPE_HIDDEN)
    on = ActivityType("type-call", "Llamada", True)
    payload_says_off = activity(version=6, type={"id": "type-call", "name": "Llamada", "show_in_calendar": False})
    d = plan_upsert(payload_says_off, None, USER, activity_type=on)
    assert isinstance(d.action, Create)


def test_activity_moved_to_another_type_records_it() -> None:
    link = Link("act-1", 5, "evt-1", "h", generation=1, type_id="type-call")
    d = plan_upsert(activity(version=6, type={"id": "type-visit", "name": "Visita", "show_in_calendar": True}),
                    link, USER)
    assert isinstance(d.action, Update) and d.action.patch["categories"] == ["Visita"]
    assert d.link is not None and d.link.type_id == "type-visit"


def test_replay_of_the_same_version_heals_but_a_plain_duplicate_is_ignored() -> None:
    created = plan_upsert(activity(version=5), None, USER)
    link = apply(created, "evt-1")
    assert plan_upsert(activity(version=5), link, USER).action == Nothing(STALE)
    assert plan_upsert(activity(version=5), link, USER, replay=True).action == Nothing(UNCHANGED)
    moved = replace(USER, mailbox_time_zone="Pacific Standard Time")  # the user changed Outlook's zone
    d = plan_upsert(activity(version=5), link, moved, replay=True)
    assert isinstance(d.action, Update) and d.action.patch["start"]["timeZone"] == "Pacific Standard Time"
    gone = replace(link, outlook_event_id=None, content_hash=None)  # removed while the type was hidden
    assert isinstance(plan_upsert(activity(version=5), gone, USER, replay=True).action, Create)


def test_completed_keep_and_remove() -> None:
    link = Link("act-1", 5, "evt-1", "h", generation=1)
    done = activity(version=6, status="completed", subject="changed after completion")
    kept = plan_upsert(done, link, USER)
    assert kept.action == Nothing(COMPLETED_KEPT) and kept.link == replace(link, version=6, type_id="type-call")
    assert plan_upsert(done, link, USER, completed_activities="remove").action == Delete("evt-1", COMPLETED)
    assert plan_upsert(done, None, USER).action == Nothing(COMPLETED)  # never created for a completed one
    reopened = plan_upsert(activity(version=7), kept.link, USER)
    assert isinstance(reopened.action, Update)


def test_notes_reach_the_decision() -> None:
    d = plan_upsert(activity(version=1, start="2025-03-30T02:30:00", end="2025-03-30T03:30:00"), None, USER)
    assert [n.kind for n in d.notes] == ["dst_gap"]


# --- activity_type.updated ------------------------------------------------------------------------

TYPE_LINKS = [
    Link("a1", 1, "e1", "h", generation=1, type_id="type-call"),
    Link("a2", 1, None, None, generation=1, type_id="type-call"),
    Link("a3", 1, "e3", "h", generation=1, type_id="type-visit"),
    Link("a4", 1, None, None, tombstone=True, type_id="type-call"),
    Link("a5", 1, "e5", "h", generation=2, type_id="type-call"),
]


def test_type_flag_off_removes_that_types_events() -> None:
    decisions = plan_type_update(ActivityTypeUpdated("type-call", "Llamada", False), TYPE_LINKS, USER)
    assert [d.action for d in decisions] == [Delete("e1", TYPE_HIDDEN), Delete("e5", TYPE_HIDDEN)]
    assert all(d.link is not None and d.link.outlook_event_id is None and d.link.version == 1 for d in decisions)
    assert plan_type_update(ActivityTypeUpdated("type-call", "Llamada", False), TYPE_LINKS, OFFLINE) == []


def test_type_flag_on_or_rename_asks_for_replays() -> None:
    decisions = plan_type_update(ActivityTypeUpdated("type-call", "Llamada!", True), TYPE_LINKS, USER)
    assert [d.action for d in decisions] == [Replay("a1", TYPE_CHANGED), Replay("a2", TYPE_CHANGED),
                                            Replay("a5", TYPE_CHANGED)]
    assert [d.link for d in decisions] == [TYPE_LINKS[0], TYPE_LINKS[1], TYPE_LINKS[4]]


# --- mass-deletion guard --------------------------------------------------------------------------

def deletes(n: int) -> list[Decision]:
    return [Decision(Delete(f"e{i}", TYPE_HIDDEN), None) for i in range(n)] + [Decision(Nothing(UNCHANGED), None)]


@pytest.mark.parametrize(("n", "linked", "refused"), [
    (20, 20, False),   # all of them, but not more than 20
    (21, 42, False),   # more than 20, but exactly half
    (21, 41, True),
    (100, 150, True),
    (100, 201, False),
    (0, 0, False),
])
def test_mass_deletion_guard(n: int, linked: int, refused: bool) -> None:
    if refused:
        with pytest.raises(MassDeletionRefused) as caught:
            check_mass_deletion(deletes(n), linked)
        assert isinstance(caught.value, PermanentError) and caught.value.code == "mass_deletion_guard"
        assert (caught.value.deletes, caught.value.linked) == (n, linked)
        check_mass_deletion(deletes(n), linked, confirmed=True)
    else:
        check_mass_deletion(deletes(n), linked)


def test_mass_deletion_thresholds_are_parameters() -> None:
    with pytest.raises(MassDeletionRefused):
        check_mass_deletion(deletes(3), 4, min_count=2, max_share=0.5)


# --- helpers ---------------------------------------------------------------------------------------

def test_after_fills_in_what_graph_answered() -> None:
    created = plan_upsert(activity(version=1), None, USER)
    with pytest.raises(ValueError):
        after(created)
    link = after(created, event_id="evt-9", change_key="ck-9")
    assert link is not None and (link.outlook_event_id, link.change_key) == ("evt-9", "ck-9")
    removed = plan_upsert(activity(version=2, status="cancelled"), link, USER)
    assert after(removed, change_key="ignored") == removed.link


def test_backfill_categories() -> None:
    link = Link("act-1", 5, "evt-1", "h", generation=1)
    assert backfill_category(plan_upsert(activity(version=1), None, USER)) == "create"
    assert backfill_category(plan_upsert(activity(version=6), link, USER)) == "update"
    applied = after(plan_upsert(activity(version=6), link, USER), change_key="c")
    assert backfill_category(plan_upsert(activity(version=6), applied, USER, replay=True)) == "unchanged"
    assert backfill_category(plan_upsert(activity(version=7, status="cancelled"), None, USER)) == "ineligible"
    assert backfill_category(plan_upsert(activity(version=7, status="cancelled"), link, USER)) == "ineligible"
