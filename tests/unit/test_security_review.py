"""Issue 23: the security review's findings, each pinned by a test of the pure part or of the flow
with fakes (the HTTP-level checks are in tests/e2e/test_security.py)."""

from __future__ import annotations

import base64
import json
import secrets
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

from shared.flows import connect, notifications
from shared.rules import crm_signature
from shared.rules.errors import PermanentError, TransientError
from shared.rules.settings import SettingsError, load
from shared.store import tables, token_crypto

NOW = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)
KEY = base64.b64encode(bytes(range(32))).decode()
ENV = {
    "AzureWebJobsStorage": "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=x;",
    "MS_CLIENT_ID": "client",
    "MS_CLIENT_SECRET": "secret",
    "PUBLIC_BASE_URL": "https://sync.example.com",
    "CRM_SHARED_SECRET": secrets.token_hex(32),
    "CRM_CALLBACK_SECRET": secrets.token_hex(32),
    "CRM_CALLBACK_URL": "https://crm.example.com/hooks/calendar",
    "CRM_RETURN_ORIGINS": "https://crm.example.com",
    "TOKEN_ENCRYPTION_KEYS": f"k1:{KEY}",
}


# --- fakes -----------------------------------------------------------------------------------------


class Row(dict):
    def __init__(self, data: dict[str, Any], etag: str) -> None:
        super().__init__(data)
        self.metadata = {"etag": etag}


