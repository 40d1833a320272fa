"""The pure decisions of "Remove sync" as a job (shared/rules/removal_plan.py), exhaustively."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.rules.removal_plan import FAILED, GONE, REMOVED, RETRY, Target, is_target, outcome, percent

CUTOFF = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
ENDS = {
    "past": CUTOFF - timedelta(minutes=1),
    "at": CUTOFF,
    "future": CUTOFF + timedelta(minutes=1),
    "unknown": None,
}


@pytest.mark.parametrize("choice", ["all", "future", "none"])
@pytest.mark.parametrize("ends", list(ENDS))
@pytest.mark.parametrize("has_event", [True, False])
@pytest.mark.parametrize("adopted", [True, False])
def test_which_events_a_removal_takes(choice: str, ends: str, has_event: bool, adopted: bool) -> None:
    target = Target("a1", "evt-1" if has_event else None, ENDS[ends], adopted=adopted)

    expected = (
        has_event
        and not adopted  # the user's own meeting, adopted by the CRM, stays whatever they chose
        and (choice == "all" or (choice == "future" and ends in ("future", "unknown")))
    )
    assert is_target(target, choice, CUTOFF) is expected


@pytest.mark.parametrize(
    ("status", "sent_before", "expected"),
    [
        (204, False, REMOVED),
        (200, True, REMOVED),
        (404, False, GONE),  # the user had deleted it: not counted as ours removed
        (404, True, REMOVED),  # our DELETE went through before a crash
        (410, True, REMOVED),
        (0, False, RETRY),  # no answer
        (408, False, RETRY),
        (429, True, RETRY),
        (500, False, RETRY),
        (503, False, RETRY),
        (403, False, FAILED),
        (400, True, FAILED),
    ],
)
def test_what_one_inner_delete_answer_means(status: int, sent_before: bool, expected: str) -> None:
    assert outcome(status, sent_before) == expected


def test_progress_never_passes_100_and_nothing_to_do_is_done() -> None:
    assert [percent(0, 0), percent(0, 3), percent(1, 3), percent(3, 3), percent(5, 3)] == [100, 0, 33, 100, 100]
