"""The calendar a user's events live in, and every Graph path built from it."""

from __future__ import annotations

import pytest

from shared.rules.calendars import (
    CalendarChoice,
    calendar_path,
    event_path,
    graph_path,
    mailbox_base,
    parse_choice,
)


def test_the_default_calendar_keeps_the_documented_paths() -> None:
    assert graph_path(None, "events") == "me/events"
    assert graph_path(None, "calendarView/delta") == "me/calendarView/delta"
    assert graph_path(None, "events", absolute=True) == "/me/events"


def test_another_calendar_is_addressed_by_its_id_quoted() -> None:
    assert graph_path("AAMk+a/b=", "events") == "me/calendars/AAMk%2Ba%2Fb%3D/events"
    assert graph_path("c1", "calendarView/delta") == "me/calendars/c1/calendarView/delta"
    assert graph_path("c1", "/events", absolute=True) == "/me/calendars/c1/events"
    assert calendar_path("c1") == "me/calendars/c1"


def test_an_event_by_id_needs_no_calendar() -> None:
    assert event_path("AAMk=1/2") == "me/events/AAMk%3D1%2F2"
    assert event_path("ev-1", absolute=True) == "/me/events/ev-1"


def test_an_app_only_mailbox_is_users_object_id_and_a_delegated_one_stays_me() -> None:
    assert mailbox_base("delegated", "oid-1") == "me"
    assert mailbox_base("organization", "3f2a/b") == "users/3f2a%2Fb"
    users = mailbox_base("organization", "oid-1")
    assert graph_path(None, "events", mailbox=users) == "users/oid-1/events"
    assert graph_path("c1", "calendarView/delta", mailbox=users) == "users/oid-1/calendars/c1/calendarView/delta"
    assert graph_path(None, "events", absolute=True, mailbox=users) == "/users/oid-1/events"
    assert event_path("AAMk=1", absolute=True, mailbox=users) == "/users/oid-1/events/AAMk%3D1"
    assert calendar_path("c1", mailbox=users) == "users/oid-1/calendars/c1"
    with pytest.raises(ValueError):
        mailbox_base("organization", None)  # never silently the app's own "me"


@pytest.mark.parametrize(
    ("value", "choice"),
    [
        (None, CalendarChoice()),
        ("default", CalendarChoice()),
        ("dedicated", CalendarChoice("dedicated")),
        ({"id": " AAMk1 "}, CalendarChoice("id", "AAMk1")),
        ("crm", None),
        ({"id": ""}, None),
        ({"id": 3}, None),
        ({"id": "a", "name": "b"}, None),
        (["dedicated"], None),
    ],
)
def test_the_connect_body_calendar_value(value: object, choice: CalendarChoice | None) -> None:
    assert parse_choice(value) == choice


def test_the_dedicated_calendar_name_comes_from_the_tenant_else_the_locale() -> None:
    from shared.rules.calendars import dedicated_name

    assert dedicated_name("es-CO", None) == "CRM"
    assert dedicated_name("en", "Ventas") == "Ventas"
    assert dedicated_name("en", "Ventas", attempt=1) == "Ventas (2)"


def test_the_tenant_setting_round_trips_through_storage() -> None:
    from shared.rules.tenant_settings import from_stored, parse_settings, to_stored

    chosen = parse_settings({"dedicated_calendar_name": "  Ventas CRM "})
    assert chosen.dedicated_calendar_name == "Ventas CRM"
    assert from_stored(to_stored(chosen)).dedicated_calendar_name == "Ventas CRM"
    assert from_stored(to_stored(parse_settings({}))).dedicated_calendar_name is None