class FakeTable:
    """The TableClient methods the flows use, in memory; counts reads."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], dict[str, Any]] = {}
        self.etags: dict[tuple[str, str], int] = {}
        self.reads = 0

    def _put(self, entity: dict[str, Any]) -> dict[str, str]:
        k = (entity["PartitionKey"], entity["RowKey"])
        self.rows[k] = dict(entity)
        self.etags[k] = self.etags.get(k, 0) + 1
        return {"etag": str(self.etags[k])}

    def get_entity(self, partition_key: str, row_key: str, **_: Any) -> Row:
        self.reads += 1
        k = (partition_key, row_key)
        if k not in self.rows:
            raise ResourceNotFoundError("not found")
        return Row(self.rows[k], str(self.etags[k]))

    def create_entity(self, entity: dict[str, Any], **_: Any) -> dict[str, str]:
        if (entity["PartitionKey"], entity["RowKey"]) in self.rows:
            raise ResourceExistsError("exists")
        return self._put(entity)

    def upsert_entity(self, entity: dict[str, Any], **_: Any) -> dict[str, str]:
        return self._put(entity)

    def update_entity(self, entity: dict[str, Any], etag: str | None = None, **_: Any) -> dict[str, str]:
        k = (entity["PartitionKey"], entity["RowKey"])
        if k not in self.rows:
            raise ResourceNotFoundError("not found")
        if etag is not None and str(self.etags[k]) != etag:
            raise ResourceModifiedError("changed")
        return self._put(entity)

    def delete_entity(self, *args: Any, **_: Any) -> None:
        if args and isinstance(args[0], dict):
            k = (args[0]["PartitionKey"], args[0]["RowKey"])
        else:
            k = (args[0], args[1])
        self.rows.pop(k, None)

    def query_entities(self, *_: Any, **__: Any) -> list[Any]:
        return []

    def list_entities(self, *_: Any, **__: Any) -> list[Any]:
        return [Row(v, str(self.etags[k])) for k, v in self.rows.items()]


class FakeStorage:
    def __init__(self) -> None:
        self.tables: dict[str, FakeTable] = {}
        self.sent: list[tuple[str, str]] = []

    def table(self, name: str) -> FakeTable:
        return self.tables.setdefault(name, FakeTable())

    def send(self, queue_name: str, body: str | bytes, *, delay_seconds: int = 0) -> None:
        self.sent.append((queue_name, body if isinstance(body, str) else body.decode()))

    def check(self) -> dict[str, str]:
        return {}

    @property
    def reads(self) -> int:
        return sum(t.reads for t in self.tables.values())


class FakeIdentity:
    """Stores the token cache as the real one does (a Tokens row), never calls Microsoft."""

    def __init__(self, storage: FakeStorage) -> None:
        self.storage = storage
        self.redeemed: list[dict[str, Any]] = []

    def begin(self, login_hint: str | None) -> dict[str, Any]:
        state = secrets.token_urlsafe(16)
        return {"state": state, "auth_uri": f"https://login.example/authorize?state={state}", "code_verifier": "v"}

    def redeem(self, flow: dict[str, Any], auth_response: dict[str, str]) -> tuple[dict[str, Any], str]:
        self.redeemed.append(flow)
        return {"oid": "oid-1", "tid": "tid-1", "preferred_username": "ana@contoso.example"}, '{"cache": 1}'

    def access_token(self, tenant: str, user: str, *, force_refresh: bool = False) -> str:
        return "token"

    def save_cache(self, tenant: str, user: str, serialized: str, *, etag: str | None = None) -> None:
        self.storage.table(tables.TOKENS).upsert_entity(
            {"PartitionKey": tables.key(tenant), "RowKey": tables.key(user), "cache": "sealed"}
        )

    def forget(self, tenant: str, user: str) -> None:
        self.storage.table(tables.TOKENS).delete_entity(tables.key(tenant), tables.key(user))

    def refreshed_at(self, tenant: str, user: str) -> datetime | None:
        return None


class FailingGraph:
    def call(self, *_: Any, **__: Any) -> Any:
        raise TransientError("Graph is down")

    def batch(self, *_: Any, **__: Any) -> Any:
        raise TransientError("Graph is down")


def services(storage: FakeStorage | None = None) -> Any:
    storage = storage or FakeStorage()
    return SimpleNamespace(
        settings=load(ENV), storage=storage, identity=FakeIdentity(storage), graph=FailingGraph(), http=None,
        now=lambda: NOW,
    )


def tokens(deps: Any) -> list[Any]:
    return deps.storage.table(tables.TOKENS).list_entities()


# --- Graph webhook amplification --------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _fresh_caches() -> None:
    notifications._known.clear()
    getattr(notifications, "_unknown", {}).clear()


def test_a_body_of_unknown_subscription_ids_costs_a_bounded_number_of_reads() -> None:
    storage = FakeStorage()
    same = json.dumps({"value": [{"subscriptionId": "x"}] * 150}).encode()
    notifications.accept(storage, same, "change", NOW)
    notifications.accept(storage, same, "change", NOW)  # again: the unknown id is remembered
    assert storage.reads <= 1

    flood = json.dumps({"value": [{"subscriptionId": f"x{i}"} for i in range(5000)]}).encode()
    with pytest.raises(notifications.MalformedNotification):
        notifications.accept(storage, flood, "change", NOW)
    assert storage.reads <= 1 and storage.sent == []


# --- canonicalisation -------------------------------------------------------------------------------


def test_the_ambiguous_pair_no_longer_verifies() -> None:
    secret, rid, now = secrets.token_hex(32), "req-0123456789abcdef", 1_760_000_000
    header = crm_signature.sign(secret, "POST", "/api/crm/events", b".X", now, rid)
    with pytest.raises(crm_signature.SignatureError):
        crm_signature.verify(secret, header, "POST", "/api/crm/events.", b"X", now, rid)


# --- key ids ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kid", ["k.1", "a b", "x" * 33, "kid/1", "é"])
def test_a_key_id_that_breaks_the_blob_format_is_refused_at_start(kid: str) -> None:
    with pytest.raises(SettingsError, match="TOKEN_ENCRYPTION_KEYS"):
        load(ENV | {"TOKEN_ENCRYPTION_KEYS": f"{kid}:{KEY}"})


def test_blobs_in_the_existing_format_still_decrypt() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    keys = load(ENV | {"TOKEN_ENCRYPTION_KEYS": f"new_2:{base64.b64encode(b'2' * 32).decode()},k-1:{KEY}"})
    nonce = bytes(12)
    sealed = AESGCM(base64.b64decode(KEY)).encrypt(nonce, b"cache", b'["token-cache", "t", "u"]')
    old = "v1.k-1." + base64.urlsafe_b64encode(nonce).decode().rstrip("=") + "."
    old += base64.urlsafe_b64encode(sealed).decode().rstrip("=")
    assert token_crypto.decrypt(old, keys.token_encryption_keys, '["token-cache", "t", "u"]') == b"cache"
    assert token_crypto.key_id(old) == "k-1"


# --- pending sign-ins -------------------------------------------------------------------------------


def _pending(deps: Any, login_hint: str | None = None) -> tuple[str, FakeTable, dict[str, str]]:
    """A sign-in started by the CRM and opened in the user's browser: (state, flows, its cookies)."""
    request = connect.ConnectRequest("https://crm.example.com/back", "America/Bogota", "es", login_hint)
    started = connect.begin_connect(deps, "tenant-1", "user-1", request, NOW)
    ticket = parse_qs(urlsplit(started["start_url"]).query)["ticket"][0]
    opened = connect.start_sign_in(deps, ticket, None, NOW)
    assert opened.redirect_url and opened.cookie_name and opened.cookie_value
    state = opened.redirect_url.split("state=")[1]
    return state, deps.storage.table(tables.OAUTH_FLOWS), {opened.cookie_name: opened.cookie_value}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tenant", "tenant-2"),
        ("user", "user-2"),
        ("return_url", "https://crm.example.com/elsewhere"),
        ("expires_at", NOW + timedelta(days=1)),
        ("locale", "en"),
        ("time_zone", "UTC"),
    ],
)
def test_a_tampered_pending_sign_in_is_refused(field: str, value: Any) -> None:
    deps = services()
    state, flows, cookies = _pending(deps)
    (k,) = flows.rows
    flows.rows[k][field] = value
    outcome = connect.complete_connect(deps, {"state": state, "code": "c"}, None, NOW, cookies)
    assert deps.identity.redeemed == []
    assert outcome.status == 400 and outcome.redirect_url is None


