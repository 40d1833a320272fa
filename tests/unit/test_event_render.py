from __future__ import annotations

import json
import uuid
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.rules.event_render import (
    PROPERTY_ID,
    VERSION_PROPERTY_ID,
    content_hash,
    language,
    parse_property_value,
    patch_body,
    property_value,
    render_event,
    transaction_id,
)
from shared.rules.model import Party
from tests.unit.activity_builders import activity

A = activity()


def render(a=A, **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("tenant_id", "tenant-1")
    kw.setdefault("user_id", "user-1")
    kw.setdefault("mailbox_time_zone", "Romance Standard Time")
    return render_event(a, **kw)


def test_full_event() -> None:
    event = render(generation=1).event
    assert event["subject"] == "Call Ana about the renewal"
    assert event["start"] == {"dateTime": "2025-03-10T09:00:00", "timeZone": "Romance Standard Time"}
    assert event["end"] == {"dateTime": "2025-03-10T09:30:00", "timeZone": "Romance Standard Time"}
    assert event["isAllDay"] is False
    assert event["location"] == {"displayName": "Office"}
    assert (event["isReminderOn"], event["reminderMinutesBeforeStart"]) == (True, 15)
    assert event["categories"] == ["Llamada"]
    assert event["showAs"] == "busy"
    assert event["transactionId"] == transaction_id("tenant-1", "user-1", "act-1", 1)
    assert event["singleValueExtendedProperties"] == [
        {"id": PROPERTY_ID, "value": "tenant-1|act-1"},
        {"id": VERSION_PROPERTY_ID, "value": "1"},
    ]
    body = event["body"]
    assert body["contentType"] == "html"
    assert "<p>Bring the new price list.</p>" in body["content"]
    assert ('<p><b>Contacto:</b> Ana Pérez · <a href="mailto:ana@acme.example">ana@acme.example</a>'
            " · +34 600 000 000</p>") in body["content"]
    assert "<p><b>Empresa:</b> Acme S.L.</p>" in body["content"]
    assert "<p><b>Negocio:</b> Renewal 2025</p>" in body["content"]
    assert '<a href="https://crm.example/activities/act-1">Abrir en el CRM</a>' in body["content"]


def test_never_any_attendees() -> None:
    for a in (A, replace(A, contact=Party("c", "Bob", "bob@example.com"))):
        event = render(a).event
        assert "attendees" not in event and "attendees" not in patch_body(event)
        assert "bob@example.com" not in json.dumps({k: v for k, v in event.items() if k != "body"})


@pytest.mark.parametrize(("locale", "labels"), [
    (None, ("Contacto", "Empresa", "Negocio", "Abrir en el CRM")),
    ("es", ("Contacto", "Empresa", "Negocio", "Abrir en el CRM")),
    ("es-CO", ("Contacto", "Empresa", "Negocio", "Abrir en el CRM")),
    ("fr", ("Contacto", "Empresa", "Negocio", "Abrir en el CRM")),
    ("en", ("Contact", "Company", "Deal", "Open in CRM")),
    ("en-US", ("Contact", "Company", "Deal", "Open in CRM")),
    ("EN_gb", ("Contact", "Company", "Deal", "Open in CRM")),
])
def test_labels_follow_the_locale(locale: str | None, labels: tuple[str, ...]) -> None:
    content = render(locale=locale).event["body"]["content"]
    for label in labels[:3]:
        assert f"<b>{label}:</b>" in content
    assert f">{labels[3]}</a>" in content


def test_language() -> None:
    assert [language(x) for x in ("en", "en-US", "eng", "enx", "es", "", None)] == [
        "en", "en", "es", "es", "es", "es", "es"]


def test_everything_from_the_crm_is_escaped_in_the_body() -> None:
    evil = replace(
        A,
        description='<script>alert("x")</script>\r\nline 2\rline 3 & more',
        contact=Party("c", "<img src=x onerror=alert(1)>", 'a"b@x.example', "<b>1</b>"),
        company=Party("co", "A&B <Co>"),
        deal=Party("d", "</p><script>"),
        url='https://crm.example/a?x=1&y="><script>',
    )
    content = render(evil).event["body"]["content"]
    assert "<script" not in content and "<img" not in content and "<b>1</b>" not in content
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;<br>line 2<br>line 3 &amp; more" in content
    assert "&lt;img src=x onerror=alert(1)&gt;" in content
    assert 'href="mailto:a%22b@x.example"' in content
    assert "A&amp;B &lt;Co&gt;" in content
    assert 'href="https://crm.example/a?x=1&amp;y=&quot;&gt;&lt;script&gt;"' in content


def test_subject_is_one_line_and_falls_back_to_the_type_name() -> None:
    assert render(replace(A, subject="Call\r\n  Ana\nnow")).event["subject"] == "Call Ana now"
    assert render(replace(A, subject="  ")).event["subject"] == "Llamada"


def test_optional_parts_absent() -> None:
    bare = replace(A, description="", contact=None, company=None, deal=None, location=None,
                   reminder_minutes=None)
    event = render(bare).event
    assert event["body"]["content"] == (
        '<html><body><p style="color:#888888">──────── CRM ────────</p>'
        '<p><a href="https://crm.example/activities/act-1">Abrir en el CRM</a></p>'
        '<p style="color:#888888">─────────────────────</p></body></html>')
    assert event["location"] == {"displayName": ""}  # sent, so a PATCH clears an old location
    assert event["isReminderOn"] is False and "reminderMinutesBeforeStart" not in event
    assert render(replace(A, reminder_minutes=0)).event["reminderMinutesBeforeStart"] == 0


def test_all_day_event() -> None:
    a = activity(all_day=True, start="2025-12-24", end="2025-12-26")
    event = render(a, mailbox_time_zone="Pacific Standard Time").event
    assert event["isAllDay"] is True
    assert event["start"] == {"dateTime": "2025-12-24T00:00:00", "timeZone": "Pacific Standard Time"}
    assert event["end"] == {"dateTime": "2025-12-26T00:00:00", "timeZone": "Pacific Standard Time"}


def test_time_notes_are_passed_on() -> None:
    a = activity(start="2025-03-30T02:30:00", end="2025-03-30T04:00:00")
    assert [n.kind for n in render(a).notes] == ["dst_gap"]


# --- identity on the event -------------------------------------------------------------------------

@pytest.mark.parametrize(("tenant", "activity_id", "value"), [
    ("tenant-1", "act-1", "tenant-1|act-1"),
    ("a|b", "c", "a%7Cb|c"),
    ("a", "b|c", "a|b%7Cc"),
    ("Acme", "X1", "%41cme|%581"),
    ("t", "100%", "t|100%25"),
    ("t", "ñ'é", "t|%C3%B1%27%C3%A9"),
])
def test_property_value_format(tenant: str, activity_id: str, value: str) -> None:
    assert property_value(tenant, activity_id) == value
    assert parse_property_value(value) == (tenant, activity_id)


@pytest.mark.parametrize("value", ["", "a", "a|b|c", "|b", "a|", "a|%zz", "a|%FF", "A|b", "a|%2f"])
def test_values_that_are_not_ours(value: str) -> None:
    assert parse_property_value(value) is None


ids = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(a=st.tuples(ids, ids), b=st.tuples(ids, ids))
def test_property_values_differ_even_ignoring_case(a: tuple[str, str], b: tuple[str, str]) -> None:
    # Graph compares the value case-insensitively (graph-facts §3.5).
    va, vb = property_value(*a), property_value(*b)
    assert parse_property_value(va) == a
    assert "'" not in va and va.count("|") == 1
    assert (va.lower() == vb.lower()) == (a == b)


def test_transaction_id_is_deterministic_and_distinct() -> None:
    tx = transaction_id("t", "u", "a", 1)
    assert tx == transaction_id("t", "u", "a", 1)
    assert str(uuid.UUID(tx)) == tx and len(tx) == 36
    others = {transaction_id(*args) for args in [("t", "u", "a", 2), ("t", "u", "b", 1), ("t", "v", "a", 1),
                                                 ("s", "u", "a", 1), ("t|u", "", "a", 1), ("t", "u|a", "", 1)]}
    assert tx not in others and len(others) == 6


# --- content hash ----------------------------------------------------------------------------------

def test_hash_ignores_key_order_and_create_only_fields() -> None:
    event = render().event
    shuffled = dict(reversed(list(event.items())))
    shuffled["start"] = dict(reversed(list(event["start"].items())))
    assert content_hash(shuffled) == content_hash(event)
    assert content_hash({**event, "transactionId": "other",
                         "singleValueExtendedProperties": []}) == content_hash(event)
    assert content_hash(patch_body(event)) == content_hash(event)
    assert "transactionId" not in patch_body(event)
    # A PATCH carries the version it writes, never our mark (set once, at the create).
    assert patch_body(event)["singleValueExtendedProperties"] == [{"id": VERSION_PROPERTY_ID, "value": "1"}]
    assert render(generation=5).content_hash == render(generation=1).content_hash


@pytest.mark.parametrize("change", [
    {"subject": "Other"}, {"description": "Other"}, {"location": "Elsewhere"}, {"reminder_minutes": 30},
    {"reminder_minutes": None}, {"contact": None}, {"company": Party("co-3", "Acme SA")},
    {"deal": Party("deal-9", "Renewal 2026")}, {"url": "https://crm.example/activities/act-2"},
])
def test_hash_changes_when_visible_content_changes(change: dict) -> None:
    assert render(replace(A, **change)).content_hash != render().content_hash


def test_hash_changes_with_times_zone_and_locale() -> None:
    base = render().content_hash
    assert render(activity(end="2025-03-10T10:00:00+01:00")).content_hash != base
    assert render(mailbox_time_zone="GMT Standard Time").content_hash != base
    assert render(locale="en").content_hash != base
    assert render(replace(A, type=replace(A.type, name="Visita"))).content_hash != base
