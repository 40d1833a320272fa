"""Issue 10: security checks, through the dev host, Azurite and the emulator.

Tokens encrypted at rest; no secret or token in the logs; ``validationToken`` only ever echoed as
text/plain; forged ``clientState`` ignored; OAuth state single-use and expiring, with PKCE; the
return_url allowlist; markup in activity text escaped in event bodies; tenants isolated; and the
pinned requirements audited for known vulnerabilities (when a vulnerability service is reachable)."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import requests

from shared.rules import crm_signature, queues
from shared.rules.event_render import parse_property_value
from shared.store import tables, work_queues
from tests.conftest import Stack, wait_until
from tests.e2e.push.conftest import (
    RETURN_URL,
    CrmUser,
    activity,
    connect_user,
    envelope,
    ours,
    property_of,
    reconnect,
    send,
    synced,
    upsert,
    user_path,
)
from tests.support.crm import SignedClient
from tests.support.sign_in import Browser, SignInAnswer, at_microsoft, confirm_account, start

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "<script>alert('x')</script>"


def table_dump(stack: Stack) -> str:
    rows = []
    for name in tables.TABLE_NAMES:
        for row in stack.storage.table(name).list_entities():
            rows.append(json.dumps({k: repr(v) for k, v in row.items()}))
    return "\n".join(rows)


def secrets_in(text: str, secrets: dict[str, str]) -> list[str]:
    found = [name for name, value in secrets.items() if value and value in text]
    found += [m[:12] + "..." for m in re.findall(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}", text)]  # JWTs
    found += [w for w in ("refresh_token", "access_token", "code_verifier") if w in text]
    return found


def test_tokens_are_encrypted_at_rest_and_nothing_secret_is_logged(stack: Stack) -> None:
    ana = connect_user(stack)
    subscription = stack.control.subscriptions(ana.oid)[0]
    upsert(stack, ana, subject=f"Llamar {SCRIPT}", description=f"Ver {SCRIPT}\n<b>hola</b> & adiós")
    synced(stack, ana, "act-1", 1)

    at_rest = table_dump(stack)
    assert stack.storage.table(tables.TOKENS).list_entities()  # there is a token cache, ...
    assert secrets_in(at_rest, {k: v for k, v in stack.secrets.items() if k != "MS_CLIENT_ID"}) == []

    answer = stack.crm.post(user_path(ana.tenant, ana.user, "disconnect"), {"remove_events": "all"})
    assert answer.status_code == 200
    stack.wait_until_idle()  # every invocation of the flow has logged all it will
    logs = "".join(stack.host.output)
    secret_values = {
        "MS_CLIENT_SECRET": stack.secrets["MS_CLIENT_SECRET"],
        "CRM_SHARED_SECRET": stack.secrets["CRM_SHARED_SECRET"],
        "CRM_CALLBACK_SECRET": stack.secrets["CRM_CALLBACK_SECRET"],
        "TOKEN_ENCRYPTION_KEYS": stack.secrets["TOKEN_ENCRYPTION_KEYS"].split(":", 1)[1],
        "clientState": subscription["clientState"],
    }
    # The logs searched are those of the whole flow: every invocation it ran is there.
    for function in (
        "connect",
        "auth_callback",
        "crm_events",
        "sync_activity",
        "graph_notifications",
        "deliver_crm_callback",
        "disconnect",
    ):
        # A queue worker runs as ``<name>_<k>`` on the tenant's shard k (issue 15).
        assert re.search(rf"Executed '{function}(_\d+)?' \(Succeeded", logs), function
    assert secrets_in(logs, secret_values) == []


def test_markup_in_activity_text_is_escaped_in_the_event_body(stack: Stack) -> None:
    ana = connect_user(stack)
    contact = {"id": "ct-1", "name": f"Ana {SCRIPT}", "email": "ana@acme.example"}
    upsert(stack, ana, description=f"Ver {SCRIPT} <img src=x onerror=alert(1)>", contact=contact)
    synced(stack, ana, "act-1", 1)
    body = ours(stack, ana)[0]["body"]["content"]
    assert "<script" not in body.lower() and "<img" not in body.lower()
    assert "&lt;script&gt;" in body and "&lt;img src=x onerror=alert(1)&gt;" in body


def test_validation_tokens_are_plain_text_and_forged_client_state_is_ignored(stack: Stack) -> None:
    ana = connect_user(stack)
    for path in ("/api/graph/notifications", "/api/graph/lifecycle"):
        token = f"Validation: {SCRIPT}<html><body onload=alert(1)>"
        answer = requests.post(f"{stack.url}{path}?validationToken={quote(token)}", timeout=30)
        assert answer.status_code == 200 and answer.text == token
        assert answer.headers["Content-Type"].startswith("text/plain")
        assert "html" not in answer.headers["Content-Type"]
        assert answer.headers.get("X-Content-Type-Options") == "nosniff"

    subscription = stack.control.subscriptions(ana.oid)[0]
    pending = stack.storage.table(tables.RECONCILE_PENDING)
    key = tables.key(ana.tenant, ana.user)

    def marked() -> list:
        return list(pending.query_entities("PartitionKey eq @pk", parameters={"pk": key}))

    def queued_for_ana() -> list:  # the queue is shared with other tests: look for this tenant only
        visible = stack.storage.queue(work_queues.name(queues.MAILBOX_RECONCILE, ana.tenant)).peek_messages(
            max_messages=32
        )
        return [m for m in visible if ana.tenant.encode() in m.content]

    wait_until(lambda: not marked() and not queued_for_ana(), timeout=60, what="the connect's own work done")
    forged = {
        "value": [
            {
                "subscriptionId": subscription["id"],
                "clientState": "not-" + subscription["clientState"],
                "changeType": "deleted",
                "resource": f"Users/{ana.oid}/Events/x",
            }
        ]
    }
    for path in ("/api/graph/notifications", "/api/graph/lifecycle"):
        answer = requests.post(f"{stack.url}{path}", json=forged, timeout=30)
        assert answer.status_code == 202
    assert marked() == [] and queued_for_ana() == []  # a change would mark; a lifecycle event would queue
    genuine = {"value": [{**forged["value"][0], "clientState": subscription["clientState"]}]}
    assert requests.post(f"{stack.url}/api/graph/notifications", json=genuine, timeout=30).status_code == 202
    assert marked()  # the control: the same notification with the right clientState is work


def _start(stack: Stack, tenant: str, user: str, upn: str, return_url: str = RETURN_URL) -> requests.Response:
    body = {"return_url": return_url, "time_zone": "America/Bogota", "locale": "es", "login_hint": upn}
    return stack.crm.post(user_path(tenant, user, "connect"), body)


def _at_microsoft(stack: Stack, start_url: str, browser: Browser | None = None) -> SignInAnswer:
    return at_microsoft(start_url, stack.emulator.ca_path, browser)


def test_oauth_state_is_single_use_expires_and_uses_pkce_and_return_urls_are_allowlisted(
    stack: Stack,
) -> None:
    upn = f"u{uuid.uuid4().hex[:8]}@contoso.example"
    stack.control.add_user(upn, time_zone="UTC")
    tenant, user = f"tenant-{uuid.uuid4().hex[:6]}", "user-1"

    for evil in (
        "https://evil.example/phish",
        "https://crm.example.com.evil.example/x",
        "https://crm.example.com@evil.example/x",
        "http://crm.example.com/x",
        "javascript:alert(1)",
    ):
        refused = _start(stack, tenant, user, upn, return_url=evil)
        assert refused.status_code == 400 and refused.json()["fields"][0]["field"] == "return_url", evil

    started = _start(stack, tenant, user, upn).json()
    browser = Browser(stack.emulator.ca_path)
    microsoft = start(started["start_url"], browser)
    query = parse_qs(urlsplit(microsoft).query)
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) >= 43
    assert datetime.fromisoformat(started["expires_at"].replace("Z", "+00:00")) <= datetime.now(
        UTC
    ) + timedelta(minutes=2, seconds=5)
    callback = _at_microsoft(stack, microsoft, browser)
    assert callback.method == "POST" and "code" not in urlsplit(callback.url).query  # form_post
    first = callback.deliver()
    assert "calendar_sync=connected" in first.headers["Location"]
    again = callback.deliver()  # the same state, replayed
    assert again.status_code == 400 and "Location" not in again.headers  # unknown state: no redirect

    # A stored flow whose expiry (or user, tenant, return URL) was changed in storage is refused:
    # those fields are bound to its ciphertext (issue 23). Expiry itself: tests/unit/test_security_review.py.
    second = _start(stack, tenant, "user-2", upn).json()
    browser = Browser(stack.emulator.ca_path)
    microsoft = start(second["start_url"], browser)
    state = parse_qs(urlsplit(microsoft).query)["state"][0]
    flows = stack.storage.table(tables.OAUTH_FLOWS)
    row = flows.get_entity(tables.key(state), "")
    row["expires_at"] = datetime.now(UTC) + timedelta(days=1)
    row["user"] = "user-1"
    flows.update_entity(row)
    tampered = _at_microsoft(stack, microsoft, browser).deliver()
    assert tampered.status_code == 400 and "Location" not in tampered.headers


def _connect_as(stack: Stack, tenant: str, user: str) -> CrmUser:
    upn = f"u{uuid.uuid4().hex[:10]}@contoso.example"
    mailbox = stack.control.add_user(upn, time_zone="Romance Standard Time", locale="es-ES")
    started = _start(stack, tenant, user, upn)
    assert started.status_code == 200, started.text
    landed = _at_microsoft(stack, started.json()["start_url"]).deliver()
    assert "calendar_sync=connected" in landed.headers["Location"]
    return CrmUser(tenant, user, mailbox["id"], upn)


def test_tenants_are_isolated_with_the_same_user_and_activity_ids(stack: Stack) -> None:
    suffix = uuid.uuid4().hex[:6]
    a = _connect_as(stack, f"tenant-a-{suffix}", "user/1")
    b = _connect_as(stack, f"tenant-b-{suffix}", "user/1")
    upsert(stack, a, subject="Solo A")
    upsert(stack, b, subject="Solo B")
    synced(stack, a, "act-1", 1)
    wait_until(
        lambda: [c for c in stack.callbacks.of_type("activity.synced") if c["tenant_id"] == b.tenant],
        what="B synced",
    )
    assert [e["subject"] for e in ours(stack, a)] == ["Solo A"]
    assert [e["subject"] for e in ours(stack, b)] == ["Solo B"]
    assert parse_property_value(property_of(ours(stack, a)[0])) == (a.tenant, "act-1")
    assert parse_property_value(property_of(ours(stack, b)[0])) == (b.tenant, "act-1")

    # Tenant A deletes the activity and disconnects: B's event, link and connection stay.
    send(
        stack, envelope(a.tenant, "activity.deleted", {"id": "act-1", "owner_user_id": a.user, "version": 2})
    )
    wait_until(lambda: ours(stack, a) == [], what="A's event removed")
    assert (
        stack.crm.post(user_path(a.tenant, a.user, "disconnect"), {"remove_events": "all"}).status_code == 200
    )
    send(stack, envelope(a.tenant, "activity.upserted", activity(a, version=3, subject="A otra vez")))
    assert [e["subject"] for e in ours(stack, b)] == ["Solo B"]
    status_b = stack.crm.get(user_path(b.tenant, b.user, "status")).json()
    assert status_b["state"] == "connected" and status_b["counts"]["synced"] == 1


def _pinned(name: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].split()[0]
    raise AssertionError(name)


def _system_ca() -> str | None:
    """The machine's CA bundle (the tests point REQUESTS_CA_BUNDLE at the emulator's CA)."""
    return os.environ.get("PIP_CERT") or ssl.get_default_verify_paths().openssl_cafile


def _reachable(url: str) -> str | None:
    session = requests.Session()
    session.trust_env = False
    try:
        answer = session.get(url, timeout=15, verify=_system_ca() or True)
    except requests.RequestException as error:
        return f"{url}: {type(error).__name__}"
    return None if answer.status_code == 200 else f"{url}: HTTP {answer.status_code}"


@pytest.mark.timeout(600)
def test_pinned_requirements_have_no_known_vulnerabilities() -> None:
    """pip-audit needs a vulnerability service: OSV (api.osv.dev) or PyPI's per-release JSON API
    (``/pypi/<name>/<version>/json``, which carries ``vulnerabilities``). When neither answers here,
    the audit cannot be done and the test says so (skip with the reason) instead of passing."""
    probes = {
        "osv": _reachable("https://api.osv.dev/v1/vulns/GHSA-j8r2-6x86-q33q"),
        "pypi": _reachable(f"https://pypi.org/pypi/requests/{_pinned('requests')}/json"),
    }
    service = next((name for name, failure in probes.items() if failure is None), None)
    if service is None:
        pytest.skip("no vulnerability service reachable: " + "; ".join(probes.values()))
    audit = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip_audit",
            "-r",
            str(ROOT / "requirements.txt"),
            "--vulnerability-service",
            service,
            "--format",
            "json",
            "--progress-spinner",
            "off",
        ],
        env={k: v for k, v in os.environ.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")},
        capture_output=True,
        text=True,
        timeout=540,
        cwd=ROOT,
    )
    report = json.loads(audit.stdout or "{}")
    skipped = [d["name"] for d in report.get("dependencies", []) if d.get("skip_reason")]
    vulnerable = {
        d["name"]: [v["id"] for v in d.get("vulns", [])]
        for d in report.get("dependencies", [])
        if d.get("vulns")
    }
    assert vulnerable == {}, vulnerable
    assert skipped == [], f"not audited: {skipped}"
    assert audit.returncode == 0, audit.stderr[-2000:]


# --- issue 21: sign-in bound to the browser that started it ----------------------------------------


def _nothing_stored(stack: Stack, tenant: str, user: str) -> None:
    stack.wait_until_idle()
    assert stack.crm.get(user_path(tenant, user, "status")).json()["state"] == "never_connected"
    with pytest.raises(Exception, match="ResourceNotFound|Not Found"):
        stack.storage.table(tables.TOKENS).get_entity(tables.key(tenant), tables.key(user))
    assert [c for c in stack.callbacks.received if c["user_id"] == user] == []


def test_a_forwarded_sign_in_finished_in_another_browser_is_refused_and_stores_nothing(stack: Stack) -> None:
    upn = f"u{uuid.uuid4().hex[:8]}@contoso.example"
    stack.control.add_user(upn, time_zone="UTC")
    tenant, user = f"tenant-{uuid.uuid4().hex[:6]}", "user-1"
    started = _start(stack, tenant, user, upn).json()
    mine, theirs = Browser(stack.emulator.ca_path), Browser(stack.emulator.ca_path)

    microsoft = start(started["start_url"], mine)  # the CRM sent the user's browser there at once
    assert theirs.get(started["start_url"]).status_code == 400  # the start URL forwarded: used already
    forwarded = _at_microsoft(stack, microsoft, theirs)  # Microsoft's URL forwarded, signed in elsewhere
    refused = forwarded.deliver(**{"Accept-Language": "en"})
    assert refused.status_code == 403 and "Location" not in refused.headers
    assert refused.headers["Content-Type"].startswith("text/html")
    assert "se empezó en otro navegador" in refused.text  # in the CRM user's language (es)
    _nothing_stored(stack, tenant, user)

    # The browser that started it still completes (the refused attempt consumed nothing).
    completed = _at_microsoft(stack, microsoft, mine).deliver()
    assert completed.status_code == 302 and "calendar_sync=connected" in completed.headers["Location"]
    assert stack.crm.get(user_path(tenant, user, "status")).json()["state"] == "connected"
    cleared = completed.headers["Set-Cookie"]
    assert "Max-Age=0" in cleared and mine.cookie_names() == []  # the flow's cookie goes with it


def test_the_flow_cookie_is_made_to_survive_microsofts_cross_site_form_post(stack: Stack) -> None:
    upn = f"u{uuid.uuid4().hex[:8]}@contoso.example"
    stack.control.add_user(upn, time_zone="UTC")
    tenant, user = f"tenant-{uuid.uuid4().hex[:6]}", "user-1"
    started = _start(stack, tenant, user, upn).json()
    opened = requests.get(started["start_url"], allow_redirects=False, timeout=30)
    assert opened.status_code == 302 and opened.headers["Location"].startswith(stack.emulator.authority_host)
    cookie = opened.headers["Set-Cookie"]
    name, _, attributes = cookie.partition(";")
    assert name.startswith("__Host-")  # this host only, path /
    flags = {part.strip().split("=")[0].lower(): part.strip() for part in attributes.split(";")}
    # A cross-site POST carries no Lax or Strict cookie; SameSite=None is kept only when Secure.
    assert flags["samesite"] == "SameSite=None" and "secure" in flags and "httponly" in flags
    assert flags["path"] == "Path=/" and "domain" not in flags
    assert 0 < int(flags["max-age"].split("=")[1]) <= 600
    # Microsoft's answer is a form POST to our callback; the cookie goes with it and connects.
    again = _start(stack, tenant, user, upn).json()
    answer = _at_microsoft(stack, again["start_url"])
    assert (answer.method, answer.url) == ("POST", f"{stack.url}/api/auth/callback")
    landed = answer.deliver()
    assert landed.status_code == 302 and "calendar_sync=connected" in landed.headers["Location"]


def test_another_account_than_the_login_hint_must_be_confirmed_on_our_page(stack: Stack) -> None:
    bruno = f"bruno{uuid.uuid4().hex[:6]}@contoso.example"
    stack.control.add_user(bruno, time_zone="UTC")
    tenant, user = f"tenant-{uuid.uuid4().hex[:6]}", "user-1"
    # The CRM knows Ana by an address Microsoft does not; Bruno signs in on that computer.
    stack.control.set_identity(next_user=bruno)
    started = _start(stack, tenant, user, "ana.alias@contoso.example").json()
    browser = Browser(stack.emulator.ca_path)
    page = _at_microsoft(stack, started["start_url"], browser).deliver()

    assert page.status_code == 200 and "Location" not in page.headers
    assert bruno in page.text and "ana.alias@contoso.example" in page.text and "Confirma la cuenta" in page.text
    _nothing_stored(stack, tenant, user)  # not connected before the user confirms
    other = Browser(stack.emulator.ca_path)
    assert confirm_account(page, other).status_code == 403  # the page's form replayed elsewhere
    _nothing_stored(stack, tenant, user)

    confirmed = confirm_account(page, browser, "connect")
    assert confirmed.status_code == 302 and "calendar_sync=connected" in confirmed.headers["Location"]
    assert stack.crm.get(user_path(tenant, user, "status")).json()["account"] == bruno
    assert confirm_account(page, browser).status_code == 400  # single use


def test_cancelling_the_account_confirmation_connects_nothing(stack: Stack) -> None:
    bruno = f"bruno{uuid.uuid4().hex[:6]}@contoso.example"
    stack.control.add_user(bruno, time_zone="UTC")
    tenant, user = f"tenant-{uuid.uuid4().hex[:6]}", "user-1"
    stack.control.set_identity(next_user=bruno)
    started = _start(stack, tenant, user, "ana@contoso.example").json()
    browser = Browser(stack.emulator.ca_path)
    page = _at_microsoft(stack, started["start_url"], browser).deliver()
    cancelled = confirm_account(page, browser, "cancel")
    assert cancelled.status_code == 302
    assert parse_qs(urlsplit(cancelled.headers["Location"]).query)["reason"] == ["account_not_confirmed"]
    _nothing_stored(stack, tenant, user)
    parked = [r for r in stack.storage.table(tables.OAUTH_FLOWS).list_entities() if "grant" in r]
    assert parked == []  # the parked grant is gone too


# --- issue 23 ---------------------------------------------------------------------------------------


def _replayable(stack: Stack, method: str, path: str, body: dict | None) -> Callable[[], requests.Response]:
    """One signed request, captured: calling the result sends the very same bytes and headers again."""
    data = b"" if body is None else json.dumps(body).encode()
    rid = uuid.uuid4().hex
    signature = crm_signature.sign(stack.secrets["CRM_SHARED_SECRET"], method, path, data, time.time(), rid)
    headers = {crm_signature.HEADER: signature, crm_signature.REQUEST_ID_HEADER: rid}
    return lambda: requests.request(method, stack.url + path, data=data, headers=headers, timeout=60)


def test_a_replayed_signed_connect_or_disconnect_is_refused_and_changes_nothing(stack: Stack) -> None:
    ana = connect_user(stack)
    connect_again = _replayable(
        stack, "POST", user_path(ana.tenant, ana.user, "connect"),
        {"return_url": RETURN_URL, "time_zone": "UTC", "locale": "es"},
    )
    assert connect_again().status_code == 200
    flows_before = list(stack.storage.table(tables.OAUTH_FLOWS).list_entities())
    replayed = connect_again()
    assert replayed.status_code == 409 and replayed.json()["error"] == "replayed_request"
    assert list(stack.storage.table(tables.OAUTH_FLOWS).list_entities()) == flows_before  # no new sign-in link

    disconnect = _replayable(stack, "POST", user_path(ana.tenant, ana.user, "disconnect"), {"remove_events": "all"})
    assert disconnect().status_code == 200
    reconnect(stack, ana.tenant, ana.user, ana.upn)
    assert disconnect().status_code == 409  # the captured "Remove sync" cannot undo the new connection
    assert stack.crm.get(user_path(ana.tenant, ana.user, "status")).json()["state"] == "connected"


def test_the_key_that_verifies_callbacks_cannot_sign_a_request(stack: Stack) -> None:
    ana = connect_user(stack)
    stack.callbacks.wait_for("connection.connected")
    assert stack.callbacks.rejected == 0  # callbacks verify with the receiver's key ...
    forger = SignedClient(stack.url, stack.callbacks.secret)
    answer = forger.post(user_path(ana.tenant, ana.user, "disconnect"), {"remove_events": "all"})
    assert answer.status_code == 401  # ... which signs no request
    assert stack.crm.get(user_path(ana.tenant, ana.user, "status")).json()["state"] == "connected"


def test_two_spellings_of_an_id_cannot_name_one_crm_user(stack: Stack) -> None:
    """'/' in an id is sent as %2F; an encoded '%' (%25) is refused, so
    "a%252Fb" (a literal "a%2Fb") cannot reach the user "a/b"."""
    tenant = f"tenant-{uuid.uuid4().hex[:6]}"
    slash = stack.crm.get(f"/api/tenants/{tenant}/users/a%2Fb/status")
    assert slash.status_code == 200 and slash.json()["user_id"] == "a/b"
    for spelling in ("a%252Fb", "a%25b", "a%252fb"):
        refused = stack.crm.get(f"/api/tenants/{tenant}/users/{spelling}/status")
        assert refused.status_code == 400 and refused.json()["fields"][0]["field"] == "user", spelling
    refused = stack.crm.get("/api/tenants/t%252F1/users/a%2Fb/status")
    assert refused.status_code == 400 and refused.json()["fields"][0]["field"] == "tenant"


def test_graph_endpoints_refuse_what_graph_never_sends(stack: Stack) -> None:
    for path in ("/api/graph/notifications", "/api/graph/lifecycle"):
        long = requests.post(f"{stack.url}{path}?validationToken={'A' * 1025}", timeout=30)
        assert long.status_code == 400 and "A" * 1025 not in long.text
        too_many = {"value": [{"subscriptionId": "x", "clientState": "y"}] * 201}
        assert requests.post(f"{stack.url}{path}", json=too_many, timeout=30).status_code == 413
        huge = b'{"value": [' + b'{"subscriptionId": "x"},' * 20_000 + b'{}]}'
        assert requests.post(f"{stack.url}{path}", data=huge, timeout=60).status_code == 413