def test_a_pending_sign_in_expires_after_ten_minutes() -> None:
    deps = services()
    state, _, cookies = _pending(deps)
    later = NOW + timedelta(minutes=10, seconds=1)
    outcome = connect.complete_connect(deps, {"state": state, "code": "c"}, None, later, cookies)
    assert "reason=expired" in (outcome.redirect_url or "") and deps.identity.redeemed == []


def test_an_untampered_pending_sign_in_is_redeemed() -> None:
    deps = services()
    state, _, cookies = _pending(deps)
    connect.complete_connect(deps, {"state": state, "code": "c"}, None, NOW, cookies)
    assert len(deps.identity.redeemed) == 1


# --- sign-in bound to the browser (issue 21) --------------------------------------------------------


def test_a_callback_without_the_flows_cookie_is_refused_and_the_flow_stays_for_its_browser() -> None:
    deps = services()
    state, flows, cookies = _pending(deps)
    for other in ({}, {name: "forged" for name in cookies}, {"__Host-cos-sign-in-0": next(iter(cookies.values()))}):
        outcome = connect.complete_connect(deps, {"state": state, "code": "c"}, None, NOW, other)
        assert (outcome.status, outcome.page_key, outcome.redirect_url) == (403, "error_other_browser", None)
    assert deps.identity.redeemed == [] and tokens(deps) == [] and len(flows.rows) == 1
    connect.complete_connect(deps, {"state": state, "code": "c"}, None, NOW, cookies)
    assert len(deps.identity.redeemed) == 1  # the browser that started it still completes


def test_a_start_url_works_once_and_only_for_two_minutes() -> None:
    deps = services()
    request = connect.ConnectRequest(None, "UTC", "en")
    started = connect.begin_connect(deps, "tenant-1", "user-1", request, NOW)
    ticket = parse_qs(urlsplit(started["start_url"]).query)["ticket"][0]
    assert started["start_url"].startswith(deps.settings.public_base_url + "/api/auth/start?")
    late = connect.start_sign_in(deps, ticket, None, NOW + timedelta(minutes=2, seconds=1))
    assert late.redirect_url is None and late.status == 400
    again = connect.begin_connect(deps, "tenant-1", "user-1", request, NOW)
    ticket = parse_qs(urlsplit(again["start_url"]).query)["ticket"][0]
    assert connect.start_sign_in(deps, ticket, None, NOW).redirect_url
    assert connect.start_sign_in(deps, ticket, None, NOW).status == 400  # single use


class OtherAccountIdentity(FakeIdentity):
    def redeem(self, flow: dict[str, Any], auth_response: dict[str, str]) -> tuple[dict[str, Any], str]:
        self.redeemed.append(flow)
        return {"oid": "oid-2", "tid": "tid-1", "preferred_username": "bruno@contoso.example"}, '{"cache": 2}'


@pytest.mark.parametrize("decision", ["connect", "cancel"])
def test_another_account_than_the_login_hint_waits_for_the_users_confirmation(decision: str) -> None:
    deps = services()
    deps.identity = OtherAccountIdentity(deps.storage)
    state, flows, cookies = _pending(deps, login_hint="Ana@Contoso.example")
    asked = connect.complete_connect(deps, {"state": state, "code": "c"}, None, NOW, cookies)
    assert asked.page_key == "confirm_account" and asked.confirmation is not None
    assert asked.confirmation["account"] == "bruno@contoso.example"
    assert tokens(deps) == []  # nothing connected before the user says so
    form = {"confirmation": asked.confirmation["id"], "decision": decision}
    elsewhere = connect.confirm_account(deps, form, {}, None, NOW)
    assert elsewhere.status == 403 and tokens(deps) == []  # only in the browser that signed in
    answered = connect.confirm_account(deps, form, cookies, None, NOW)
    if decision == "cancel":
        assert "reason=account_not_confirmed" in (answered.redirect_url or "") and tokens(deps) == []
    else:
        # Graph is down in these fakes: the confirmed account gets as far as connecting.
        assert len(tokens(deps)) == 0 and "reason=temporarily_unavailable" in (answered.redirect_url or "")
    assert flows.rows == {} or all("grant" not in row for row in flows.rows.values())
    assert connect.confirm_account(deps, form, cookies, None, NOW).status == 400  # single use


