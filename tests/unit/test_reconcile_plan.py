"""Outlook -> CRM decisions (shared/rules/reconcile_plan.py) and the delta reading of shared/flows/reconcile.py
against a fake Graph: echoes, moves, deletions, events that are not ours, all-day moves, the
mass-deletion guard, full rounds without duplicate reports, and the sweep's spreading."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from shared.flows.reconcile import ResyncNeeded, read_delta
from shared.ports import GraphResponse
from shared.rules.errors import PermanentError
from shared.rules.reconcile_plan import (
    Echo,
    Gone,
    Moved,
    Seen,
    SweepUser,
    Times,
    Touched,
    Tracked,
    Verify,
    after_read,
    callback_data,
    decide,
    held,
    missing_from_full_round,
    plan_sweep,
    sync_window,
    times_of,
)
from shared.rules.sync_plan import Link

WRITTEN = Times("2027-01-15T15:00:00Z", "2027-01-15T16:00:00Z", False)


def tracked(change_key: str = "ck-ours", observed: Times | None = WRITTEN, **kwargs: Any) -> Tracked:
    link = Link("act-1", 3, outlook_event_id="ev-1", content_hash="h", change_key=change_key)
    return Tracked(link, observed, kwargs.pop("observed_key", change_key if observed else None), **kwargs)


def graph_event(start: str, end: str, change_key: str, all_day: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "id": "ev-1",
        "changeKey": change_key,
        "isAllDay": all_day,
        "start": {"dateTime": start, "timeZone": "UTC"},
        "end": {"dateTime": end, "timeZone": "UTC"},
        **extra,
    }


def seen(event: dict[str, Any]) -> Seen:
    return Seen(event["id"], event["changeKey"], times_of(event))


# --- one item ------------------------------------------------------------------------------------------


def test_our_own_write_is_an_echo_and_reports_nothing() -> None:
    event = graph_event("2027-01-15T15:00:00.0000000", "2027-01-15T16:00:00.0000000", "ck-ours")
    assert isinstance(decide(tracked(), seen(event)), Echo)


def test_a_move_in_outlook_reports_the_exact_new_instants() -> None:
    event = graph_event("2027-01-16T08:30:00.0000000", "2027-01-16T09:45:00.0000000", "ck-user")
    decision = decide(tracked(), seen(event))
    assert isinstance(decision, Moved)
    assert callback_data(decision) == {
        "activity_id": "act-1",
        "version": 3,
        "changed_at": None,
        "changes": {
            "start": {"from": "2027-01-15T15:00:00Z", "to": "2027-01-16T08:30:00Z"},
            "end": {"from": "2027-01-15T16:00:00Z", "to": "2027-01-16T09:45:00Z"},
        },
        "start": "2027-01-16T08:30:00Z",
        "end": "2027-01-16T09:45:00Z",
        "all_day": False,
    }


def test_times_in_another_zone_are_read_as_instants() -> None:
    event = graph_event("2027-01-15T16:00:00", "2027-01-15T17:00:00", "ck-user")
    event["start"]["timeZone"] = event["end"]["timeZone"] = "Romance Standard Time"
    assert isinstance(decide(tracked(), seen(event)), Touched)  # 16:00 Madrid = 15:00 UTC: not moved


def test_a_subject_edit_or_dismissed_reminder_is_remembered_but_not_reported() -> None:
    event = graph_event("2027-01-15T15:00:00.0000000", "2027-01-15T16:00:00.0000000", "ck-user", subject="x")
    assert isinstance(decide(tracked(), seen(event)), Touched)


def test_a_resize_of_the_end_only_is_a_move() -> None:
    event = graph_event("2027-01-15T15:00:00.0000000", "2027-01-15T17:00:00.0000000", "ck-user")
    assert isinstance(decide(tracked(), seen(event)), Moved)


def test_an_all_day_move_reports_dates_with_an_exclusive_end() -> None:
    mine = tracked(observed=Times("2027-03-01", "2027-03-02", True))
    event = graph_event("2027-03-04T00:00:00.0000000", "2027-03-06T00:00:00.0000000", "ck-user", all_day=True)
    decision = decide(mine, seen(event))
    assert isinstance(decision, Moved)
    data = callback_data(decision)
    assert {k: data[k] for k in ("activity_id", "start", "end", "all_day")} == {
        "activity_id": "act-1",
        "start": "2027-03-04",
        "end": "2027-03-06",
        "all_day": True,
    }
    assert set(data["changes"]) == {"start", "end"}  # the same all-day flag: not a change


def test_turning_a_timed_event_into_all_day_is_a_move() -> None:
    event = graph_event("2027-01-15T00:00:00.0000000", "2027-01-16T00:00:00.0000000", "ck-user", all_day=True)
    decision = decide(tracked(), seen(event))
    assert isinstance(decision, Moved) and callback_data(decision)["all_day"] is True


def test_a_stale_observation_falls_back_to_the_end_the_push_stored() -> None:
    # We observed 15:00-16:00 at ck-1; the push then wrote (ck-2, end 18:00) and the user renamed it.
    stale = tracked(change_key="ck-2", observed=WRITTEN, observed_key="ck-1", end_utc="2027-01-15T18:00:00Z")
    renamed = graph_event("2027-01-15T17:00:00.0000000", "2027-01-15T18:00:00.0000000", "ck-3")
    moved = graph_event("2027-01-15T19:00:00.0000000", "2027-01-15T20:00:00.0000000", "ck-3")
    assert isinstance(decide(stale, seen(renamed)), Touched)
    assert isinstance(decide(stale, seen(moved)), Moved)


def test_with_nothing_to_compare_a_change_is_reported_rather_than_lost() -> None:
    unknown = tracked(observed=None)
    event = graph_event("2027-01-15T15:00:00.0000000", "2027-01-15T16:00:00.0000000", "ck-user")
    assert isinstance(decide(unknown, seen(event)), Moved)


def test_a_removed_item_is_verified_and_only_a_404_is_a_deletion() -> None:
    mine = tracked()
    decision = decide(mine, Seen("ev-1", None, None))
    assert isinstance(decision, Verify)
    assert isinstance(after_read(mine, None), Gone)
    assert callback_data(Gone(mine)) == {"activity_id": "act-1"}
    # Still there (moved out of the window or to another calendar): a move, not a deletion.
    far = graph_event("2030-01-01T10:00:00.0000000", "2030-01-01T11:00:00.0000000", "ck-user")
    assert isinstance(after_read(mine, far), Moved)
    assert isinstance(
        after_read(mine, graph_event("2027-01-15T15:00:00", "2027-01-15T16:00:00", "ck-ours")), Echo
    )


def test_a_reported_change_seen_again_is_an_echo() -> None:
    after_report = tracked(
        change_key="ck-user", observed=Times("2027-01-16T08:30:00Z", "2027-01-16T09:45:00Z", False)
    )
    event = graph_event("2027-01-16T08:30:00.0000000", "2027-01-16T09:45:00.0000000", "ck-user")
    assert isinstance(decide(after_report, seen(event)), Echo)


# --- full rounds ---------------------------------------------------------------------------------------


def test_a_full_round_only_verifies_our_events_it_should_have_listed() -> None:
    window = (datetime(2026, 12, 1, tzinfo=UTC), datetime(2028, 1, 1, tzinfo=UTC))
    inside = tracked()
    past = Tracked(
        Link("act-2", 1, outlook_event_id="ev-2", change_key="k"),
        Times("2025-01-01T10:00:00Z", "2025-01-01T11:00:00Z", False),
        "k",
    )
    listed = Tracked(Link("act-3", 1, outlook_event_id="ev-3", change_key="k"), WRITTEN, "k")
    unknown = Tracked(Link("act-4", 1, outlook_event_id="ev-4", change_key="k"))
    missing = missing_from_full_round([inside, past, listed, unknown], {"ev-3"}, window)
    assert {v.tracked.link.activity_id for v in missing} == {"act-1", "act-4"}
    assert all(isinstance(v, Verify) for v in missing)


class FakeGraph:
    """Pages of a delta round, by URL; raises what it is told to."""

    calendar_id: str | None = None
    mailbox_path: str = "me"

    def __init__(self, pages: dict[str, Any]) -> None:
        self.pages = pages
        self.calls: list[tuple[str, dict[str, str] | None]] = []

    def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        prefer: str | None = None,
        if_match: str | None = None,
    ) -> GraphResponse:
        assert prefer == "odata.maxpagesize=100"  # every page asks for big pages
        self.calls.append((path, params))
        answer = self.pages[path]
        if isinstance(answer, Exception):
            raise answer
        return GraphResponse(200, {}, answer)


def test_delta_follows_next_links_keeps_only_our_events_and_the_last_of_replays() -> None:
    mine = tracked()
    first = graph_event("2027-01-15T15:00:00.0000000", "2027-01-15T16:00:00.0000000", "ck-ours")
    replayed = graph_event("2027-01-16T15:00:00.0000000", "2027-01-16T16:00:00.0000000", "ck-user")
    theirs = {**first, "id": "someone-elses", "subject": "Dentist"}
    graph = FakeGraph(
        {
            "me/calendarView/delta": {"value": [first, theirs], "@odata.nextLink": "https://g/next"},
            "https://g/next": {
                "value": [{"id": "gone-not-ours", "@removed": {"reason": "deleted"}}, replayed]
            },
        }
    )
    graph.pages["https://g/next"]["@odata.deltaLink"] = "https://g/delta?$deltatoken=t"
    window = (datetime(2026, 12, 1, tzinfo=UTC), datetime(2028, 1, 1, tzinfo=UTC))
    found, link = read_delta(graph, None, window, {"ev-1": mine})
    assert link == "https://g/delta?$deltatoken=t"
    assert list(found) == ["ev-1"]  # the user's own events leave no trace
    assert found["ev-1"].change_key == "ck-user"
    assert graph.calls[0][1] == {
        "startDateTime": "2026-12-01T00:00:00Z",
        "endDateTime": "2028-01-01T00:00:00Z",
    }
    assert graph.calls[1] == ("https://g/next", None)


@pytest.mark.parametrize(
    "error",
    [
        PermanentError("gone", status=410),
        PermanentError("expired", code="syncStateNotFound", status=400),
    ],
)
def test_an_expired_delta_state_asks_for_a_new_round(error: PermanentError) -> None:
    graph = FakeGraph({"https://g/delta?$deltatoken=old": error})
    window = (datetime(2026, 12, 1, tzinfo=UTC), datetime(2028, 1, 1, tzinfo=UTC))
    with pytest.raises(ResyncNeeded):
        read_delta(graph, "https://g/delta?$deltatoken=old", window, {})


def test_a_new_round_after_a_reported_move_reports_nothing_again() -> None:
    # Reported before the token expired: the link holds the user's changeKey and the times seen.
    reported = tracked(
        change_key="ck-user", observed=Times("2027-01-16T08:30:00Z", "2027-01-16T09:45:00Z", False)
    )
    untouched = Tracked(Link("act-2", 1, outlook_event_id="ev-2", change_key="ck-2"), WRITTEN, "ck-2")
    again = [
        decide(
            reported,
            seen(graph_event("2027-01-16T08:30:00.0000000", "2027-01-16T09:45:00.0000000", "ck-user")),
        ),
        decide(untouched, Seen("ev-2", "ck-2", WRITTEN)),
    ]
    assert all(isinstance(d, Echo) for d in again)


# --- the guard -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gone", "linked", "expected"),
    [
        (21, 40, True),  # over 20 and over half
        (20, 30, False),  # not over 20
        (21, 42, False),  # not over half
        (30, 30, True),
        (3, 4, False),  # a small calendar can lose most of it
    ],
)
def test_mass_deletion_guard_thresholds(gone: int, linked: int, expected: bool) -> None:
    assert held(gone, linked) is expected
    assert held(gone, linked, confirmed=True) is False


# --- window and sweep ------------------------------------------------------------------------------------


def test_the_window_is_whole_days_and_moves_daily() -> None:
    start, end = sync_window(datetime(2027, 1, 15, 13, 5, tzinfo=UTC), 30, 365)
    assert start == datetime(2026, 12, 16, tzinfo=UTC)
    assert end == datetime(2028, 1, 16, tzinfo=UTC)
    assert sync_window(datetime(2027, 1, 15, 23, 59, tzinfo=UTC), 30, 365) == (start, end)


def test_the_sweep_schedules_each_user_when_due_and_spreads_the_overdue() -> None:
    now = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)
    recent = SweepUser("t", "recent", now - timedelta(hours=1))  # due in 5 h: next runs
    soon = SweepUser("t", "soon", now - timedelta(hours=5, minutes=30))  # due in 30 min
    overdue = [SweepUser("t", f"o{i}", None if i % 2 else now - timedelta(hours=7)) for i in range(50_000)]
    planned = dict((u.user, d) for u, d in plan_sweep([recent, soon, *overdue], now))
    assert "recent" not in planned
    assert planned["soon"] == 1800
    delays = sorted(planned[u.user] for u in overdue)
    assert delays[0] == 0 and delays[-1] <= 3600  # spread over the hour, not all at once
    assert len(set(delays)) > 3000
    assert planned["o1"] < planned["o0"]  # never reconciled goes first


def test_a_few_overdue_users_are_not_held_back_for_hours() -> None:
    now = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)
    planned = plan_sweep([SweepUser("t", f"u{i}", None) for i in range(30)], now)
    assert max(d for _, d in planned) <= 3


# --- a push that stored its link while the pass was reading ------------------------------------------


class _OneEvent:
    """A mailbox holding one event (or none), answering GET by id; records the requests."""

    mailbox_path = "me"

    def __init__(self, event: dict[str, Any] | None) -> None:
        self.event = event
        self.calls: list[str] = []

    def call(self, method: str, path: str, **kwargs: Any) -> GraphResponse:
        from shared.outlook.graph import NotFoundError

        self.calls.append(f"{method} {path}")
        if self.event is None:
            raise NotFoundError("gone", code="ErrorItemNotFound", status=404)
        return GraphResponse(200, {}, self.event)


@pytest.mark.parametrize(
    ("outlook_now", "reported"),
    [
        ("the user's move after the push's write", True),
        ("the push's write", False),
        ("gone", False),
    ],
)
def test_a_move_made_after_a_push_whose_link_landed_mid_pass_is_reported_once(monkeypatch, outlook_now, reported) -> None:
    """Found by the wider chaos run (race 10): the pass read the link at v3 (ck-ours); the push then
    wrote v4 (ck-push) and stored its link; the user moved the event (ck-user) and this delta round
    lists that move. The stored link's changeKey is neither the pass's nor delta's, and no later
    round lists the move again: the event is read now, and the move is reported against the push's
    link. When Outlook still shows the push's write (or nothing), there is nothing to report."""
    from shared.flows import callbacks, reconcile
    from shared.store import links
    from shared.store.links import StoredLink

    pushed = Times("2027-01-15T17:00:00Z", "2027-01-15T18:00:00Z", False)
    v4 = Link("act-1", 4, outlook_event_id="ev-1", content_hash="h4", change_key="ck-push")
    stored = StoredLink(v4, "etag-2", {"start_utc": pushed.start, "end_utc": pushed.end})
    moved = graph_event("2027-01-16T08:30:00.0000000", "2027-01-16T09:30:00.0000000", "ck-user")
    now_in_outlook = {
        "the user's move after the push's write": moved,
        "the push's write": graph_event("2027-01-15T17:00:00.0000000", "2027-01-15T18:00:00.0000000", "ck-push"),
        "gone": None,
    }[outlook_now]
    sent: list[dict[str, Any]] = []
    saved: list[StoredLink] = []
    monkeypatch.setattr(links, "get", lambda *a: saved[-1] if saved else stored)
    monkeypatch.setattr(links, "save", lambda storage, tenant, user, s: saved.append(s) or s)
    monkeypatch.setattr(callbacks, "enqueue", lambda storage, kind, tenant, user, data, **_: sent.append(data))
    client = _OneEvent(now_in_outlook)

    decision = decide(tracked(), seen(moved))  # against the link the pass read: v3 at ck-ours
    reconcile.apply(SimpleNamespace(storage=None), client, "t", "u", decision, datetime(2027, 1, 10, tzinfo=UTC))

    assert client.calls == ["GET me/events/ev-1"]
    if reported:
        assert [(d["version"], d["start"], d["changes"]["start"]["from"]) for d in sent] == [
            (4, "2027-01-16T08:30:00Z", pushed.start)
        ]
        assert saved[-1].link.change_key == "ck-user"  # the next round's echo of it says nothing
    else:
        assert sent == [] and all(s.link.change_key == "ck-push" for s in saved)


