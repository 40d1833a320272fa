from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from shared.rules.contract import ValidationError, parse_activity, parse_crm_event
from shared.rules.model import (
    Activity,
    ActivityDeleted,
    ActivityType,
    ActivityTypeUpdated,
    Party,
    UserUpdated,
)
from tests.unit.activity_builders import activity_json, envelope


def errors_of(obj: object, *, event: bool = False) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        parse_crm_event(obj) if event else parse_activity(obj)
    paths = [path for path, _ in caught.value.errors]
    assert len(paths) == len(set(paths)), "a field is reported once"
    return dict(caught.value.errors)


# --- valid input -----------------------------------------------------------------------------------

def test_full_activity_parses_into_frozen_records() -> None:
    a = parse_activity(activity_json())
    assert a == Activity(
        id="act-1", version=1, owner_user_id="user-1",
        type=ActivityType("type-call", "Llamada", True), status="planned",
        subject="Call Ana about the renewal", description="Bring the new price list.",
        start=datetime(2025, 3, 10, 9, tzinfo=timezone(timedelta(hours=1))),
        end=datetime(2025, 3, 10, 9, 30, tzinfo=timezone(timedelta(hours=1))),
        time_zone="Europe/Madrid", all_day=False, url="https://crm.example/activities/act-1",
        show_in_calendar=True, location="Office", reminder_minutes=15,
        deal=Party("deal-9", "Renewal 2025"), company=Party("co-3", "Acme S.L."),
        contact=Party("ct-7", "Ana Pérez", "ana@acme.example", "+34 600 000 000"),
    )
    with pytest.raises(AttributeError):
        a.subject = "x"  # type: ignore[misc]


def test_optional_fields_may_be_absent_or_null_and_defaults_apply() -> None:
    a = parse_activity(activity_json(show_in_calendar=..., all_day=None, location=None, reminder_minutes=...,
                                     deal=None, company=..., contact=..., description=...))
    assert a.show_in_calendar is True and a.all_day is False
    assert (a.location, a.reminder_minutes, a.deal, a.company, a.contact) == (None, None, None, None, None)
    assert a.description == ""


def test_unknown_fields_are_ignored() -> None:
    a = parse_activity(activity_json(priority="high", type={"id": "t", "name": "n", "show_in_calendar": False,
                                                             "color": "red"}))
    assert a.type == ActivityType("t", "n", False)


@pytest.mark.parametrize(("text", "expected"), [
    ("2025-03-10T09:00:00Z", datetime(2025, 3, 10, 9, tzinfo=UTC)),
    ("2025-03-10t09:00:00z", datetime(2025, 3, 10, 9, tzinfo=UTC)),
    ("2025-03-10T09:00:00-05:30", datetime(2025, 3, 10, 9, tzinfo=timezone(-timedelta(hours=5, minutes=30)))),
    ("2025-03-10T09:00:00.123456789+00:00", datetime(2025, 3, 10, 9, 0, 0, 123456, tzinfo=UTC)),
    ("2025-03-10 09:00:00", datetime(2025, 3, 10, 9)),
    ("2025-03-10T09:00", datetime(2025, 3, 10, 9)),
])
def test_start_formats(text: str, expected: datetime) -> None:
    a = parse_activity(activity_json(start=text, end="2025-03-11T00:00:00Z"))
    assert a.start == expected and (a.start.tzinfo is None) == (expected.tzinfo is None)


def test_all_day_uses_dates_and_an_equal_end_means_one_day() -> None:
    a = parse_activity(activity_json(all_day=True, start="2025-03-30", end="2025-03-30"))
    assert (a.start, a.end) == (date(2025, 3, 30), date(2025, 3, 31))
    b = parse_activity(activity_json(all_day=True, start="2025-03-30", end="2025-04-02"))
    assert b.end == date(2025, 4, 2)


def test_zero_length_timed_activity_is_accepted() -> None:
    a = parse_activity(activity_json(start="2025-03-10T09:00:00Z", end="2025-03-10T09:00:00Z"))
    assert a.start == a.end