def test_the_login_hints_own_account_connects_without_a_question() -> None:
    deps = services()
    state, _, cookies = _pending(deps, login_hint="ANA@contoso.example")
    outcome = connect.complete_connect(deps, {"state": state, "code": "c"}, None, NOW, cookies)
    assert outcome.confirmation is None and deps.identity.redeemed


# --- tokens left behind -----------------------------------------------------------------------------


def test_no_token_row_survives_a_failed_connect() -> None:
    deps = services()
    state, _, cookies = _pending(deps)
    outcome = connect.complete_connect(deps, {"state": state, "code": "c"}, None, NOW, cookies)
    assert "calendar_sync=error" in (outcome.redirect_url or "")
    assert deps.identity.redeemed and tokens(deps) == []


@pytest.mark.parametrize("state", [None, "disconnected"])
def test_remove_sync_wipes_a_token_row_whatever_the_state(state: str | None) -> None:
    deps = services()
    if state:
        deps.storage.table(tables.CONNECTIONS).upsert_entity(
            {"PartitionKey": tables.key("tenant-1"), "RowKey": tables.key("user-1"), "state": state,
             "tenant": "tenant-1", "user": "user-1", "recent_errors": "[]"}
        )
    deps.identity.save_cache("tenant-1", "user-1", "{}")
    connect.disconnect(deps, "tenant-1", "user-1", "all", NOW)
    assert tokens(deps) == []


# --- the bearer token only goes to Graph ------------------------------------------------------------


class RecordingSession:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, str]]] = []

    def request(self, method: str, url: str, headers: dict[str, str], **_: Any) -> Any:
        self.sent.append((url, headers))
        return SimpleNamespace(status_code=200, headers={}, content=b'{"value": []}', json=lambda: {"value": []})


@pytest.mark.parametrize(
    "link",
    [
        "https://evil.example/v1.0/me/events?$skiptoken=x",
        "https://graph.microsoft.com.evil.example/v1.0/me/events/delta?$deltatoken=x",
        "https://graph.microsoft.com:8443/v1.0/me/events",
        "http://graph.microsoft.com/v1.0/me/events",
    ],
)
def test_a_next_link_to_another_host_is_refused_and_gets_no_token(link: str) -> None:
    from shared.outlook.graph import GraphClient

    client = GraphClient("https://graph.microsoft.com/v1.0")
    client._session = RecordingSession()
    with pytest.raises(PermanentError):
        client.call("secret-token", "GET", link)
    assert client._session.sent == []


def test_a_next_link_on_the_graph_host_is_followed() -> None:
    from shared.outlook.graph import GraphClient

    client = GraphClient("https://graph.microsoft.com/v1.0")
    client._session = RecordingSession()
    client.call("t", "GET", "https://GRAPH.microsoft.com/v1.0/me/calendarView/delta?$skiptoken=x")
    client.call("t", "GET", "me/events")
    assert [url for url, _ in client._session.sent] == [
        "https://GRAPH.microsoft.com/v1.0/me/calendarView/delta?$skiptoken=x",
        "https://graph.microsoft.com/v1.0/me/events",
    ]


# --- the body size is checked before the HMAC ------------------------------------------------------


def test_an_oversized_body_is_refused_before_any_hmac(monkeypatch: pytest.MonkeyPatch) -> None:
    import azure.functions as func

    from functions import crm_events, http
    from shared import services as services_module

    monkeypatch.setattr(services_module, "get", lambda: services())

    def no_hmac(*_: Any, **__: Any) -> None:
        raise AssertionError("the HMAC was computed over an oversized body")

    monkeypatch.setattr(crm_signature, "verify", no_hmac)
    endpoint = crm_events.crm_events._function.get_user_function()
    request = func.HttpRequest(
        method="POST", url="http://127.0.0.1/api/crm/events", headers={crm_signature.HEADER: "t=1,v2=" + "0" * 64},
        body=b" " * (http.MAX_BODY_BYTES + 1),
    )
    assert endpoint(request).status_code == 413
