"""Online meeting types (issue 18): the pure decisions. Which provider, what the event asks Graph for,
what a later PATCH carries so the meeting keeps its join URL, and what the notes ignore."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shared.rules.contract import parse_crm_event
from shared.rules.event_notes import notes_of
from shared.rules.event_render import (
    ONLINE_UNAVAILABLE,
    cached_providers,
    join_block_html,
    meeting_provider,
    providers_cache,
)
from shared.rules.field_diff import shown_of
from shared.rules.sync_plan import (
    ONLINE_REQUESTED,
    UNCHANGED,
    Create,
    Nothing,
    Update,
    UserContext,
    adopt,
    after,
    join_url_of,
    plan_upsert,
)
from tests.unit.activity_builders import activity, envelope

MEETING = {"id": "type-meeting", "name": "Reunión", "show_in_calendar": True, "online_meeting": True}
WORK = UserContext("tenant-1", "user-1", connected=True, mailbox_time_zone="Romance Standard Time",
                   online_providers=("teamsForBusiness",))
PERSONAL = replace(WORK, online_providers=())
JOIN = "https://teams.microsoft.com/l/meetup-join/19%3ameeting_abc%40thread.v2/0"


@pytest.mark.parametrize(("allowed", "expected"), [
    (("teamsForBusiness",), "teamsForBusiness"),
    (("unknown", "skypeForBusiness", "teamsForBusiness"), "teamsForBusiness"),
    (("skypeForConsumer",), "skypeForConsumer"),
    ((), None),
    (("unknown",), None),
])
def test_the_provider_is_teams_when_the_calendar_allows_it_and_none_when_it_allows_none(allowed, expected):
    assert meeting_provider(allowed) == expected


def test_the_contract_reads_online_meeting_on_types_and_defaults_it_to_off():
    assert activity(type=MEETING).type.online_meeting is True
    assert activity().type.online_meeting is False
    update = parse_crm_event(envelope("activity_type.updated", MEETING)).data
    assert update.online_meeting is True
    without = {k: v for k, v in MEETING.items() if k != "online_meeting"}
    plain = parse_crm_event(envelope("activity_type.updated", without)).data
    assert plain.online_meeting is False


def test_the_contract_refuses_an_online_meeting_flag_that_is_not_a_boolean():
    with pytest.raises(Exception, match="online_meeting"):
        parse_crm_event(envelope("activity_type.updated", {**MEETING, "online_meeting": "yes"}))


def test_a_meeting_type_creates_an_online_teams_meeting():
    d = plan_upsert(activity(type=MEETING), None, WORK)
    assert isinstance(d.action, Create)
    assert d.action.event["isOnlineMeeting"] is True
    assert d.action.event["onlineMeetingProvider"] == "teamsForBusiness"
    assert d.online_meeting == ONLINE_REQUESTED


def test_a_personal_account_gets_no_meeting_and_unavailable():
    d = plan_upsert(activity(type=MEETING), None, PERSONAL)
    assert isinstance(d.action, Create)
    assert "isOnlineMeeting" not in d.action.event and "onlineMeetingProvider" not in d.action.event
    assert d.online_meeting == ONLINE_UNAVAILABLE


def test_a_plain_type_never_names_online_meetings_even_where_teams_is_allowed():
    d = plan_upsert(activity(), None, WORK)
    assert "isOnlineMeeting" not in d.action.event
    assert d.online_meeting is None


def test_the_join_url_from_the_answer_is_kept_on_the_link_only_for_a_meeting():
    meeting = plan_upsert(activity(type=MEETING), None, WORK)
    assert after(meeting, event_id="e1", change_key="k", join_url=JOIN).online_meeting_url == JOIN
    plain = plan_upsert(activity(), None, WORK)
    assert after(plain, event_id="e1", change_key="k", join_url=JOIN).online_meeting_url is None
    assert join_url_of({"onlineMeeting": {"joinUrl": JOIN}, "onlineMeetingUrl": None}) == JOIN
    assert join_url_of({"onlineMeeting": None}) is None


def test_a_reschedule_patches_the_times_and_carries_the_join_url_back_in_the_body():
    first = plan_upsert(activity(type=MEETING), None, WORK)
    link = after(first, event_id="e1", change_key="k", join_url=JOIN)
    moved = activity(type=MEETING, version=2, start="2025-03-10T11:00:00+01:00", end="2025-03-10T11:30:00+01:00")
    d = plan_upsert(moved, link, WORK)
    assert isinstance(d.action, Update)
    patch = d.action.patch
    assert patch["start"]["dateTime"].startswith("2025-03-10T11:00")
    assert patch["isOnlineMeeting"] is True  # never false
    assert patch["body"]["content"].count(JOIN) == 1  # the meeting keeps its link, written once
    assert after(d, change_key="k2", join_url=JOIN).online_meeting_url == JOIN


def test_the_same_version_again_writes_nothing_and_still_knows_the_link():
    first = plan_upsert(activity(type=MEETING), None, WORK)
    link = after(first, event_id="e1", change_key="k", join_url=JOIN)
    d = plan_upsert(activity(type=MEETING, version=2), link, WORK)
    assert isinstance(d.action, Nothing) and d.action.reason == UNCHANGED
    assert d.link.online_meeting_url == JOIN and d.online_meeting == ONLINE_REQUESTED


def test_a_create_found_by_lookup_keeps_the_meeting_it_already_has():
    d = adopt(plan_upsert(activity(type=MEETING), None, WORK), "e1", join_url=JOIN)
    assert isinstance(d.action, Update) and JOIN in d.action.patch["body"]["content"]


def test_a_type_turned_online_patches_the_existing_event_into_a_meeting():
    plain = plan_upsert(activity(), None, WORK)
    link = after(plain, event_id="e1", change_key="k")
    # Same name, same content: only the type's flag changed (a replay at the same version).
    turned = {"id": "type-call", "name": "Llamada", "show_in_calendar": True, "online_meeting": True}
    d = plan_upsert(activity(type=turned), link, WORK, replay=True)
    assert isinstance(d.action, Update) and d.action.patch["isOnlineMeeting"] is True


@pytest.mark.parametrize("outlook_block", [
    # as the emulator appends it
    '<div style="width:100%"><span style="white-space:nowrap">________________________________________</span>'
    '<div><b>Microsoft Teams meeting</b></div><div><a href="' + JOIN + '">Join the meeting now</a></div></div>',
    # Outlook's longer block, rule above and below, dial-in lines in between
    "<div>" + "_" * 80 + "</div><div><b>Reunión de Microsoft Teams</b></div><div>Únase desde su equipo</div>"
    '<div><a href="' + JOIN + '">Haga clic aquí para unirse</a></div><div>Id. de reunión: 123 456</div>'
    "<div>" + "_" * 80 + "</div>",
    join_block_html(JOIN, "en"),
])
def test_the_teams_block_is_not_part_of_the_users_notes(outlook_block):
    rendered = plan_upsert(activity(type=MEETING), None, WORK).action.event
    content = rendered["body"]["content"]
    with_block = content.replace("</body>", outlook_block + "</body>")
    assert notes_of({"contentType": "html", "content": with_block}) == notes_of(rendered["body"])
    shown = {**rendered, "body": {"contentType": "html", "content": with_block}}
    assert shown_of(shown) == shown_of(rendered)


def test_notes_typed_below_the_teams_block_still_count():
    rendered = plan_upsert(activity(type=MEETING), None, WORK).action.event
    block = join_block_html(JOIN, "es")
    content = rendered["body"]["content"].replace("</body>", block + "<p>Traer contrato</p></body>")
    # our block has no closing rule: everything after it is Outlook's, as in the emulator's shape
    assert "Traer contrato" not in notes_of({"contentType": "html", "content": content}).notes
    closed = rendered["body"]["content"].replace(
        "</body>", block + "<div>" + "_" * 40 + "</div><p>Traer contrato</p></body>")
    assert "Traer contrato" in notes_of({"contentType": "html", "content": closed}).notes


def test_the_providers_cache_is_per_calendar():
    cache = providers_cache("cal-1", ("teamsForBusiness",))
    assert cached_providers(cache, "cal-1") == ("teamsForBusiness",)
    assert cached_providers(cache, None) is None  # read for another calendar: read again
    assert cached_providers(providers_cache(None, ()), None) == ()
    assert cached_providers(None, None) is None
    assert cached_providers("{not json", None) is None
