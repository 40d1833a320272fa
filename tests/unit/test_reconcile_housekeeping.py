"""Small pure rules around the reconcile: when a subscription is renewed, which clean-up rows
count as expired (Graph's 7-digit timestamps included)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from shared.flows.housekeeping import _expired
from shared.flows.subscriptions import needs_renewal

NOW = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)


def test_a_subscription_is_renewed_within_two_days_of_expiry_or_when_unknown() -> None:
    assert needs_renewal(None, NOW)
    assert needs_renewal("2027-01-17T11:59:00Z", NOW)
    assert not needs_renewal("2027-01-17T12:01:00Z", NOW)
    assert not needs_renewal("2027-01-21T12:00:00.0000000+00:00", NOW)


def test_graph_timestamps_are_read_for_clean_up() -> None:
    cutoff = NOW - timedelta(days=1)
    assert _expired("2027-01-13T10:00:00.1234567Z", cutoff)
    assert not _expired("2027-01-15T10:00:00.1234567Z", cutoff)
    assert _expired(datetime(2027, 1, 1), cutoff)  # naive rows read as UTC
    assert not _expired("not a date", cutoff) and not _expired(None, cutoff)