def test_naive_end_in_a_dst_fold_is_compared_as_an_instant() -> None:
    # Both times occur twice on 2025-10-26 in Madrid; each is read as its first occurrence (CEST),
    # so 02:10 is before 02:30.
    errs = errors_of(activity_json(start="2025-10-26T02:30:00", end="2025-10-26T02:10:00"))
    assert errs == {"end": "must not be before start"}
    # With offsets the second 02:10 (CET) is after the first 02:30 (CEST): accepted.
    parse_activity(activity_json(start="2025-10-26T02:30:00+02:00", end="2025-10-26T02:10:00+01:00"))


def test_mixed_offset_and_naive_times_compare_as_instants() -> None:
    # 09:00 Madrid (CET, +01:00) is 08:00Z; end 08:30Z is after it.
    parse_activity(activity_json(start="2025-03-10T09:00:00", end="2025-03-10T08:30:00Z"))
    errs = errors_of(activity_json(start="2025-03-10T09:00:00", end="2025-03-10T07:59:59Z"))
    assert set(errs) == {"end"}


def test_backfill_items_are_reported_under_their_path() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_activity(activity_json(subject=None), path="activities[3]")
    assert caught.value.errors == (("activities[3].subject", "is required"),)


# --- one bad field at a time -----------------------------------------------------------------------

BAD_FIELDS = [
    # (overrides, field path, message fragment)
    ({"id": 12}, "id", "must be a string"),
    ({"id": ""}, "id", "must not be empty"),
    ({"id": "x" * 257}, "id", "at most 256"),
    ({"id": "a\x00b"}, "id", "control characters"),
    ({"id": "a\nb"}, "id", "control characters"),
    ({"id": "a\x85b"}, "id", "control characters"),
    ({"id": "a\ud800"}, "id", "unpaired surrogate"),
    ({"id": ...}, "id", "is required"),
    ({"version": "3"}, "version", "must be an integer"),
    ({"version": 3.0}, "version", "must be an integer"),
    ({"version": True}, "version", "must be an integer"),
    ({"version": -1}, "version", "between 0 and"),
    ({"version": 2**63}, "version", "between 0 and"),
    ({"owner_user_id": 7}, "owner_user_id", "must be a string"),
    ({"type": "call"}, "type", "must be an object"),
    ({"type": ...}, "type", "is required"),
    ({"type": {"id": 5, "name": "n", "show_in_calendar": True}}, "type.id", "must be a string"),
    ({"type": {"id": "t", "name": "n", "show_in_calendar": "yes"}}, "type.show_in_calendar", "true or false"),
    ({"type": {"id": "t", "show_in_calendar": True}}, "type.name", "is required"),
    ({"status": "done"}, "status", "planned, completed, cancelled"),
    ({"status": 1}, "status", "must be a string"),
    ({"show_in_calendar": "false"}, "show_in_calendar", "true or false"),
    ({"show_in_calendar": 0}, "show_in_calendar", "true or false"),
    ({"subject": "s" * 256}, "subject", "at most 255"),
    ({"subject": "a\x07b"}, "subject", "control characters"),
    ({"subject": ...}, "subject", "is required"),
    ({"description": "é" * 16385}, "description", "32768 bytes"),
    ({"description": "x" * 32769}, "description", "at most 32768"),
    ({"description": ["x"]}, "description", "must be a string"),
    ({"start": "2025-02-30T09:00:00Z"}, "start", "not a valid calendar date"),
    ({"start": "2025-03-10T25:00:00Z"}, "start", "not a valid calendar date"),
    ({"start": "2025-03-10T09:00:00+24:00"}, "start", "invalid UTC offset"),
    ({"start": "2025-03-10T09:00:00+0100"}, "start", "RFC 3339"),
    ({"start": "10/03/2025 09:00"}, "start", "RFC 3339"),
    ({"start": "2025-W11-1"}, "start", "RFC 3339"),
    ({"start": 1741597200}, "start", "must be a string"),
    ({"start": "1899-12-31T09:00:00Z"}, "start", "between the years"),
    ({"start": "2025-03-10"}, "start", "needs all_day true"),
    ({"end": "2025-03-10T08:59:59+01:00"}, "end", "must not be before start"),
    ({"end": ...}, "end", "is required"),
    ({"time_zone": "Mars/Olympus"}, "time_zone", "IANA time zone"),
    ({"time_zone": "Romance Standard Time"}, "time_zone", "IANA time zone"),
    ({"time_zone": "europe/madrid"}, "time_zone", "IANA time zone"),
    ({"time_zone": "../../etc/passwd"}, "time_zone", "IANA time zone"),
    ({"time_zone": "localtime"}, "time_zone", "IANA time zone"),
    ({"time_zone": ...}, "time_zone", "is required"),
    ({"all_day": "true"}, "all_day", "true or false"),
    ({"location": {"displayName": "x"}}, "location", "must be a string"),
    ({"location": "l" * 256}, "location", "at most 255"),
    ({"reminder_minutes": -1}, "reminder_minutes", "between 0 and 40320"),
    ({"reminder_minutes": 40321}, "reminder_minutes", "between 0 and 40320"),
    ({"reminder_minutes": 1.5}, "reminder_minutes", "must be an integer"),
    ({"deal": []}, "deal", "must be an object"),
    ({"deal": {"name": "d"}}, "deal.id", "is required"),
    ({"company": {"id": "c", "name": 3}}, "company.name", "must be a string"),
    ({"contact": {"id": "c", "name": "n", "email": "not-an-email"}}, "contact.email", "email address"),
    ({"contact": {"id": "c", "name": "n", "email": "a@b.c<script>"}}, "contact.email", "email address"),
    ({"contact": {"id": "c", "name": "n", "phone": "1" * 65}}, "contact.phone", "at most 64"),
    ({"url": "javascript:alert(1)"}, "url", "http or https"),
    ({"url": "ftp://crm.example/a"}, "url", "http or https"),
    ({"url": "/activities/1"}, "url", "http or https"),
    ({"url": "https://crm.example/a b"}, "url", "spaces"),
    ({"url": "https://crm.example/" + "a" * 2048}, "url", "at most 2048"),
    ({"url": ...}, "url", "is required"),
]


