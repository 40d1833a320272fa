"""Issue 19: connect a whole organisation (admin consent once) and sync the users the CRM enables
with the app's own tokens, through the dev host, Azurite and the Graph + identity emulator. The app
signs its token requests with a certificate (MS_CLIENT_CERTIFICATE, a PEM file). Every "only"/"none"/
"once" assertion comes after ``stack.wait_until_idle()``; activity dates come from the clock."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit, urlunsplit

import pytest
import requests

from shared.store import tables
from tests.conftest import Stack, wait_until
from tests.e2e.push.conftest import RETURN_URL, CrmUser, ours, status, synced, upsert, user_path
from tests.e2e.push.openapi_contract import check, check_callback
from tests.e2e.test_security import table_dump
from tests.support.sign_in import admin_consent, sign_in
from tests.support.stack import launch_stack
from tests.unit.test_app_only_identity import pem_pair

pytestmark = pytest.mark.e2e
ORG_CONNECT = "/api/tenants/{tenant}/organization/connect"
ORG_DISCONNECT = "/api/tenants/{tenant}/organization/disconnect"
ENABLE = "/api/tenants/{tenant}/users/{user}/enable"


@pytest.fixture()
def stack(emulator: Any, azurite: Any, test_secrets: dict[str, str], tmp_path: Any) -> Iterator[Stack]:
    """The whole stack, the app's certificate registered at the emulator and given to the service as a
    PEM file; every callback must follow the contract."""
    pem, _ = pem_pair()
    path = tmp_path / "app.pem"
    path.write_text(pem)
    running = launch_stack(azurite, emulator, test_secrets, MS_CLIENT_CERTIFICATE=str(path))
    certificate = pem[pem.index("-----BEGIN CERTIFICATE-----") :]
    emulator.control.add_app_certificate(test_secrets["MS_CLIENT_ID"], certificate)
    running.pem = pem  # type: ignore[attr-defined]
    yield running
    running.close()
    print("--- host output (shown by pytest when the test fails) ---")
    print("".join(running.host.output[-300:]))
    assert running.callbacks.rejected == 0
    for callback in running.callbacks.received:
        check_callback(callback)


def org_path(template: str, tenant: str, user: str = "") -> str:
    return template.replace("{tenant}", quote(tenant, safe="")).replace("{user}", quote(user, safe=""))


def new_organization(stack: Stack, consent: str = "accept") -> tuple[str, str]:
    """A Microsoft tenant (GUID) with an administrator who presses ``consent``: (tenant id, admin UPN)."""
    tid = str(uuid.uuid4())
    admin = f"admin-{tid[:8]}@{tid[:8]}.example"
    stack.control.add_user(admin, display_name="Admin", tenant_id=tid, is_admin=True, consent=consent)
    return tid, admin


def add_mailbox(stack: Stack, tid: str, time_zone: str = "Romance Standard Time") -> dict[str, Any]:
    upn = f"u{uuid.uuid4().hex[:10]}@{tid[:8]}.example"
    return stack.control.add_user(upn, display_name="Ana Pérez", time_zone=time_zone, tenant_id=tid, locale="es-ES")


def consent_url(stack: Stack, tenant: str) -> str:
    body = {"return_url": RETURN_URL, "locale": "es"}
    started = stack.crm.post(org_path(ORG_CONNECT, tenant), body)
    assert started.status_code == 200, started.text
    check("POST", ORG_CONNECT, started, body)
    return str(started.json()["consent_url"])


def callback_of(stack: Stack, url: str, admin: str, *, accept: bool = True) -> str:
    """The admin's browser at Microsoft: the URL it is sent back to (our admin callback)."""
    answer = admin_consent(url, stack.emulator.ca_path, admin, accept=accept)
    assert answer.status_code == 302, answer.text
    return answer.headers["Location"]


def back_to_crm(url: str) -> dict[str, list[str]]:
    """Our admin callback: where it sends the browser (the CRM's return URL and its query)."""
    landed = requests.get(url, allow_redirects=False, timeout=30)
    assert landed.status_code == 302, landed.text
    location = landed.headers["Location"]
    assert location.startswith(RETURN_URL)
    return parse_qs(urlsplit(location).query)


