"""Connect, callback, disconnect and status through the dev host, with real MSAL against the
emulator, real Azurite and real HTTP (issue: "Connect with Outlook, disconnect, and status")."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from shared.rules.settings import parse_encryption_keys
from shared.store import tables
from shared.store.token_crypto import decrypt
from tests.conftest import Stack, wait_until
from tests.support.sign_in import at_microsoft

pytestmark = pytest.mark.e2e
RETURN_URL = "https://crm.example.com/calendars/activities?view=list"


def ids() -> tuple[str, str]:
    return (
        f"tenant-{uuid.uuid4().hex[:8]}",
        f"user/{uuid.uuid4().hex[:8]}",
    )  # a '/' the Table keys must survive


def user_path(tenant: str, user: str, action: str) -> str:
    from urllib.parse import quote

    return f"/api/tenants/{quote(tenant, safe='')}/users/{quote(user, safe='')}/{action}"


def start_connect(stack: Stack, tenant: str, user: str, upn: str, **body) -> dict:
    answer = stack.crm.post(
        user_path(tenant, user, "connect"),
        {"return_url": RETURN_URL, "time_zone": "America/Bogota", "locale": "es", "login_hint": upn, **body},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def browser(stack: Stack, start_url: str) -> requests.Response:
    """What the user's browser does: our start URL (the flow's cookie), Microsoft's authorize page
    (auto-consent), then our callback."""
    answer = at_microsoft(start_url, stack.emulator.ca_path)
    # form_post: the code travels in a POST body, never in a URL the browser keeps or sends on.
    assert (answer.method, answer.url) == ("POST", f"{stack.url}/api/auth/callback")
    assert "state" in answer.fields and ("code" in answer.fields or "error" in answer.fields)
    return answer.deliver()


def connect(stack: Stack, tenant: str, user: str, upn: str = "ana@contoso.example") -> dict:
    started = start_connect(stack, tenant, user, upn)
    landed = browser(stack, started["start_url"])
    assert landed.status_code == 302, landed.text
    return parse_qs(urlsplit(landed.headers["Location"]).query)


def status(stack: Stack, tenant: str, user: str) -> dict:
    answer = stack.crm.get(user_path(tenant, user, "status"))
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture()
def ana(stack: Stack) -> dict:
    return stack.control.add_user(
        "ana@contoso.example", display_name="Ana Pérez", time_zone="Romance Standard Time", locale="es-ES"
    )


def test_connect_end_to_end(stack: Stack, ana: dict) -> None:
    tenant, user = ids()
    assert status(stack, tenant, user)["state"] == "never_connected"

    started = start_connect(stack, tenant, user, ana["upn"])
    assert started["start_url"].startswith(f"{stack.url}/api/auth/start?ticket=")
    expires = datetime.fromisoformat(started["expires_at"].replace("Z", "+00:00"))
    assert timedelta(minutes=1) < expires - datetime.now(UTC) <= timedelta(minutes=2)  # the ticket's
    landed = browser(stack, started["start_url"])

    assert landed.status_code == 302
    back = urlsplit(landed.headers["Location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == "https://crm.example.com/calendars/activities"
    assert parse_qs(back.query) == {"view": ["list"], "calendar_sync": ["connected"]}

    now = status(stack, tenant, user)
    assert now["state"] == "connected"
    assert now["account"] == "ana@contoso.example"
    assert now["mailbox_time_zone"] == "Romance Standard Time"
    assert now["crm_time_zone"] == "America/Bogota"
    assert now["recent_errors"] == []
    subscriptions = stack.control.subscriptions(ana["id"])
    assert len(subscriptions) == 1  # created, so the validation handshake was answered
    subscription = subscriptions[0]
    assert subscription["notificationUrl"] == f"{stack.url}/api/graph/notifications"
    assert subscription["lifecycleNotificationUrl"] == f"{stack.url}/api/graph/lifecycle"
    assert set(subscription["changeType"].split(",")) == {"created", "updated", "deleted"}
    expiry = datetime.fromisoformat(now["subscription_expires_at"].replace("Z", "+00:00"))
    # Outlook's 10,080-minute limit, less a random share of a day (renewals of users who connected
    # together spread over the hourly runs, shared/rules/fanout.py).
    assert timedelta(days=5, hours=23) < expiry - datetime.now(UTC) <= timedelta(minutes=10080)
    connected = stack.callbacks.wait_for("connection.connected")
    assert connected[0]["tenant_id"] == tenant and connected[0]["user_id"] == user


def test_the_token_cache_is_ciphertext_at_rest(stack: Stack, ana: dict) -> None:
    tenant, user = ids()
    connect(stack, tenant, user)

    row = stack.storage.table(tables.TOKENS).get_entity(tables.key(tenant), tables.key(user))
    assert row["cache"].startswith("v1.")
    keys = parse_encryption_keys(stack.secrets["TOKEN_ENCRYPTION_KEYS"])
    cache = json.loads(decrypt(row["cache"], keys, json.dumps(["token-cache", tenant, user])))
    tokens = [
        entry["secret"]
        for kind in ("AccessToken", "RefreshToken", "IdToken")
        for entry in cache[kind].values()
    ]
    assert len(tokens) == 3  # what the sign-in really issued, to look for in clear anywhere
    everything = json.dumps(
        [dict(e) for name in tables.TABLE_NAMES for e in stack.storage.table(name).list_entities()],
        default=str,
    )
    for secret in [
        *tokens,
        stack.secrets["MS_CLIENT_SECRET"],
        stack.secrets["CRM_SHARED_SECRET"],
        stack.secrets["CRM_CALLBACK_SECRET"],
        "refresh_token",
    ]:
        assert secret not in everything
        assert not any(secret in line for line in stack.host.output)
    assert not re.search(r"eyJ[\w-]{10,}\.eyJ[\w-]{10,}\.", everything)  # no JWT of any kind in clear


def test_refused_consent_redirects_with_an_error(stack: Stack) -> None:
    stack.control.add_user("bruno@contoso.example", consent="refuse")
    tenant, user = ids()

    assert connect(stack, tenant, user, "bruno@contoso.example") == {
        "view": ["list"],
        "calendar_sync": ["error"],
        "reason": ["access_denied"],
    }
    assert status(stack, tenant, user)["state"] == "never_connected"


def test_a_replayed_callback_is_rejected_with_a_page_not_a_500(stack: Stack, ana: dict) -> None:
    tenant, user = ids()
    started = start_connect(stack, tenant, user, ana["upn"])
    answer = at_microsoft(started["start_url"], stack.emulator.ca_path)
    assert answer.deliver().status_code == 302

    replay = answer.deliver(**{"Accept-Language": "es-CO"})
    assert replay.status_code == 400
    assert replay.headers["Content-Type"].startswith("text/html")
    assert "venció o ya se usó" in replay.text
    unknown = requests.get(
        f"{stack.url}/api/auth/callback?state=forged&code=x",
        allow_redirects=False,
        timeout=30,
        headers={"Accept-Language": "en-US,en;q=0.8"},
    )
    assert unknown.status_code == 400 and "expired or was already used" in unknown.text
    # Junk posted to the callback: the same page, never a 500.
    for junk in (b"\xff\xfe", b"state=" + b"x" * 70_000, b'{"state": "x"}', b"&".join([b"a=1"] * 50)):
        posted = requests.post(
            f"{stack.url}/api/auth/callback",
            data=junk,
            headers={"Content-Type": "application/x-www-form-urlencoded", "Accept-Language": "en"},
            allow_redirects=False,
            timeout=30,
        )
        assert posted.status_code == 400 and "expired or was already used" in posted.text, junk[:20]


def test_connect_rejects_a_foreign_return_url_and_bad_signatures(stack: Stack) -> None:
    tenant, user = ids()
    path = user_path(tenant, user, "connect")
    foreign = stack.crm.post(path, {"return_url": "https://evil.example.net/", "time_zone": "America/Bogota"})
    assert foreign.status_code == 400
    assert [f["field"] for f in foreign.json()["fields"]] == ["return_url"]

    several = stack.crm.post(
        path, {"return_url": "javascript:alert(1)", "time_zone": "Mars/Olympus", "locale": 5}
    )
    assert [f["field"] for f in several.json()["fields"]] == ["return_url", "time_zone", "locale"]

    body = {"return_url": RETURN_URL, "time_zone": "America/Bogota"}
    stale = stack.crm.post(path, body, timestamp=datetime.now(UTC).timestamp() - 301)
    assert stale.status_code == 401 and "stale" in stale.json()["message"]
    forged = stack.crm.post(path, body, signature="t=1,v1=" + "0" * 64)
    assert forged.status_code == 401
    assert stack.crm.post(path, raw=b"{not json").status_code == 400
    assert status(stack, tenant, user)["state"] == "never_connected"


def test_an_idle_grant_is_refreshed_and_an_expired_one_asks_to_reconnect(stack: Stack, ana: dict) -> None:
    tenant, user = ids()
    connect(stack, tenant, user)
    tokens = stack.storage.table(tables.TOKENS)

    def age_tokens(days: int) -> str:
        row = tokens.get_entity(tables.key(tenant), tables.key(user))
        row["refreshed_at"] = datetime.now(UTC) - timedelta(days=days)
        tokens.update_entity(row)
        return row["cache"]

    before = age_tokens(31)
    stack.control.advance_clock(days=31)  # the emulator's refresh token is idle for 31 days: still valid
    assert requests.post(f"{stack.url}/admin/functions/token_health", json={}, timeout=10).status_code == 202
    wait_until(
        lambda: tokens.get_entity(tables.key(tenant), tables.key(user))["cache"] != before,
        120,  # the timer refreshes every idle grant of the stack one by one; slow on a loaded machine
        what="a refreshed (rotated) token cache",
    )
    assert status(stack, tenant, user)["state"] == "connected"
    # The host never overlaps two runs of one timer: a second run asked for while the first is
    # still going through the other grants would be skipped. Wait for the first to end.
    stack.wait_until_idle(180)

    age_tokens(31)
    stack.control.expire_refresh_tokens(ana["id"])
    requests.post(f"{stack.url}/admin/functions/token_health", json={}, timeout=10)
    wait_until(lambda: status(stack, tenant, user)["state"] == "reauth_required", 120, what="reauth_required")
    # Every grant of ana's expired, so other users of this stack may be asked to reconnect too.
    wait_until(
        lambda: any(c["user_id"] == user for c in stack.callbacks.of_type("connection.reauth_required")),
        30,
        what="this user's connection.reauth_required callback",
    )
    errors = status(stack, tenant, user)["recent_errors"]
    assert errors[0]["kind"] == "auth" and "AADSTS700082" in errors[0]["message"]


def test_disconnect_is_localized_and_idempotent(stack: Stack, ana: dict) -> None:
    tenant, user = ids()
    connect(stack, tenant, user)

    first = stack.crm.post(user_path(tenant, user, "disconnect"), {"remove_events": "none"})
    assert first.status_code == 200
    assert first.json() == {
        "status": "disconnected",
        "message": "La sincronización se eliminó correctamente.",
        "removal": None,  # nothing to remove: tokens gone and connection.disconnected queued at once
    }
    assert stack.control.subscriptions(ana["id"]) == []
    with pytest.raises(Exception, match="ResourceNotFound|Not Found"):
        stack.storage.table(tables.TOKENS).get_entity(tables.key(tenant), tables.key(user))
    assert stack.callbacks.wait_for("connection.disconnected")[0]["data"] == {"events_removed": 0}

    again = stack.crm.post(user_path(tenant, user, "disconnect"), {"remove_events": "all"})
    assert again.status_code == 200 and again.json()["status"] == "disconnected"
    assert status(stack, tenant, user)["state"] == "disconnected"
    bad = stack.crm.post(user_path(tenant, user, "disconnect"), {"remove_events": "some"})
    assert bad.status_code == 400 and bad.json()["fields"][0]["field"] == "remove_events"


def test_another_microsoft_account_is_refused_while_connected_and_accepted_after_removal(
    stack: Stack, ana: dict
) -> None:
    stack.control.add_user("bruno@contoso.example", time_zone="SA Pacific Standard Time")
    tenant, user = ids()
    connect(stack, tenant, user)
    links = stack.storage.table(tables.LINKS)
    links.upsert_entity(
        {
            "PartitionKey": tables.key(tenant, user),
            "RowKey": "act-1",
            "activity_id": "act-1",
            "version": 3,
            "outlook_event_id": "event-in-anas-mailbox",
        }
    )

    assert connect(stack, tenant, user, "bruno@contoso.example") == {
        "view": ["list"],
        "calendar_sync": ["error"],
        "reason": ["account_mismatch"],
    }
    assert status(stack, tenant, user)["account"] == "ana@contoso.example"

    assert connect(stack, tenant, user) == {
        "view": ["list"],
        "calendar_sync": ["connected"],
    }  # same account again
    assert [
        row["RowKey"] for row in links.query_entities(f"PartitionKey eq '{tables.key(tenant, user)}'")
    ] == ["act-1"]

    stack.crm.post(user_path(tenant, user, "disconnect"), {"remove_events": "none"})
    assert connect(stack, tenant, user, "bruno@contoso.example") == {
        "view": ["list"],
        "calendar_sync": ["connected"],
    }
    now = status(stack, tenant, user)
    assert (now["account"], now["mailbox_time_zone"]) == ("bruno@contoso.example", "SA Pacific Standard Time")
    assert (
        list(links.query_entities(f"PartitionKey eq '{tables.key(tenant, user)}'")) == []
    )  # Ana's mailbox links