@pytest.mark.parametrize(("overrides", "path", "fragment"), BAD_FIELDS,
                         ids=[f"{p}:{f}" for _, p, f in BAD_FIELDS])
def test_each_bad_field_is_named(overrides: dict, path: str, fragment: str) -> None:
    errs = errors_of(activity_json(**overrides))
    assert list(errs) == [path]
    assert fragment in errs[path]


def test_all_day_rejects_date_times_and_end_before_start() -> None:
    errs = errors_of(activity_json(all_day=True, start="2025-03-10T00:00:00", end="2025-03-09"))
    assert errs == {"start": "must be a date (YYYY-MM-DD) when all_day is true"}
    errs = errors_of(activity_json(all_day=True, start="2025-03-10", end="2025-03-09"))
    assert errs == {"end": "must not be before start"}


def test_many_bad_fields_are_all_reported_in_order() -> None:
    errs = errors_of({
        "id": 1, "version": -3, "owner_user_id": "", "type": {"id": "", "name": None, "show_in_calendar": 1},
        "status": "open", "show_in_calendar": "yes", "subject": None, "description": "\x00",
        "start": "tomorrow", "end": "2025-13-01T00:00:00Z", "time_zone": "CET/Nowhere", "all_day": "no",
        "location": 5, "reminder_minutes": "15", "deal": "d", "company": {"id": "c"},
        "contact": {"id": "c", "name": "n", "email": "@"}, "url": "mailto:x@y.z",
    })
    assert list(errs) == [
        "id", "version", "owner_user_id", "type.id", "type.name", "type.show_in_calendar", "status",
        "show_in_calendar", "subject", "description", "time_zone", "all_day", "start", "end", "location",
        "reminder_minutes", "deal", "company.name", "contact.email", "url",
    ]