def test_the_pushs_own_deletions_in_flight_neither_trip_the_mass_deletion_guard_nor_get_reported(monkeypatch) -> None:
    """A CRM bulk cancel: the push has marked most links "deleting" and sent the DELETEs, and the
    reconcile reads them gone before the links are stored. They are ours: not counted by the
    guard (which would hold the user's one real deletion with them), not reported."""
    from shared.flows import callbacks
    from shared.rules.sync_plan import MASS_DELETE_MIN
    from shared.store import links
    from shared.store.links import StoredLink

    count = MASS_DELETE_MIN + 5
    stored = {
        f"act-{n}": StoredLink(
            Link(f"act-{n}", 1, outlook_event_id=f"ev-{n}", change_key="ck"),
            "etag-1",
            {links.DELETING: "v2"} if n < count - 1 else {},  # the last one: the user's own deletion
        )
        for n in range(count)
    }
    sent = _reconcile_world(monkeypatch, lambda: list(stored.values()), lambda activity_id: stored[activity_id])

    class Deleted:
        """Delta lists every event removed; a GET of any of them is a 404."""

        mailbox_path, calendar_id = "me", None

        def call(self, method: str, path: str, **kwargs: Any) -> GraphResponse:
            from shared.outlook.graph import NotFoundError

            if "delta" in path:
                removed = [{"id": f"ev-{n}", "@removed": {"reason": "deleted"}} for n in range(count)]
                return GraphResponse(200, {}, {"value": removed, "@odata.deltaLink": "next"})
            raise NotFoundError("gone", code="ErrorItemNotFound", status=404)

    result = _delta_pass(Deleted())

    assert (result.held_deletions, result.reported_deletions) == (0, 1)
    assert sent == [(callbacks.DELETED_IN_OUTLOOK, {"activity_id": f"act-{count - 1}"})]


