"""Issue 16, pure parts: the user's notes read back from Outlook's HTML (shared/rules/event_notes.py),
the field view and diff (shared/rules/field_diff.py), the decisions built on them (reconcile_plan,
sync_plan) and the tenant settings document (shared/rules/tenant_settings.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from local.emulator.events import outlook_html
from shared.rules.contract import ValidationError
from shared.rules.event_notes import BLOCK_END, BLOCK_START, html_to_text, notes_of
from shared.rules.event_render import render_event
from shared.rules.field_diff import diff, reportable, shown_of
from shared.rules.reconcile_plan import (
    Changed,
    Echo,
    Gone,
    Touched,
    Tracked,
    callback_data,
    decide,
    edit_before_write,
    report_of,
    seen_of,
)
from shared.rules.sync_plan import ALREADY_SHOWN, Link, Nothing, Update, UserContext, after, plan_upsert
from shared.rules.tenant_settings import (
    CRM_TO_OUTLOOK,
    TWO_WAY,
    FieldDirections,
    from_stored,
    parse_settings,
    to_stored,
)
from tests.unit.activity_builders import activity

USER = UserContext("tenant-1", "user-1", connected=True, mailbox_time_zone="Romance Standard Time", locale="es")
SUBJECT_AND_LOCATION = FieldDirections(subject=TWO_WAY, location=TWO_WAY)


def rendered(**overrides: Any) -> dict[str, Any]:
    return render_event(activity(**overrides), tenant_id="tenant-1", user_id="user-1",
                        mailbox_time_zone="Romance Standard Time", locale="es").event


def as_outlook(event: dict[str, Any], change_key: str = "ck-1", **edits: Any) -> dict[str, Any]:
    """The event as Graph returns it after Exchange stored it (body rewritten), with user edits."""
    out = {**event, "id": "ev-1", "changeKey": change_key, "lastModifiedDateTime": "2027-01-10T09:00:00Z",
           "originalStartTimeZone": event["start"]["timeZone"]}
    out["body"] = {"contentType": "html", "content": outlook_html(event["body"]["content"])}
    out.update(edits)
    return out


# --- notes ---------------------------------------------------------------------------------------------


def test_our_body_reads_back_as_the_description_and_our_block() -> None:
    event = rendered(description="Llevar la lista de precios.\nConfirmar descuentos.")
    body = notes_of(event["body"])
    assert body.notes == "Llevar la lista de precios.\nConfirmar descuentos." and body.marked
    assert "Contacto: Ana Pérez" in body.block and "Abrir en el CRM" in body.block


def test_outlooks_rewrite_of_our_html_reads_back_the_same() -> None:
    event = rendered(description="Primera línea\n\nTras una línea en blanco  con dos espacios")
    rewritten = outlook_html(event["body"]["content"])
    assert rewritten != event["body"]["content"] and "<head>" in rewritten and "elementToProof" in rewritten
    assert notes_of({"contentType": "html", "content": rewritten}) == notes_of(event["body"])
    assert shown_of(as_outlook(event)) == shown_of(event)  # no change the user did not make


def test_word_html_from_outlook_for_windows_with_the_users_notes() -> None:
    word = (
        "<html xmlns:o=\"urn:schemas-microsoft-com:office:office\"><head><meta name=Generator content=\"Microsoft Word 15\">"
        "<style><!-- p.MsoNormal {margin:0cm; font-size:11.0pt;} --></style><!--[if gte mso 9]><xml><o:shapedefaults/>"
        "</xml><![endif]--></head><body lang=ES><div class=WordSection1>"
        "<p class=MsoNormal>Llevar la lista de precios.<o:p></o:p></p>"
        "<p class=MsoNormal>Ana pidió el contrato&nbsp; firmado.<o:p></o:p></p>"
        "<p class=MsoNormal><o:p>&nbsp;</o:p></p>"
        f"<p class=MsoNormal><span style='color:#888888'>{BLOCK_START}</span><o:p></o:p></p>"
        "<p class=MsoNormal><b>Contacto:</b> Ana Pérez<o:p></o:p></p>"
        f"<p class=MsoNormal>{BLOCK_END}<o:p></o:p></p>"
        "<p class=MsoNormal>Y una nota debajo.<o:p></o:p></p></div></body></html>"
    )
    body = notes_of({"contentType": "html", "content": word})
    assert body.notes == "Llevar la lista de precios.\nAna pidió el contrato firmado.\nY una nota debajo."
    assert body.block == "Contacto: Ana Pérez"


def test_outlook_on_the_web_markup_with_prefixed_ids_and_divs() -> None:
    owa = (
        '<html><head><meta http-equiv="Content-Type" content="text/html; charset=utf-8"></head><body>'
        '<div class="elementToProof" style="font-family: Aptos"><span>Nota nueva</span></div>'
        '<div class="elementToProof"><br></div>'
        '<div id="x_crm"><p class="elementToProof">' + BLOCK_START + "</p><p>Empresa: Acme</p><p>"
        + BLOCK_END + "</p></div></body></html>"
    )
    assert notes_of({"contentType": "html", "content": owa}).notes == "Nota nueva"


def test_a_user_who_deletes_our_block_keeps_all_their_text_as_notes() -> None:
    event = rendered(description="Llamar antes")
    html = event["body"]["content"]
    kept = html[: html.index('<p style="color:#888888">')] + "<p>Y otra cosa</p></body></html>"
    body = notes_of({"contentType": "html", "content": outlook_html(kept)})
    assert body.notes == "Llamar antes\nY otra cosa" and not body.marked and body.block == ""


def test_non_latin_text_and_entities_survive() -> None:
    text = "会議の前に資料を送る\nمرحبا بالعالم\nΣημείωση — ✓ 🚀 <no es html> & más"
    event = rendered(description=text)
    assert notes_of(as_outlook(event)["body"]).notes == text
    assert html_to_text("<p>&#26085;&#26412; &amp; &lt;b&gt;</p>") == "日本 & <b>"


def test_script_and_style_never_become_notes() -> None:
    assert html_to_text("<style>p{x:1}</style><script>alert(1)</script><p>visible</p>") == "visible"


# --- the field diff ------------------------------------------------------------------------------------


def test_subject_and_location_edits_are_the_only_changes_and_directions_filter_them() -> None:
    event = rendered()
    edited = as_outlook(event, "ck-user", subject="Nuevo título", location={"displayName": "Sala 2"})
    changes = diff(shown_of(event), shown_of(edited))
    assert changes == {"subject": ("Call Ana about the renewal", "Nuevo título"),
                       "location": ("Office", "Sala 2")}
    assert reportable(changes, FieldDirections()) == {}  # the defaults report times only
    assert reportable(changes, FieldDirections(subject=TWO_WAY)) == {
        "subject": {"from": "Call Ana about the renewal", "to": "Nuevo título"}}


def test_notes_and_reminder_changes() -> None:
    event = rendered(description="Antes", reminder_minutes=30)
    body = event["body"]["content"].replace("<p>Antes</p>", "<p>Antes</p><div>Después</div>")
    edited = as_outlook(event, "ck-user", body={"contentType": "html", "content": body}, isReminderOn=False)
    assert diff(shown_of(event), shown_of(edited)) == {
        "description": ("Antes", "Antes\nDespués"), "reminder_minutes": (30, None)}


def tracked_for(event: dict[str, Any], change_key: str = "ck-1") -> Tracked:
    link = Link("act-1", 4, outlook_event_id="ev-1", content_hash="h", change_key=change_key,
                shown=shown_of(event).to_json())
    return Tracked(link)


def test_several_edits_between_two_reconciles_are_one_net_change() -> None:
    event = rendered()
    mine = tracked_for(event)
    # renamed twice, moved to Sala 2 and back: only the last subject differs from what we knew
    last = as_outlook(event, "ck-5", subject="Segundo nombre")
    decision = decide(mine, seen_of(last), SUBJECT_AND_LOCATION)
    assert isinstance(decision, Changed)
    data = callback_data(decision)
    assert data["changes"] == {"subject": {"from": "Call Ana about the renewal", "to": "Segundo nombre"}}
    assert data["version"] == 4 and data["changed_at"] == "2027-01-10T09:00:00Z"
    assert {data["start"], data["end"], data["all_day"]} == {"2025-03-10T08:00:00Z", "2025-03-10T08:30:00Z", False}
    # an edit undone before the reconcile ran: nothing to report
    assert isinstance(decide(mine, seen_of(as_outlook(event, "ck-6")), SUBJECT_AND_LOCATION), Touched)
    assert isinstance(decide(mine, seen_of(as_outlook(event, "ck-1")), SUBJECT_AND_LOCATION), Echo)


def test_the_crms_echo_of_an_accepted_edit_needs_no_write() -> None:
    first = plan_upsert(activity(version=1), None, USER)
    link = after(first, event_id="ev-1", change_key="ck-1")
    assert link is not None and link.shown == shown_of(rendered()).to_json()
    # the reconcile read the user's edit: the link remembers what Outlook shows now
    edited = as_outlook(rendered(), "ck-user", subject="Nuevo título", location={"displayName": "Sala 2"})
    link = replace(link, change_key="ck-user", shown=shown_of(edited).to_json())
    accepted = plan_upsert(activity(version=2, subject="Nuevo título", location="Sala 2"), link, USER)
    assert accepted.action == Nothing(ALREADY_SHOWN)
    assert accepted.link is not None and accepted.link.version == 2 and accepted.link.shown == link.shown
    # ... and a later real change is written again
    later = plan_upsert(activity(version=3, subject="Otro"), accepted.link, USER)
    assert isinstance(later.action, Update)


def test_a_conflict_is_flagged_only_when_the_crm_changed_the_same_field() -> None:
    event = rendered()
    mine = tracked_for(event)
    users = seen_of(as_outlook(event, "ck-user", subject="Lo que escribió el usuario"))
    crm_same_field = shown_of(rendered(subject="Lo que cambió el CRM"))
    crm_other_field = shown_of(rendered(location="Sala 9"))
    flagged = edit_before_write(mine, users, crm_same_field, SUBJECT_AND_LOCATION)
    assert flagged is not None and flagged.conflict
    assert callback_data(flagged)["conflict"] is True
    assert callback_data(flagged)["changes"]["subject"]["to"] == "Lo que escribió el usuario"
    plain = edit_before_write(mine, users, crm_other_field, SUBJECT_AND_LOCATION)
    assert plain is not None and not plain.conflict and "conflict" not in callback_data(plain)
    assert edit_before_write(mine, users, crm_same_field, FieldDirections()) is None  # subject not two-way


def test_one_outlook_edit_reported_by_the_reconcile_and_by_a_push_is_one_report() -> None:
    """Found by the full wider chaos run (`chaos-480`, two `activity.changed_in_outlook` for one
    move): the reconcile and a push whose If-Match met the same edit each reported it. Reports of
    the same event state share an id, and the CRM de-duplicates on it."""
    event = rendered()
    mine = tracked_for(event)
    users = seen_of(as_outlook(event, "ck-user", subject="Lo que escribió el usuario"))
    by_reconcile = decide(mine, users, SUBJECT_AND_LOCATION)
    by_push = edit_before_write(mine, users, shown_of(rendered(subject="Lo que cambió el CRM")), SUBJECT_AND_LOCATION)
    assert isinstance(by_reconcile, Changed) and by_push is not None and by_push.conflict
    assert report_of("t", "u", by_reconcile) == report_of("t", "u", by_push)

    again = seen_of(as_outlook(event, "ck-user-2", subject="Otra vez"))  # a later edit: a new report
    later = decide(mine, again, SUBJECT_AND_LOCATION)
    assert isinstance(later, Changed)
    gone = Gone(mine)
    ids = {report_of("t", "u", by_reconcile)[1], report_of("t", "u", later)[1], report_of("t", "u", gone)[1],
           report_of("t", "other-user", by_reconcile)[1]}
    assert len(ids) == 4


# --- tenant settings -----------------------------------------------------------------------------------


def test_settings_default_and_replace_the_whole_document() -> None:
    assert parse_settings({}).as_json() == {"field_directions": {
        "subject": CRM_TO_OUTLOOK, "description": CRM_TO_OUTLOOK, "location": CRM_TO_OUTLOOK,
        "times": TWO_WAY, "reminder": CRM_TO_OUTLOOK},
        "capture_meetings": "off", "capture_body": False, "internal_domains": [],
        "dedicated_calendar_name": None}
    chosen = parse_settings({"field_directions": {"subject": "two_way", "times": "crm_to_outlook"}})
    assert chosen.field_directions == FieldDirections(subject=TWO_WAY, times=CRM_TO_OUTLOOK)


def test_capture_settings_are_parsed_and_stored_and_old_rows_read_as_off() -> None:
    chosen = parse_settings({"capture_meetings": "external", "capture_body": True,
                             "internal_domains": ["Contoso.COM.", "contoso.com", "fabrikam.co"]})
    assert (chosen.capture_meetings, chosen.capture_body, chosen.internal_domains) == (
        "external", True, ("contoso.com", "fabrikam.co"))
    assert from_stored(to_stored(chosen)) == chosen
    old_row = {"field_directions": to_stored(chosen)["field_directions"]}  # written before issue 17
    assert from_stored(old_row).capture_meetings == "off" and not from_stored(old_row).capturing


@pytest.mark.parametrize(("body", "fields"), [
    ({"field_directions": {"subject": "both"}}, ["field_directions.subject"]),
    ({"field_directions": {"colour": "two_way"}}, ["field_directions.colour"]),
    ({"field_directions": ["subject"]}, ["field_directions"]),
    ({"capture_meetings": "some"}, ["capture_meetings"]),
    ({"capture_body": "yes"}, ["capture_body"]),
    ({"internal_domains": "contoso.com"}, ["internal_domains"]),
    ({"internal_domains": ["contoso.com", "not a domain", "@x.com"]}, ["internal_domains[1]", "internal_domains[2]"]),
    ({"capture_all_the_things": True}, ["capture_all_the_things"]),
    ({"dedicated_calendar_name": ""}, ["dedicated_calendar_name"]),
    ({"dedicated_calendar_name": 7}, ["dedicated_calendar_name"]),
    ([], ["body"]),
])
def test_bad_settings_name_every_bad_field(body: Any, fields: list[str]) -> None:
    with pytest.raises(ValidationError) as error:
        parse_settings(body)
    assert [path for path, _ in error.value.errors] == fields
