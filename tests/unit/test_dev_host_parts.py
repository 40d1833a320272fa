"""Pure parts of the dev host: route templates, NCRONTAB schedules and host.json TimeSpans."""

from datetime import UTC, datetime

import pytest

from local.host import _timespan
from local.host.http import Route, compile_route
from local.host.timers import next_occurrence


@pytest.mark.parametrize(
    ("template", "path", "params"),
    [
        (
            "tenants/{tenant}/users/{user}/connect",
            "/api/tenants/t1/users/u%2F2/connect",
            {"tenant": "t1", "user": "u%2F2"},
        ),
        (
            "tenants/{tenant}/users/{user}/connect",
            "/API/Tenants/t1/Users/u2/CONNECT",
            {"tenant": "t1", "user": "u2"},
        ),
        ("items/{id:int}", "/api/items/42", {"id": "42"}),
        ("items/{id?}", "/api/items", {}),
        ("files/{*rest}", "/api/files/a/b/c", {"rest": "a/b/c"}),
        ("health", "/api/health/extra", None),
        ("tenants/{tenant}", "/api/tenants/", None),
    ],
)
def test_route_templates_match_as_the_host_does(template: str, path: str, params: dict | None) -> None:
    route = Route(spec=None, pattern=compile_route(template, "api"), methods=None)
    assert route.match(path) == params


def test_ncrontab_has_seconds_first() -> None:
    start = datetime(2026, 3, 1, 0, 0, 0, tzinfo=UTC)
    assert next_occurrence("*/10 * * * * *", start) == datetime(2026, 3, 1, 0, 0, 10, tzinfo=UTC)
    assert next_occurrence("0 30 */6 * * *", start) == datetime(2026, 3, 1, 0, 30, tzinfo=UTC)
    assert next_occurrence("0 0 3 * * 1", start) == datetime(2026, 3, 2, 3, 0, tzinfo=UTC)  # Monday


def test_five_field_cron_is_refused() -> None:
    with pytest.raises(ValueError, match="six fields"):
        next_occurrence("*/5 * * * *", datetime(2026, 1, 1, tzinfo=UTC))


def test_host_json_timespans() -> None:
    assert _timespan("00:00:30", 0) == 30
    assert _timespan("01:02:03.5", 0) == 3723.5
    assert _timespan(None, 2.0) == 2.0
    with pytest.raises(ValueError, match="TimeSpan"):
        _timespan("30s", 0)