@pytest.mark.parametrize("moved", [True, False])
def test_an_event_whose_link_was_stored_mid_pass_and_that_its_user_moved_is_reported(monkeypatch, moved) -> None:
    """Found by the full wider chaos run (a move never reported): the pass read its links while
    the push was creating the event; the user moved the new event at once; this delta round lists
    it, as an event the pass did not know, and no later round lists it again. The pass looks its
    untracked ids up in the links once more and judges the event against the link it finds."""
    from shared.flows import callbacks
    from shared.store.links import StoredLink

    pushed = Link("act-1", 1, outlook_event_id="ev-1", content_hash="h", change_key="ck-push")
    stored = StoredLink(pushed, "etag-2", {"start_utc": "2027-01-15T15:00:00Z", "end_utc": "2027-01-15T16:00:00Z"})
    reads = [[StoredLink(Link("act-1", -1), "etag-1", {"creating": "v1"})], [stored]]  # before, after
    shown = (
        graph_event("2027-01-16T08:30:00.0000000", "2027-01-16T09:30:00.0000000", "ck-user")
        if moved
        else graph_event("2027-01-15T15:00:00.0000000", "2027-01-15T16:00:00.0000000", "ck-push")
    )
    sent = _reconcile_world(monkeypatch, lambda: reads.pop(0) if len(reads) > 1 else reads[0], lambda activity_id: stored)

    class Mailbox:
        mailbox_path, calendar_id = "me", None
        reads_by_id = 0

        def call(self, method: str, path: str, **kwargs: Any) -> GraphResponse:
            if "delta" in path:
                return GraphResponse(200, {}, {"value": [shown], "@odata.deltaLink": "next"})
            self.reads_by_id += 1
            return GraphResponse(200, {}, shown)  # by id: what the event shows now

    mailbox = Mailbox()
    result = _delta_pass(mailbox)

    assert mailbox.reads_by_id == 1  # one GET decides, and tells whether the change is the push's own
    if moved:
        assert result.reported_moves == 1
        assert [(kind, data["start"]) for kind, data in sent] == [(callbacks.CHANGED_IN_OUTLOOK, "2027-01-16T08:30:00Z")]
    else:
        assert result.reported_moves == 0 and sent == []  # the push's own create: an echo


