"""Issue 17: meetings booked in Outlook captured for the CRM (settings, opt-out, capture plan)."""

from __future__ import annotations

import pytest

from shared.flows.connect import parse_connect_request
from shared.rules.contract import ValidationError

ORIGINS = frozenset({"https://crm.example.com"})


def test_the_connect_body_may_opt_out_of_capture() -> None:
    base = {"time_zone": "America/Bogota"}
    assert parse_connect_request(base, ORIGINS).capture is True
    assert parse_connect_request({**base, "capture": False}, ORIGINS).capture is False
    with pytest.raises(ValidationError) as error:
        parse_connect_request({**base, "capture": "no"}, ORIGINS)
    assert [path for path, _ in error.value.errors] == ["capture"]