def connect_organization(stack: Stack, tenant: str, tid: str, admin: str) -> None:
    back = back_to_crm(callback_of(stack, consent_url(stack, tenant), admin))
    assert back["organization_sync"] == ["connected"], back
    wait_until(lambda: [c for c in connected_orgs(stack) if c["tenant_id"] == tenant] or None, 30, "organization.connected")


def connected_orgs(stack: Stack) -> list[dict[str, Any]]:
    return stack.callbacks.of_type("organization.connected")


def enable(stack: Stack, tenant: str, mailbox: str, user: str | None = None, expect: int = 202) -> str:
    user = user or f"user/{uuid.uuid4().hex[:8]}"
    body = {"mailbox": mailbox, "time_zone": "America/Bogota", "locale": "es"}
    answer = stack.crm.post(org_path(ENABLE, tenant, user), body)
    assert answer.status_code == expect, answer.text
    check("POST", ENABLE, answer, body)
    return user


def connected_callback(stack: Stack, tenant: str, user: str) -> dict[str, Any]:
    return wait_until(
        lambda: next(
            (c for c in stack.callbacks.of_type("connection.connected") if c["tenant_id"] == tenant and c["user_id"] == user),
            None,
        ),
        30,
        f"connection.connected of {user}",
    )


def failures(stack: Stack, tenant: str, user: str) -> list[dict[str, Any]]:
    return [
        c
        for c in stack.callbacks.of_type("connection.reauth_required")
        if c["tenant_id"] == tenant and c["user_id"] == user
    ]


def enabled_user(stack: Stack, tenant: str, tid: str) -> CrmUser:
    mailbox = add_mailbox(stack, tid)
    user = enable(stack, tenant, mailbox["upn"])
    assert connected_callback(stack, tenant, user)["data"]["mode"] == "organization"
    return CrmUser(tenant, user, mailbox["id"], mailbox["upn"])


def test_an_enabled_user_gets_events_through_app_only_tokens_without_signing_in(stack: Stack) -> None:
    tid, admin = new_organization(stack)
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    connect_organization(stack, tenant, tid, admin)
    assert connected_orgs(stack)[0]["data"]["microsoft_tenant_id"] == tid

    ana = enabled_user(stack, tenant, tid)
    upsert(stack, ana)
    synced(stack, ana, "act-1", 1)

    stack.wait_until_idle()
    assert len(ours(stack, ana)) == 1
    seen = status(stack, ana)
    assert (seen["state"], seen["mode"], seen["account"]) == ("connected", "organization", ana.upn)
    assert seen["mailbox_time_zone"] == "Romance Standard Time"
    auth = stack.control.counters(ana.oid)["mailboxes"][ana.oid]["auth"]
    assert auth["app"] > 0 and auth["delegated"] == 0, auth
    assert [s["resource"].lower() for s in stack.control.subscriptions(ana.oid)] == [f"users/{ana.oid}/events"]
    assert len(stack.callbacks.of_type("organization.connected")) == 1


def test_a_refused_consent_is_reported_and_stores_nothing(stack: Stack) -> None:
    tid, admin = new_organization(stack, consent="refuse")
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"

    back = back_to_crm(callback_of(stack, consent_url(stack, tenant), admin))

    assert back["organization_sync"] == ["error"] and back["reason"] == ["access_denied"]
    failed = stack.callbacks.wait_for("organization.connect_failed")
    assert failed[0]["tenant_id"] == tenant and failed[0]["data"]["reason"] == "access_denied"
    stack.wait_until_idle()
    assert stack.callbacks.of_type("organization.connected") == []
    assert [r for r in stack.storage.table(tables.ORGANIZATIONS).list_entities() if tenant in r.values()] == []
    assert [r for r in stack.storage.table(tables.ORGANIZATIONS).list_entities() if r["PartitionKey"] == tid] == []
    mailbox = add_mailbox(stack, tid)
    enable(stack, tenant, mailbox["upn"], expect=409)  # nothing to enable users under


