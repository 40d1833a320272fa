"""Property: whatever the CRM's IANA zone and the mailbox's Windows zone, around DST transitions
(1990-2037) and at any other time, the instant the emulator stores for our event equals the
activity's instant, and all-day dates never move. Runs the real plan + apply code against the
in-process Graph emulator.

The oracle is independent of the product's zone table: the mailbox zones and the model's reading
of them come from CLDR windowsZones as Babel ships it (the emulator's source too), not from
``tzlocal.windows_tz``, which the product uses (tests/unit/test_windows_zones.py compares them)."""

from __future__ import annotations

import functools
import uuid
import zoneinfo
from datetime import UTC, date, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import msal
import pytest
import requests
from babel.core import get_global
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from shared.flows import push_apply
from shared.outlook.graph import GraphClient
from shared.outlook.mailbox_client import PREFER
from shared.rules.contract import parse_activity
from shared.rules.event_time import is_iana_zone
from shared.rules.sync_plan import UserContext, plan_upsert

pytestmark = [
    pytest.mark.integration,
    # These sign in with the identity platform's default response mode (query), on purpose; the
    # service itself asks for form_post (shared/outlook/identity.py).
    pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning"),
]
REDIRECT = "http://localhost:7071/api/auth/callback"
IANA = sorted(
    z for z in zoneinfo.available_timezones() if is_iana_zone(z) and "/" in z and not z.startswith("Etc/")
)
CLDR_WINDOWS = get_global("windows_zone_mapping")  # Windows id -> IANA, CLDR "001" rows
WINDOWS = sorted(CLDR_WINDOWS)
# 200 examples a run, drawn with a seed that changes every day (the same all day, so a failure
# reproduces): the runs cover ever more cases instead of the same fixed few.
EXAMPLES = 200
SEED = date.today().toordinal()


@functools.cache
def transitions(zone_name: str) -> tuple[datetime, ...]:
    """UTC instants in 1990-2037 where the zone's offset changes (day steps, then 15 minutes)."""
    zone = zoneinfo.ZoneInfo(zone_name)
    found = []
    moment = datetime(1990, 1, 1, tzinfo=UTC)
    offset = moment.astimezone(zone).utcoffset()
    while moment.year < 2038:
        nxt = moment + timedelta(days=1)
        if nxt.astimezone(zone).utcoffset() != offset:
            minute = moment
            while minute.astimezone(zone).utcoffset() == offset:
                minute += timedelta(minutes=15)
            found.append(minute)
            offset = nxt.astimezone(zone).utcoffset()
        moment = nxt
    return tuple(found)


class Mailbox:
    calendar_id = None  # the default calendar
    mailbox_path = "me"  # a signed-in user (issue 19: app-only users are users/{id})

    def __init__(self, emulator, graph: GraphClient, token: str, oid: str) -> None:
        self.emulator, self.graph, self.token, self.oid = emulator, graph, token, oid

    def call(self, method, path, *, json=None, params=None):
        return self.graph.call(self.token, method, path, json=json, params=params, headers=PREFER)


@pytest.fixture(scope="module")
def mailbox(emulator) -> Mailbox:
    control = emulator.control
    app = control.add_app(redirect_uris=[REDIRECT])
    upn = f"prop-{uuid.uuid4().hex[:8]}@contoso.example"
    user = control.add_user(upn, time_zone="UTC")
    client = msal.ConfidentialClientApplication(
        app["client_id"],
        client_credential=app["client_secret"],
        authority=f"{emulator.authority_host}/common",
        instance_discovery=False,
    )
    flow = client.initiate_auth_code_flow(["Calendars.ReadWrite"], redirect_uri=REDIRECT, login_hint=upn)
    answer = requests.get(flow["auth_uri"], verify=emulator.ca_path, allow_redirects=False, timeout=30)
    params = {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["Location"]).query).items()}
    token = client.acquire_token_by_auth_code_flow(flow, params)["access_token"]
    return Mailbox(emulator, GraphClient(emulator.graph_base), token, user["id"])


@st.composite
def cases(draw):
    crm_zone = draw(st.sampled_from(IANA))
    mailbox_zone = draw(st.sampled_from(WINDOWS))
    source = draw(st.sampled_from([crm_zone, CLDR_WINDOWS[mailbox_zone]]))
    around = transitions(source)
    if around and draw(st.integers(0, 3)):  # mostly next to a transition, sometimes anywhen
        base = draw(st.sampled_from(around))
    else:
        base = datetime(1990, 1, 1, tzinfo=UTC) + timedelta(hours=draw(st.integers(0, 48 * 365 * 24)))
    start = base + timedelta(minutes=15 * draw(st.integers(-12, 12)))
    minutes = 15 * draw(st.integers(0, 16))
    form = draw(st.sampled_from(["offset", "wall", "all_day"]))
    return crm_zone, mailbox_zone, start, minutes, form, draw(st.integers(1, 3))


def stored(mailbox: Mailbox, event_id: str) -> dict:
    return next(e for e in mailbox.emulator.control.events(mailbox.oid) if e["id"] == event_id)


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@seed(SEED)
@given(case=cases())
def test_the_stored_instant_is_the_activitys_instant(mailbox: Mailbox, case) -> None:
    crm_zone, mailbox_zone, start, minutes, form, days = case
    zone = zoneinfo.ZoneInfo(crm_zone)
    activity_id = f"p-{uuid.uuid4().hex[:12]}"
    data = {
        "id": activity_id,
        "version": 1,
        "owner_user_id": "u",
        "status": "planned",
        "subject": "P",
        "type": {"id": "t", "name": "T", "show_in_calendar": True},
        "time_zone": crm_zone,
        "url": "https://crm.example.com/a",
    }
    end = start + timedelta(minutes=minutes)
    if form == "offset":
        data.update(start=start.astimezone(zone).isoformat(), end=end.astimezone(zone).isoformat())
        expected = (start, end)
    elif form == "wall":
        walls = [v.astimezone(zone).replace(tzinfo=None) for v in (start, end)]
        if walls[1] < walls[0]:
            walls[1] = walls[0]  # a fold can turn the wall clock back; keep the activity valid
        data.update(start=walls[0].isoformat(), end=walls[1].isoformat())
        # The documented reading (RFC 5545 / zoneinfo fold=0): gaps use the offset before them.
        expected = tuple(w.replace(tzinfo=zone, fold=0).astimezone(UTC) for w in walls)
    else:
        first: date = start.astimezone(zone).date()
        data.update(all_day=True, start=first.isoformat(), end=(first + timedelta(days=days)).isoformat())
    activity = parse_activity(data)
    user = UserContext("tenant-p", "u", connected=True, mailbox_time_zone=mailbox_zone, locale="es")

    applied = push_apply.apply(mailbox, plan_upsert(activity, None, user))
    event = stored(mailbox, applied.link.outlook_event_id)
    mailbox.call("DELETE", f"me/events/{applied.link.outlook_event_id}")

    if form == "all_day":
        assert event["isAllDay"] is True
        assert event["start"]["dateTime"][:10] == data["start"]
        assert event["end"]["dateTime"][:10] == data["end"]
        assert event["originalStartTimeZone"] == mailbox_zone
    else:
        assert (instant(event["startUtc"]), instant(event["endUtc"])) == expected
