"""A worker's auth failure is judged against the user's current mode (issue 19): a delegated grant's
failure seen after the user moved to organisation mode (or the reverse) changes nothing."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from shared.flows import organization, reauth
from shared.store import connections
from shared.store.connections import CONNECTED, Connection


@pytest.fixture()
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    seen: dict[str, list[Any]] = {"consent_lost": [], "update": []}
    monkeypatch.setattr(organization, "consent_lost", lambda services, tenant, reason: seen["consent_lost"].append(reason) or 2)
    monkeypatch.setattr(connections, "update", lambda *args: seen["update"].append(args))
    monkeypatch.setattr(reauth.callbacks, "enqueue", lambda *args: None)
    return seen


def user(mode: str) -> Connection:
    return Connection("t", "u", state=CONNECTED, mode=mode, account_oid="oid", account_tid="tid")


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("organization", "no_token_cache"), ("organization", "invalid_grant"), ("delegated", "organization_consent_required")],
)
def test_a_failure_of_the_other_mode_s_grant_is_stale(
    monkeypatch: pytest.MonkeyPatch, calls: dict[str, list[Any]], mode: str, reason: str
) -> None:
    monkeypatch.setattr(connections, "get", lambda storage, tenant, u: user(mode))
    assert reauth.require_reauth(SimpleNamespace(storage=None), "t", "u", reason) is False  # type: ignore[arg-type]
    assert calls == {"consent_lost": [], "update": []}


def test_an_app_only_consent_failure_stops_the_organisation(monkeypatch: pytest.MonkeyPatch, calls: dict[str, list[Any]]) -> None:
    monkeypatch.setattr(connections, "get", lambda storage, tenant, u: user("organization"))
    assert reauth.require_reauth(SimpleNamespace(storage=None), "t", "u", "organization_consent_required") is True  # type: ignore[arg-type]
    assert calls["consent_lost"] == ["organization_consent_required"]


def test_a_delegated_grant_failure_still_asks_the_user_to_sign_in_again(
    monkeypatch: pytest.MonkeyPatch, calls: dict[str, list[Any]]
) -> None:
    monkeypatch.setattr(connections, "get", lambda storage, tenant, u: user("delegated"))
    reauth.require_reauth(SimpleNamespace(storage=None), "t", "u", "invalid_grant")  # type: ignore[arg-type]
    assert len(calls["update"]) == 1 and calls["consent_lost"] == []