def test_a_mailbox_outside_the_admin_s_scope_is_access_denied_with_one_callback(stack: Stack) -> None:
    tid, admin = new_organization(stack)
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    connect_organization(stack, tenant, tid, admin)
    allowed, outside = add_mailbox(stack, tid), add_mailbox(stack, tid)
    stack.control.set_app_scope(tid, stack.secrets["MS_CLIENT_ID"], [allowed["upn"]])

    user = enable(stack, tenant, outside["upn"])
    missing = enable(stack, tenant, f"nobody@{tid[:8]}.example")

    wait_until(lambda: failures(stack, tenant, user) or None, 30, "access_denied callback")
    wait_until(lambda: failures(stack, tenant, missing) or None, 30, "mailbox_not_found callback")
    stack.wait_until_idle()
    assert [c["data"]["reason"] for c in failures(stack, tenant, user)] == ["access_denied"]
    assert [c["data"]["reason"] for c in failures(stack, tenant, missing)] == ["mailbox_not_found"]
    assert status(stack, CrmUser(tenant, user, "", ""))["state"] == "access_denied"
    assert stack.control.subscriptions(outside["id"]) == []
    assert not [c for c in stack.callbacks.of_type("connection.connected") if c["user_id"] in (user, missing)]


def test_revoked_consent_stops_every_app_only_user_of_that_tenant_only_and_a_new_consent_resumes_them(
    stack: Stack,
) -> None:
    tid, admin = new_organization(stack)
    other_tid, other_admin = new_organization(stack)
    tenant, other = f"tenant-{uuid.uuid4().hex[:8]}", f"tenant-{uuid.uuid4().hex[:8]}"
    connect_organization(stack, tenant, tid, admin)
    connect_organization(stack, other, other_tid, other_admin)
    ana, luis = enabled_user(stack, tenant, tid), enabled_user(stack, tenant, tid)
    eva = enabled_user(stack, other, other_tid)

    stack.control.revoke_admin_consent(tid, stack.secrets["MS_CLIENT_ID"])
    upsert(stack, ana)  # the first Graph call after the revocation finds out
    upsert(stack, eva)
    synced(stack, eva, "act-1", 1)
    wait_until(lambda: len(failures(stack, tenant, luis.user)) or None, 30, "luis stopped with his organisation")

    stack.wait_until_idle()
    for who in (ana, luis):
        assert [c["data"]["reason"] for c in failures(stack, tenant, who.user)] == ["organization_consent_required"]
        assert status(stack, who)["state"] == "organization_consent_required"
    assert failures(stack, other, eva.user) == []
    assert status(stack, eva)["state"] == "connected" and len(ours(stack, eva)) == 1
    assert ours(stack, ana) == []

    connect_organization(stack, tenant, tid, admin)  # the admin consents again
    connected_again = [
        c for c in stack.callbacks.of_type("connection.connected") if c["user_id"] == ana.user
    ]
    wait_until(
        lambda: len([c for c in stack.callbacks.of_type("connection.connected") if c["user_id"] == ana.user]) == 2 or None,
        30,
        "ana enabled again",
    )
    synced(stack, ana, "act-1", 1)  # what the CRM pushed meanwhile is replayed
    stack.wait_until_idle()
    assert len(connected_again) == 1 and status(stack, luis)["state"] == "connected"
    assert len(ours(stack, ana)) == 1


def test_a_signed_in_user_the_organisation_cannot_take_over_stays_signed_in_and_the_crm_is_told(
    stack: Stack,
) -> None:
    tid, admin = new_organization(stack)
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    allowed, mailbox = add_mailbox(stack, tid), add_mailbox(stack, tid)
    user = f"user/{uuid.uuid4().hex[:8]}"
    body = {"return_url": RETURN_URL, "time_zone": "America/Bogota", "locale": "es", "login_hint": mailbox["upn"]}
    started = stack.crm.post(user_path(tenant, user, "connect"), body).json()
    assert "calendar_sync=connected" in sign_in(started["start_url"], stack.emulator.ca_path).headers["Location"]
    ana = CrmUser(tenant, user, mailbox["id"], mailbox["upn"])
    connect_organization(stack, tenant, tid, admin)
    stack.control.set_app_scope(tid, stack.secrets["MS_CLIENT_ID"], [allowed["upn"]])  # not ana's mailbox

    enable(stack, tenant, mailbox["upn"], user=user)
    refused = wait_until(
        lambda: [c for c in stack.callbacks.of_type("connection.enable_failed") if c["user_id"] == user] or None,
        30,
        "connection.enable_failed",
    )
    check_callback(refused[0])
    assert refused[0]["data"]["reason"] == "access_denied"
    stack.wait_until_idle()
    assert failures(stack, tenant, user) == []  # nothing to reconnect: the user's own sign-in still works
    shown = status(stack, ana)
    assert (shown["state"], shown["mode"]) == ("connected", "delegated")
    assert "enabling by the organisation failed" in shown["recent_errors"][0]["message"]
    upsert(stack, ana)
    synced(stack, ana, "act-1", 1)  # still synced, with the user's own token
    assert len(ours(stack, ana)) == 1