@pytest.mark.parametrize(
    ("created", "in_flight", "looked"),
    [
        ("2027-01-03T09:00:00Z", False, False),  # the user's own event from last week
        ("2027-01-09T23:55:00.1234567Z", False, True),  # within the clock margin of the read
        ("2027-01-10T00:00:05Z", False, True),  # created after the read
        (None, False, True),  # Graph did not say
        ("2027-01-03T09:00:00Z", True, True),  # a create was in flight at the read: its event may be older
    ],
)
def test_the_links_are_read_again_only_for_events_that_may_have_been_created_meanwhile(
    monkeypatch, created, in_flight, looked
) -> None:
    """Fix 15's cost: a round that lists the user's own events reads the links a second time
    only if one of them may be an event of ours linked after the first read."""
    from shared.store.links import StoredLink

    snapshot = [StoredLink(Link("act-1", -1), "etag-1", {"creating": "v1"})] if in_flight else []
    reads = []
    _reconcile_world(monkeypatch, lambda: reads.append(1) or snapshot, lambda activity_id: None)
    own = graph_event("2027-01-15T15:00:00.0000000", "2027-01-15T16:00:00.0000000", "ck-own", id="ev-own")
    if created:
        own["createdDateTime"] = created

    class Mailbox:
        mailbox_path, calendar_id = "me", None

        def call(self, method: str, path: str, **kwargs: Any) -> GraphResponse:
            if "delta" in path:
                return GraphResponse(200, {}, {"value": [own], "@odata.deltaLink": "next"})
            return GraphResponse(200, {}, own)

    result = _delta_pass(Mailbox())

    assert len(reads) == (2 if looked else 1)
    assert (result.reported_moves, result.reported_deletions) == (0, 0)


