"""Issue 10: generated bad input straight into the HTTP functions, in process, against Azurite.

Hypothesis (seeded, derandomized) builds well over 10,000 bad requests for ``POST /api/crm/events``,
the connection API (connect, disconnect, status) and Graph's webhooks: malformed JSON, wrong
types, huge fields, unicode and markup, unknown zones, end before start, DST-gap times combined
with a bad field, bad and stale signatures, unknown users and subscriptions. Every answer is a
4xx (never a 5xx or an exception) that names the problem - JSON ``{error, message}``, plus
``fields`` for a 400 of validation - or Graph's documented 202 / text/plain 400; and the stored
state (every table's rows, every queue's depth) is the same afterwards. Valid requests replayed
(the same signed bytes, so the same ``X-Request-Id``) are refused with 409 and change nothing
either; the same event under a new request id is answered ``duplicate``. A signed request's id is
remembered (``RequestIds``) even when its body is refused, so that table is left out of the
before/after comparison.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
import uuid
import zoneinfo
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any, get_args

import azure.functions as func
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from functions import crm_api, crm_events, graph_webhooks
from local.azurite import Azurite
from local.dev_settings import service_environment
from shared import services
from shared.rules import crm_signature, queues
from shared.rules.model import EventType
from shared.rules.settings import load
from shared.store import tables
from tests.e2e.push.conftest import BASE_ACTIVITY

pytestmark = pytest.mark.integration

BASE_URL = "http://127.0.0.1:7071"
EVENTS = "/api/crm/events"
COUNTS: Counter = Counter()  # examples run per target, reported at the end
NAMED: Counter = Counter()  # validation 400s whose named fields were checked against the broken ones
FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
ZONES = zoneinfo.available_timezones()


def handler(builder: Any) -> Any:
    return builder._function.get_user_function()


CRM_EVENTS = handler(crm_events.crm_events)
CONNECT, DISCONNECT, STATUS = (handler(crm_api.connect), handler(crm_api.disconnect), handler(crm_api.status))
NOTIFICATIONS, LIFECYCLE = (
    handler(graph_webhooks.graph_notifications),
    handler(graph_webhooks.graph_lifecycle),
)


class _NoIdentity:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a bad request reached the identity provider ({name})")


@pytest.fixture(scope="module")
def deps(azurite: Azurite, test_secrets: dict[str, str]) -> Iterator[services.Services]:
    env = service_environment(
        storage_connection_string=azurite.connection_string,
        host_port=7071,
        crm_callback_url="http://127.0.0.1:9/unused",
        secrets_=test_secrets,
        return_origins="https://crm.example.com",
    )
    built = services.AppServices(load(env))
    built.__dict__["identity"] = _NoIdentity()  # bad input must never get as far as Microsoft
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(services, "get", lambda: built)
        yield built
    print(f"\nfuzzed in process: {dict(COUNTS)}, total {sum(COUNTS.values())}; fields checked: {dict(NAMED)}")


def snapshot(storage: Any) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for name in tables.TABLE_NAMES:
        if name == tables.REQUEST_IDS:
            continue  # every signed request's id is remembered, whatever its body
        rows = storage.table(name).list_entities()
        state[name] = sorted(json.dumps({k: str(v) for k, v in row.items()}, sort_keys=True) for row in rows)
    for name in queues.QUEUE_NAMES:
        for queue in (name, f"{name}-poison"):
            state[queue] = storage.queue(queue).get_queue_properties().approximate_message_count
    return state


@pytest.fixture(scope="module")
def unchanged(deps: services.Services) -> Iterator[None]:
    """Stored state before every fuzz test of this module equals the state after all of them."""
    before = snapshot(deps.storage)
    yield
    after = snapshot(deps.storage)
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, f"bad input changed stored state: {changed}"


def request(
    method: str,
    path: str,
    body: bytes = b"",
    *,
    secret: str | None,
    signature: str | None = None,
    route: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    when: float | None = None,
    request_id: str | None = None,
) -> func.HttpRequest:
    request_id = request_id or uuid.uuid4().hex
    headers = {"Content-Type": "application/json", crm_signature.REQUEST_ID_HEADER: request_id}
    if signature is not None:
        headers[crm_signature.HEADER] = signature
    elif secret:
        headers[crm_signature.HEADER] = crm_signature.sign(
            secret, method, path, body, when or time.time(), request_id
        )
    return func.HttpRequest(
        method=method,
        url=BASE_URL + path,
        headers=headers,
        params=params or {},
        route_params=route or {},
        body=body,
    )


def assert_names_the_problem(
    answer: func.HttpResponse, what: str, broken: frozenset[str] | None = None
) -> dict[str, Any]:
    """A 4xx Problem body; with ``broken`` (the fields the strategy broke, as the service spells
    field paths), a validation 400 must name every one of them and nothing else."""
    COUNTS[what] += 1
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.get_body()[:500])
    assert answer.mimetype == "application/json"
    body = json.loads(answer.get_body())
    assert isinstance(body.get("error"), str) and body["error"]
    assert isinstance(body.get("message"), str) and body["message"]
    if answer.status_code == 400 and body["error"] == "invalid_request":
        assert body["fields"] and all(f["field"] and f["message"] for f in body["fields"]), body
        if broken is not None:
            named = {f["field"] for f in body["fields"]}
            for field in broken:
                assert any(names(n, field) for n in named), (field, body)
            for field in named:
                assert any(names(field, b) for b in broken), (field, broken, body)
            NAMED[what] += 1
    return body


def names(named: str, broken: str) -> bool:
    """``named`` (a field the service named) is ``broken`` or a part of it (``data.type.name``)."""
    return named == broken or named.startswith((f"{broken}.", f"{broken}["))


# --- strategies ------------------------------------------------------------------------------------

TEXTS = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40
)  # any unicode, markup included
MARKUP = st.sampled_from(
    ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "{{7*7}}", "${jndi:ldap://x}", "&amp;"]
)
NOT_A_ZONE = st.one_of(
    st.sampled_from(["Mars/Olympus_Mons", "../../etc/passwd", "Europe/Madrid\x00", "UTC+25", "", " "]),
    TEXTS.filter(lambda z: z not in ZONES),
)
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    TEXTS,
    st.lists(st.integers(), max_size=3),
)
CONTROL = st.sampled_from(["\x00", "\x01", "\x07", "\x1b", "\x0b"]).map(lambda c: f"a{c}b")
HUGE = st.integers(min_value=300, max_value=5_000).map(lambda n: "Ω<" * n)

DST_GAP_START = "2027-03-14T02:30:00"  # in New York's spring-forward gap
END_BEFORE_START = "one second before the start"  # made so once the start is known
# (path inside the envelope, bad values): each one alone makes the event invalid.
BAD_FIELDS: list[tuple[tuple[str, ...], st.SearchStrategy[Any]]] = [
    (("id",), st.one_of(st.integers(), st.just(""), st.text(min_size=257, max_size=300), CONTROL, st.none())),
    (("tenant_id",), st.one_of(st.integers(), st.just(""), CONTROL, st.lists(TEXTS), st.none())),
    (("type",), TEXTS.filter(lambda t: t not in get_args(EventType))),
    (("occurred_at",), st.one_of(TEXTS, st.integers(), st.just("2027-13-45T25:61:00Z"), st.none())),
    (("data",), st.one_of(st.none(), TEXTS, st.integers(), st.lists(st.integers()))),
    (("data", "id"), st.one_of(st.integers(), st.just(""), CONTROL, HUGE)),
    (
        ("data", "version"),
        st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63), TEXTS, st.floats()),
    ),
    (("data", "owner_user_id"), st.one_of(st.integers(), st.just(""), CONTROL)),
    (("data", "type"), st.one_of(TEXTS, st.integers(), st.just({"id": "x"}), st.just({}))),
    (("data", "status"), TEXTS.filter(lambda s: s not in ("planned", "completed", "cancelled"))),
    (("data", "show_in_calendar"), st.one_of(TEXTS, st.integers(), st.lists(st.booleans(), min_size=1))),
    (("data", "subject"), st.one_of(HUGE, CONTROL, st.integers(), st.none(), st.just("\ud800"))),
    (
        ("data", "description"),
        st.one_of(st.integers(min_value=33_000, max_value=60_000).map("d".__mul__), CONTROL),
    ),
    (
        ("data", "start"),
        st.one_of(TEXTS, st.integers(), st.just("1899-12-31T10:00:00"), st.just("2027-02-30T10:00")),
    ),
    (("data", "end"), st.one_of(TEXTS, st.integers(), st.just(END_BEFORE_START))),
    (("data", "time_zone"), NOT_A_ZONE),
    (("data", "all_day"), st.one_of(TEXTS, st.integers(min_value=2))),
    (("data", "reminder_minutes"), st.one_of(st.integers(max_value=-1), st.integers(min_value=40321), TEXTS)),
    (("data", "url"), st.sampled_from(["javascript:alert(1)", "ftp://x/y", "//evil.example", "", "http://"])),
    (("data", "contact", "email"), st.sampled_from(["not an email", "a@b@c", "<x@y>", "x" * 300 + "@y.z"])),
    (("data", "deal"), st.one_of(TEXTS, st.integers(), st.just({"name": "no id"}))),
]
# Changes that keep the event valid: mixed in so the bad field is not the only thing unusual.
NOISE: list[tuple[tuple[str, ...], st.SearchStrategy[Any]]] = [
    (("data", "subject"), st.one_of(MARKUP, TEXTS.filter(lambda t: t.strip() and t.isprintable()))),
    (("data", "description"), st.one_of(MARKUP, TEXTS.filter(str.isprintable))),
    (("data", "contact", "name"), MARKUP),
    (("data", "owner_user_id"), st.uuids().map(lambda u: f"unknown/{u}")),  # nobody we know
    (("tenant_id",), st.uuids().map(lambda u: f"tenant-{u}")),
    (("data", "time_zone"), st.just("America/New_York")),  # with a start in its DST gap:
    (("data", "start"), st.just(DST_GAP_START)),  # (with its end moved after it)
    (("data", "unknown_extra"), JUNK),
]


def base_envelope() -> dict[str, Any]:
    data = copy.deepcopy(BASE_ACTIVITY)
    data["owner_user_id"] = "fuzz-user"
    return {
        "id": "evt-fuzz",
        "type": "activity.upserted",
        "tenant_id": "tenant-fuzz",
        "occurred_at": "2026-11-27T10:00:00Z",
        "data": data,
    }


def put(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        if not isinstance(target.get(key), dict):
            return  # a parent already replaced by junk: that is bad enough
        target = target[key]
    target[path[-1]] = value


@st.composite
def bad_envelopes_named(draw: st.DrawFn) -> tuple[bytes, frozenset[str]]:
    """An invalid event and the fields it broke (``data.start``), those a broken parent hides left out."""
    body = base_envelope()
    for path, values in draw(st.lists(st.sampled_from(NOISE), max_size=3)):
        put(body, path, draw(values))
    if body["data"]["start"] == DST_GAP_START:  # noise must stay valid: the end after the start
        body["data"]["end"] = "2027-03-14T04:00:00"
    bad = draw(st.lists(st.sampled_from(BAD_FIELDS), min_size=1, max_size=3))
    for path, values in bad:
        put(body, path, draw(values))
    if draw(st.booleans()) and body.get("data") and isinstance(body["data"], dict):
        for path, _ in bad:  # sometimes the bad field is simply missing (null counts as absent)
            if path[0] == "data" and len(path) == 2 and path[1] in ("id", "version", "subject", "start"):
                body["data"].pop(path[1], None)
    data = body.get("data")
    only_order = False  # the end's one fault is being before the start
    if isinstance(data, dict) and data.get("end") == END_BEFORE_START:
        with contextlib.suppress(KeyError, TypeError, ValueError):  # a broken start leaves the text: still bad
            data["end"] = (datetime.fromisoformat(data["start"]) - timedelta(seconds=1)).isoformat()
            only_order = True
    raw = json.dumps(body, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    broken = {".".join(path) for path, _ in bad if reachable(body, path)}
    if only_order and broken & {"data.start", "data.time_zone", "data.all_day"} and not _year_out_of_range(data):
        broken.discard("data.end")  # start and end are compared only once both can be read
    if "type" in broken:  # an unknown event type: its data cannot be checked against a type's schema
        broken = {field for field in broken if not field.startswith("data.")}
    return raw, frozenset(broken)


def _year_out_of_range(data: dict[str, Any]) -> bool:
    """The end made one second before a start of year 2200 (a broken start) is itself broken."""
    from shared.rules.json_fields import YEARS

    try:
        return not YEARS[0] <= datetime.fromisoformat(data["end"]).year <= YEARS[1]
    except (KeyError, TypeError, ValueError):
        return False


def reachable(body: dict[str, Any], path: tuple[str, ...]) -> bool:
    """Every parent of ``path`` is still an object (a later bad value may have replaced one)."""
    target: Any = body
    for key in path[:-1]:
        target = target.get(key) if isinstance(target, dict) else None
    return isinstance(target, dict)


def bad_envelopes() -> st.SearchStrategy[bytes]:
    return bad_envelopes_named().map(lambda made: made[0])


MALFORMED = st.one_of(
    st.binary(max_size=200),
    st.just(b'{"id": '),
    st.just(b"\xff\xfe{}"),
    st.sampled_from([b"null", b"[]", b"42", b'"text"', b"true", b"{}", b'{"data": {}}']),
    st.recursive(
        JUNK, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXTS, inner, max_size=3)
    ).map(lambda v: json.dumps(v).encode()),
)


# --- the tests ------------------------------------------------------------------------------------


@settings(FUZZ, max_examples=4500)
@given(made=st.one_of(bad_envelopes_named(), MALFORMED.map(lambda raw: (raw, None))))
def test_bad_crm_events_get_a_4xx_that_names_the_problem(deps, unchanged, made: tuple[bytes, Any]) -> None:
    body, broken = made
    secret = deps.settings.crm_shared_secrets[0]
    answer = CRM_EVENTS(request("POST", EVENTS, body, secret=secret))
    assert_names_the_problem(answer, "crm_events: bad body", broken)


def test_most_bad_bodies_had_their_broken_fields_checked() -> None:
    """Runs after the test above (file order): the field check was not vacuous."""
    assert NAMED["crm_events: bad body"] >= 0.5 * COUNTS["crm_events: bad body"], (NAMED, COUNTS)


@settings(FUZZ, max_examples=2200)
@given(
    header=st.one_of(
        st.none(),
        st.just(""),
        TEXTS,
        st.builds(
            lambda t, h: f"t={t},v2={h}",
            st.integers(0, 2**40),
            st.text("0123456789abcdef", min_size=64, max_size=64),
        ),
        # 10 s past the 300 s window: the handler reads its clock after the signer did, and on a
        # loaded machine 301 s ahead once arrived as 299 s (a valid signature, then a 400).
        st.integers(310, 10**6).map(lambda age: ("stale", age)),
        st.integers(310, 10**6).map(lambda ahead: ("future", ahead)),
        st.sampled_from(["other-body", "other-path", "other-method", "other-secret", "other-request-id"]),
    ),
    body=st.one_of(bad_envelopes(), st.just(json.dumps(base_envelope()).encode())),
)
def test_bad_signatures_get_401_and_change_nothing(deps, unchanged, header: Any, body: bytes) -> None:
    """Even a valid event (that would be queued) is refused without the right signature."""
    secret = deps.settings.crm_shared_secrets[0]
    now, rid = time.time(), uuid.uuid4().hex
    if isinstance(header, tuple):
        kind, seconds = header
        signed = crm_signature.sign(
            secret, "POST", EVENTS, body, now - seconds if kind == "stale" else now + seconds, rid
        )
    elif header in ("other-body", "other-path", "other-method", "other-secret", "other-request-id"):
        signed = crm_signature.sign(
            "not-the-secret" if header == "other-secret" else secret,
            "GET" if header == "other-method" else "POST",
            "/api/crm/events?x=1" if header == "other-path" else EVENTS,
            body + b" " if header == "other-body" else body,
            now,
            rid + "0" if header == "other-request-id" else rid,
        )
    else:
        signed = header
    answer = CRM_EVENTS(request("POST", EVENTS, body, secret=None, signature=signed, request_id=rid))
    assert answer.status_code == 401
    assert assert_names_the_problem(answer, "crm_events: bad signature")["error"] == "invalid_signature"


IDS = st.one_of(
    st.sampled_from(["", "a\x00b", "x" * 300, "..%2F..%2Fetc", "%2F"]),
    TEXTS,
    st.uuids().map(str),
)


@st.composite
def bad_connects(draw: st.DrawFn) -> bytes:
    body: dict[str, Any] = {
        "return_url": "https://crm.example.com/back",
        "time_zone": "Europe/Madrid",
        "locale": "es",
    }
    choice = draw(st.integers(0, 5))
    if choice == 0:
        body["return_url"] = draw(
            st.one_of(
                st.sampled_from(
                    [
                        "https://evil.example/phish",
                        "https://crm.example.com.evil.example/",
                        "https://crm.example.com@evil.example/",
                        "javascript:alert(1)",
                        "//evil.example",
                        "http://crm.example.com/",  # another scheme is another origin
                        "data:text/html,<script>alert(1)</script>",
                    ]
                ),
                st.integers(),
            )
        )
    elif choice == 1:
        body["time_zone"] = draw(NOT_A_ZONE)
    elif choice == 2:
        body["locale"] = draw(st.one_of(st.integers(), st.lists(TEXTS), st.text(min_size=36, max_size=60)))
    elif choice == 3:
        body["login_hint"] = draw(st.one_of(st.integers(), st.lists(TEXTS, min_size=1), st.just("x" * 2000)))
    elif choice == 4:
        return draw(MALFORMED)
    else:
        body.pop("time_zone")  # required; locale defaults to es
    return json.dumps(body).encode()


@settings(FUZZ, max_examples=1500)
@given(tenant=IDS, user=IDS, body=bad_connects())
def test_bad_connect_requests_are_refused_before_any_sign_in_starts(
    deps, unchanged, tenant: str, user: str, body: bytes
) -> None:
    from urllib.parse import quote

    path = f"/api/tenants/{quote(tenant, safe='')}/users/{quote(user, safe='')}/connect"
    secret = deps.settings.crm_shared_secrets[0]
    answer = CONNECT(request("POST", path, body, secret=secret, route={"tenant": tenant, "user": user}))
    assert_names_the_problem(answer, "connect: bad body or ids")


def _empty_or_object(body: bytes) -> bool:
    """An empty body, null or any JSON object (unknown fields ignored) is a valid disconnect."""
    try:
        return body.strip() == b"" or json.loads(body) is None or isinstance(json.loads(body), dict)
    except ValueError:
        return False


@settings(FUZZ, max_examples=800)
@given(
    tenant=IDS,
    user=IDS,
    body=st.one_of(
        MALFORMED.filter(lambda b: not _empty_or_object(b)),
        st.builds(
            lambda v: json.dumps({"remove_events": v}).encode(),
            JUNK.filter(lambda v: v not in ("none", "future", "all", None)),
        ),
    ),
)
def test_bad_disconnects_are_refused(deps, unchanged, tenant: str, user: str, body: bytes) -> None:
    from urllib.parse import quote

    path = f"/api/tenants/{quote(tenant, safe='')}/users/{quote(user, safe='')}/disconnect"
    secret = deps.settings.crm_shared_secrets[0]
    answer = DISCONNECT(request("POST", path, body, secret=secret, route={"tenant": tenant, "user": user}))
    assert_names_the_problem(answer, "disconnect: bad body")


@settings(FUZZ, max_examples=500)
@given(tenant=IDS, user=IDS, signed=st.booleans())
def test_status_of_unknown_users_or_bad_ids_never_fails(
    deps, unchanged, tenant: str, user: str, signed: bool
) -> None:
    from urllib.parse import quote

    path = f"/api/tenants/{quote(tenant, safe='')}/users/{quote(user, safe='')}/status"
    secret = deps.settings.crm_shared_secrets[0] if signed else None
    answer = STATUS(request("GET", path, secret=secret, route={"tenant": tenant, "user": user}))
    if answer.status_code == 200:
        COUNTS["status: unknown user"] += 1
        assert signed and json.loads(answer.get_body())["state"] == "never_connected"
    else:
        assert_names_the_problem(answer, "status: bad ids or unsigned")


NOTIFICATION = st.fixed_dictionaries(
    {
        "subscriptionId": st.one_of(st.uuids().map(str), TEXTS, st.integers(), st.none()),
        "clientState": st.one_of(TEXTS, st.none(), st.integers()),
        "changeType": st.one_of(st.sampled_from(["created", "updated", "deleted"]), TEXTS),
        "resource": TEXTS,
        "lifecycleEvent": st.one_of(st.none(), st.sampled_from(["missed", "subscriptionRemoved"]), TEXTS),
    }
)


@settings(FUZZ, max_examples=1200)
@given(
    body=st.one_of(
        MALFORMED,
        st.lists(st.one_of(NOTIFICATION, JUNK), max_size=5).map(lambda v: json.dumps({"value": v}).encode()),
    ),
    lifecycle=st.booleans(),
)
def test_forged_or_malformed_graph_notifications_enqueue_nothing(
    deps, unchanged, body: bytes, lifecycle: bool
) -> None:
    answer = (LIFECYCLE if lifecycle else NOTIFICATIONS)(
        request(
            "POST", "/api/graph/lifecycle" if lifecycle else "/api/graph/notifications", body, secret=None
        )
    )
    COUNTS["graph webhooks: forged or malformed"] += 1
    assert answer.status_code in (202, 400), answer.status_code
    if answer.status_code == 400:
        assert answer.mimetype == "text/plain" and answer.get_body()


@settings(FUZZ, max_examples=800)
@given(token=st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300) | MARKUP)
def test_validation_tokens_are_echoed_as_plain_text_only(deps, unchanged, token: str) -> None:
    answer = NOTIFICATIONS(
        request("POST", "/api/graph/notifications", b"", secret=None, params={"validationToken": token})
    )
    COUNTS["graph webhooks: validationToken"] += 1
    assert answer.status_code == 200
    assert answer.mimetype == "text/plain" and answer.get_body().decode() == token
    assert answer.headers.get("X-Content-Type-Options") == "nosniff"


@settings(FUZZ, max_examples=50)
@given(token=st.text(min_size=1025, max_size=5000))
def test_overlong_validation_tokens_are_not_echoed(deps, unchanged, token: str) -> None:
    answer = NOTIFICATIONS(
        request("POST", "/api/graph/notifications", b"", secret=None, params={"validationToken": token})
    )
    assert answer.status_code == 400 and token.encode() not in answer.get_body()


def test_a_replayed_signed_event_is_a_duplicate_and_changes_nothing(deps) -> None:
    secret = deps.settings.crm_shared_secrets[0]
    body = base_envelope()
    body["id"] = f"evt-replay-{time.time_ns()}"
    body["tenant_id"] = f"tenant-replay-{time.time_ns()}"
    raw = json.dumps(body).encode()
    first = request("POST", EVENTS, raw, secret=secret)
    assert json.loads(CRM_EVENTS(first).get_body())["status"] == "accepted"
    before = snapshot(deps.storage)
    replayed_ids = list(deps.storage.table(tables.REQUEST_IDS).list_entities())
    for _ in range(50):  # the very same signed bytes, as an attacker who captured them would send
        again = CRM_EVENTS(first)
        COUNTS["crm_events: replay"] += 1
        assert again.status_code == 409 and json.loads(again.get_body())["error"] == "replayed_request"
    retried = CRM_EVENTS(request("POST", EVENTS, raw, secret=secret))  # the CRM's retry: a new request id
    assert retried.status_code == 202 and json.loads(retried.get_body())["status"] == "duplicate"
    assert snapshot(deps.storage) == before
    assert len(list(deps.storage.table(tables.REQUEST_IDS).list_entities())) == len(replayed_ids) + 1
    stale = request("POST", EVENTS, raw, secret=secret, when=time.time() - 301)
    assert CRM_EVENTS(stale).status_code == 401  # a replay after the 300 s window is refused
    # Undo the one accepted event (no host runs here), so the module's state check still holds.
    queue = deps.storage.queue(queues.ACTIVITY_SYNC)
    for message in queue.receive_messages(max_messages=32, visibility_timeout=1):
        if body["id"].encode() in message.content:
            queue.delete_message(message)
    deps.storage.table(tables.DEDUP).delete_entity(tables.key(body["tenant_id"]), tables.key(body["id"]))