def test_a_signed_in_user_moved_to_organisation_mode_keeps_one_event_per_activity(stack: Stack) -> None:
    tid, admin = new_organization(stack)
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    mailbox = add_mailbox(stack, tid)
    user = f"user/{uuid.uuid4().hex[:8]}"
    body = {"return_url": RETURN_URL, "time_zone": "America/Bogota", "locale": "es", "login_hint": mailbox["upn"]}
    started = stack.crm.post(user_path(tenant, user, "connect"), body).json()
    assert "calendar_sync=connected" in sign_in(started["start_url"], stack.emulator.ca_path).headers["Location"]
    ana = CrmUser(tenant, user, mailbox["id"], mailbox["upn"])
    upsert(stack, ana)
    synced(stack, ana, "act-1", 1)

    connect_organization(stack, tenant, tid, admin)
    enable(stack, tenant, mailbox["id"], user=user)  # by object id this time
    wait_until(
        lambda: [c for c in stack.callbacks.of_type("connection.connected") if c["data"].get("mode") == "organization"] or None,
        30,
        "moved to organisation mode",
    )
    upsert(stack, ana, version=2, subject="Renovación: segunda reunión")
    synced(stack, ana, "act-1", 2)

    stack.wait_until_idle()
    events = ours(stack, ana)
    assert len(events) == 1 and events[0]["subject"].startswith("Renovación: segunda reunión")
    assert status(stack, ana)["mode"] == "organization"
    assert [s["resource"].lower() for s in stack.control.subscriptions(ana.oid)] == [f"users/{ana.oid}/events"]

    # And back: the user signs in themselves again; still one event, now written with their own token.
    started = stack.crm.post(user_path(tenant, user, "connect"), body).json()
    assert "calendar_sync=connected" in sign_in(started["start_url"], stack.emulator.ca_path).headers["Location"]
    assert status(stack, ana)["mode"] == "delegated"
    stack.control.reset_counters()
    upsert(stack, ana, version=3, subject="Renovación: tercera reunión")
    synced(stack, ana, "act-1", 3)
    stack.wait_until_idle()
    events = ours(stack, ana)
    assert len(events) == 1 and events[0]["subject"].startswith("Renovación: tercera reunión")
    assert stack.control.counters(ana.oid)["mailboxes"][ana.oid]["auth"]["app"] == 0


def test_organisation_disconnect_stops_every_app_only_user(stack: Stack) -> None:
    tid, admin = new_organization(stack)
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    connect_organization(stack, tenant, tid, admin)
    ana, luis = enabled_user(stack, tenant, tid), enabled_user(stack, tenant, tid)
    upsert(stack, ana)
    synced(stack, ana, "act-1", 1)

    body = {"remove_events": "all"}
    answer = stack.crm.post(org_path(ORG_DISCONNECT, tenant), body)
    assert answer.status_code == 202, answer.text
    check("POST", ORG_DISCONNECT, answer, body)

    wait_until(lambda: len(stack.callbacks.of_type("connection.disconnected")) == 2 or None, 120, "both stopped")
    stack.wait_until_idle()
    assert status(stack, ana)["state"] == status(stack, luis)["state"] == "disconnected"
    assert ours(stack, ana) == []
    assert stack.control.subscriptions(ana.oid) == stack.control.subscriptions(luis.oid) == []


# --- security ----------------------------------------------------------------------------------------------


def test_the_admin_callback_s_state_is_single_use(stack: Stack) -> None:
    tid, admin = new_organization(stack)
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    url = callback_of(stack, consent_url(stack, tenant), admin)
    assert back_to_crm(url)["organization_sync"] == ["connected"]

    replayed = requests.get(url, allow_redirects=False, timeout=30)

    assert replayed.status_code == 400 and "Location" not in replayed.headers
    stack.wait_until_idle()
    assert len(stack.callbacks.of_type("organization.connected")) == 1
    assert stack.callbacks.of_type("organization.connect_failed") == []