def _reconcile_world(monkeypatch, links_now: Any, link_of: Any) -> list[tuple[str, dict[str, Any]]]:
    """Links from ``links_now()`` (the user's) and ``link_of(activity_id)``, saves kept nowhere,
    default tenant settings; returns the list the callbacks are queued to."""
    from shared.flows import callbacks
    from shared.store import links, tenant_settings
    from shared.store.tenant_settings import TenantSettings

    sent: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(links, "for_user", lambda *a: links_now())
    monkeypatch.setattr(links, "get", lambda storage, tenant, user, activity_id: link_of(activity_id))
    monkeypatch.setattr(links, "save", lambda storage, tenant, user, s: s)
    monkeypatch.setattr(tenant_settings, "get", lambda *a: TenantSettings())
    monkeypatch.setattr(callbacks, "enqueue", lambda storage, kind, tenant, user, data, **_: sent.append((kind, data)))
    return sent


def _delta_pass(client: Any) -> Any:
    """One pass of a connected user against ``client`` on 2027-01-10 (a full round: the stored
    window is not that day's)."""
    from shared.flows import reconcile

    state = SimpleNamespace(delta_link="me/calendarView/delta?token=then", window="", account_oid="oid", capture="off")
    connection = SimpleNamespace(
        tenant="t", user="u", capture=False, account_username=None, account_mail=None, mailbox_time_zone=None,
        account_oid="oid",
    )
    services = SimpleNamespace(storage=None, settings=SimpleNamespace(sync_window_past_days=30, sync_window_future_days=365))
    return reconcile.delta_pass(services, client, connection, state, datetime(2027, 1, 10, tzinfo=UTC))
