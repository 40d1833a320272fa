"""Organisation mode (issue 19): the CRM's request bodies are validated before anything is stored or queued."""

from __future__ import annotations

import pytest

from shared.flows.organization import parse_connect_request, parse_disconnect_request, parse_enable_request
from shared.rules.contract import ValidationError

ORIGINS = frozenset({"https://crm.example.com"})


def fields(error: pytest.ExceptionInfo[ValidationError]) -> set[str]:
    return {name for name, _ in error.value.errors}


def test_an_enable_body_names_the_mailbox_zone_and_locale() -> None:
    request = parse_enable_request({"mailbox": " ana@contoso.example ", "time_zone": "America/Bogota", "locale": "es-CO"})
    assert (request.mailbox, request.time_zone, request.locale) == ("ana@contoso.example", "America/Bogota", "es")


@pytest.mark.parametrize("mailbox", [None, "", "a/../b", "x?y", "users%2Fme", "a" * 321, 7])
def test_a_mailbox_that_could_escape_its_path_segment_is_refused(mailbox: object) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_enable_request({"mailbox": mailbox, "time_zone": "UTC"})
    assert fields(refused) == {"mailbox"}


def test_every_bad_enable_field_is_named() -> None:
    with pytest.raises(ValidationError) as refused:
        parse_enable_request({"mailbox": "", "time_zone": "Mars/Base", "locale": 3})
    assert fields(refused) == {"mailbox", "time_zone", "locale"}


def test_the_organisation_connect_returns_only_to_allowed_origins() -> None:
    assert parse_connect_request({"return_url": "https://crm.example.com/x"}, ORIGINS).locale == "es"
    with pytest.raises(ValidationError) as refused:
        parse_connect_request({"return_url": "https://evil.example/x"}, ORIGINS)
    assert fields(refused) == {"return_url"}


def test_organisation_disconnect_takes_the_user_disconnect_choices() -> None:
    assert parse_disconnect_request(None) == "none"
    assert parse_disconnect_request({"remove_events": "all"}) == "all"
    with pytest.raises(ValidationError):
        parse_disconnect_request({"remove_events": "some"})