def edited(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    return urlunsplit(parts._replace(query=urlencode({**query, **changes})))


def test_a_consent_for_one_microsoft_tenant_cannot_be_attached_to_another_crm_tenant(stack: Stack) -> None:
    victim_tid, victim_admin = new_organization(stack)
    victim = f"tenant-{uuid.uuid4().hex[:8]}"
    connect_organization(stack, victim, victim_tid, victim_admin)
    attacker_tid, attacker_admin = new_organization(stack)
    attacker = f"tenant-{uuid.uuid4().hex[:8]}"

    # The attacker's own admin consents, and the callback is edited to name the victim's tenant.
    forged = edited(callback_of(stack, consent_url(stack, attacker), attacker_admin), tenant=victim_tid)
    assert back_to_crm(forged)["reason"] == ["tenant_in_use"]
    # A made-up consent for a tenant that never consented.
    made_up = edited(callback_of(stack, consent_url(stack, attacker), attacker_admin), tenant=str(uuid.uuid4()))
    assert back_to_crm(made_up)["reason"] == ["consent_not_granted"]
    # The victim's own callback replayed for the attacker: its state is gone.
    assert requests.get(forged, allow_redirects=False, timeout=30).status_code == 400

    stack.wait_until_idle()
    assert [c["tenant_id"] for c in stack.callbacks.of_type("organization.connected")] == [victim]
    assert sorted(c["data"]["reason"] for c in stack.callbacks.of_type("organization.connect_failed")) == [
        "consent_not_granted",
        "tenant_in_use",
    ]
    mailbox = add_mailbox(stack, victim_tid)
    enable(stack, attacker, mailbox["upn"], expect=409)  # the attacker's CRM tenant has no organisation


def test_no_certificate_or_key_material_in_tables_or_logs(stack: Stack) -> None:
    tid, admin = new_organization(stack)
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    connect_organization(stack, tenant, tid, admin)
    ana = enabled_user(stack, tenant, tid)
    upsert(stack, ana)
    synced(stack, ana, "act-1", 1)
    stack.wait_until_idle()

    pem: str = stack.pem  # type: ignore[attr-defined]
    key_lines = [line for line in pem.splitlines() if line and not line.startswith("-----")]
    at_rest, logs = table_dump(stack), "".join(stack.host.output)
    for text in (at_rest, logs):
        assert "PRIVATE KEY" not in text and "CERTIFICATE" not in text
        assert not [line for line in key_lines if line in text]
        assert stack.secrets["MS_CLIENT_SECRET"] not in text


def test_backfill_and_outlook_side_changes_work_for_an_app_only_user(stack: Stack) -> None:
    from tests.e2e.push.conftest import activity

    tid, admin = new_organization(stack)
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    connect_organization(stack, tenant, tid, admin)
    ana = enabled_user(stack, tenant, tid)
    items = [activity(ana, id=f"bf-{n}", subject=f"Llamada {n}") for n in range(3)]

    body = {"activities": items, "last_page": True, "dry_run": False}
    answer = stack.crm.post(user_path(tenant, ana.user, "backfill"), body)
    assert answer.status_code == 202, answer.text
    done = stack.callbacks.wait_for("backfill.completed")
    assert done[0]["data"]["created"] == 3  # one $batch of users/{id}/events creates

    stack.wait_until_idle()
    events = ours(stack, ana)
    assert len(events) == 3
    stack.control.user_delete_event(ana.oid, events[0]["id"])  # the user deletes one in Outlook
    deleted = wait_until(
        lambda: stack.callbacks.of_type("activity.deleted_in_outlook") or None, 30, "the deletion reported"
    )
    stack.wait_until_idle()
    assert len(stack.callbacks.of_type("activity.deleted_in_outlook")) == 1
    assert deleted[0]["user_id"] == ana.user
    auth = stack.control.counters(ana.oid)["mailboxes"][ana.oid]["auth"]
    assert auth["delegated"] == 0 and auth["app"] > 0