def test_not_an_object() -> None:
    assert errors_of(["x"]) == {"$": "must be a JSON object"}
    assert errors_of(None, event=True) == {"$": "must be a JSON object"}


def test_validation_error_json_body() -> None:
    with pytest.raises(ValidationError) as caught:
        parse_activity(activity_json(subject=None, url="x"))
    assert caught.value.as_json() == {"error": "invalid_request", "fields": [
        {"field": "subject", "message": "is required"},
        {"field": "url", "message": "must be an absolute http or https URL"},
    ]}
    assert "subject: is required" in str(caught.value)


# --- CRM event envelopes ---------------------------------------------------------------------------

def test_upserted_event() -> None:
    event = parse_crm_event(envelope("activity.upserted", activity_json()))
    assert (event.id, event.type, event.tenant_id) == ("evt-1", "activity.upserted", "tenant-1")
    assert event.occurred_at == datetime(2025, 3, 1, 10, tzinfo=UTC)
    assert isinstance(event.data, Activity) and event.data.id == "act-1"


def test_other_event_types() -> None:
    deleted = parse_crm_event(envelope("activity.deleted", {"id": "a", "owner_user_id": "u", "version": 4}))
    assert deleted.data == ActivityDeleted("a", "u", 4)
    typ = parse_crm_event(envelope("activity_type.updated", {"id": "t", "name": "Visita",
                                                              "show_in_calendar": False}))
    assert typ.data == ActivityTypeUpdated("t", "Visita", False)
    user = parse_crm_event(envelope("user.updated", {"user_id": "u", "time_zone": "America/Bogota",
                                                      "locale": "es-CO"}))
    assert user.data == UserUpdated("u", "America/Bogota", "es-CO")


def test_activity_errors_are_prefixed_with_data_and_envelope_errors_come_too() -> None:
    errs = errors_of(envelope("activity.upserted", activity_json(start="x", type={"id": 3}),
                              tenant_id=None, occurred_at="2025-03-01T10:00:00"), event=True)
    assert list(errs) == ["tenant_id", "occurred_at", "data.type.id", "data.type.name",
                          "data.type.show_in_calendar", "data.start"]
    assert errs["occurred_at"] == "must be an RFC 3339 date-time with a UTC offset"


@pytest.mark.parametrize(("kind", "data", "expected"), [
    ("activity.deleted", {"id": "a", "owner_user_id": 1, "version": "2"}, ["data.owner_user_id", "data.version"]),
    ("activity.deleted", {}, ["data.id", "data.owner_user_id", "data.version"]),
    ("activity_type.updated", {"id": "t", "name": "", "show_in_calendar": None}, ["data.show_in_calendar"]),
    ("activity_type.updated", {"id": "t\x01", "name": "n", "show_in_calendar": "on"},
     ["data.id", "data.show_in_calendar"]),
    ("user.updated", {"user_id": "u", "time_zone": "GMT+1", "locale": "es_ES!"},
     ["data.time_zone", "data.locale"]),
])
def test_event_payload_errors(kind: str, data: dict, expected: list[str]) -> None:
    assert list(errors_of(envelope(kind, data), event=True)) == expected


def test_envelope_errors() -> None:
    errs = errors_of({"id": "", "type": "activity.created", "tenant_id": "t", "occurred_at": "now",
                      "data": []}, event=True)
    assert list(errs) == ["id", "type", "occurred_at", "data"]
    assert errors_of(envelope("user.updated", {"user_id": "u", "time_zone": "UTC", "locale": "en"},
                              occurred_at="2025-03-01"), event=True) == {
        "occurred_at": "must be an RFC 3339 date-time with a UTC offset"}
    assert errors_of({"id": "e", "type": "user.updated", "tenant_id": "t",
                      "occurred_at": "2025-01-01T00:00:00Z"}, event=True) == {"data": "is required"}
