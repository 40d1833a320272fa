"""Organisation connect on the emulator: the v2 admin consent endpoint, client credentials per tenant with a
secret or a certificate (real MSAL), revocation, and app-only Graph on /users/{id}/... (graph-facts-2 §1-3)."""

from __future__ import annotations

import base64
import time
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import msal
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.support.sign_in import admin_consent

from .conftest import REDIRECT_URI, Graph, event_body, raw_token

pytestmark = pytest.mark.integration

TENANT = "c0ffee00-1111-4222-8333-444455556666"
OTHER_TENANT = "beef0000-1111-4222-8333-444455556666"
ADMIN_REDIRECT = "http://localhost:7071/api/auth/admin-callback"
GRAPH_DEFAULT = "https://graph.microsoft.com/.default"
RAOP = "Access to OData is disabled: [RAOP] : Blocked by tenant configured AppOnly AccessPolicy settings."


@pytest.fixture
def org_app(ctl):
    return ctl.add_app(client_id="33333333-4444-5555-6666-777777777777", client_secret="org-s3cret",
                       redirect_uris=[ADMIN_REDIRECT, REDIRECT_URI], display_name="CRM sync (organisation)")


@pytest.fixture
def org(ctl):
    """A Microsoft 365 organisation: an administrator and two salespeople; another organisation beside it."""
    return {
        "admin": ctl.add_user("admin@fabrikam.example", tenant_id=TENANT, is_admin=True),
        "eva": ctl.add_user("eva@fabrikam.example", tenant_id=TENANT, time_zone="Romance Standard Time"),
        "raul": ctl.add_user("raul@fabrikam.example", tenant_id=TENANT),
        "outsider": ctl.add_user("olga@northwind.example", tenant_id=OTHER_TENANT),
        "other_admin": ctl.add_user("boss@northwind.example", tenant_id=OTHER_TENANT, is_admin=True),
    }


def consent_url(emu, app, tenant=TENANT, state="st-1", **extra) -> str:
    params = {"client_id": app["client_id"], "scope": GRAPH_DEFAULT, "redirect_uri": ADMIN_REDIRECT,
              "state": state, **extra}
    return f"{emu.authority_host}/{tenant}/v2.0/adminconsent?{urlencode(params)}"


def redirect_query(resp: requests.Response) -> dict:
    assert resp.status_code == 302, resp.text[:500]
    location = resp.headers["Location"]
    assert location.startswith(ADMIN_REDIRECT + "?"), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query, keep_blank_values=True).items()}


def client_credentials(emu, app, tenant=TENANT, **data) -> requests.Response:
    form = {"client_id": app["client_id"], "client_secret": app["client_secret"],
            "grant_type": "client_credentials", "scope": GRAPH_DEFAULT, **data}
    return requests.post(f"{emu.authority_host}/{tenant}/oauth2/v2.0/token", data=form, verify=emu.ca_path,
                         timeout=10)


def app_token(emu, app, tenant=TENANT) -> str:
    resp = client_credentials(emu, app, tenant)
    assert resp.status_code == 200, resp.text
    return resp.json()["access_token"]


def certificate(common_name="crm-sync") -> tuple[str, str]:
    """(private key PEM, certificate PEM): a self-signed certificate as `az ad app credential reset --create-cert`
    or Key Vault would make one."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=365)).sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return key_pem, cert.public_bytes(serialization.Encoding.PEM).decode()


def unverified(token: str) -> dict:
    return jwt.decode(token, options={"verify_signature": False})


# --- admin consent --------------------------------------------------------------------------------------------


def test_admin_consent_redirects_as_documented_and_records_the_service_principal(emu, ctl, org_app, org):
    assert ctl.admin_consents() == []
    answer = redirect_query(admin_consent(consent_url(emu, org_app), emu.ca_path, org["admin"]["upn"]))
    assert answer == {"admin_consent": "True", "tenant": TENANT, "scope": GRAPH_DEFAULT, "state": "st-1"}
    [sp] = ctl.admin_consents()
    assert sp["tenant_id"] == TENANT and sp["client_id"] == org_app["client_id"]
    assert sp["roles"] == ["Calendars.ReadWrite", "MailboxSettings.Read"] and sp["granted_at"]


def test_admin_consent_through_organizations_answers_the_admins_tenant_guid(emu, ctl, org_app, org):
    url = consent_url(emu, org_app, tenant="organizations")
    answer = redirect_query(admin_consent(url, emu.ca_path, org["other_admin"]["upn"]))
    assert answer["tenant"] == OTHER_TENANT and answer["admin_consent"] == "True"
    assert [c["tenant_id"] for c in ctl.admin_consents()] == [OTHER_TENANT]
    # A verified domain names the tenant too.
    answer = redirect_query(admin_consent(consent_url(emu, org_app, tenant="fabrikam.example"), emu.ca_path,
                                          org["admin"]["upn"]))
    assert answer["tenant"] == TENANT


def test_admin_consent_without_default_scope_grants_no_application_permissions(emu, ctl, org_app, org):
    url = consent_url(emu, org_app, scope="https://graph.microsoft.com/Calendars.ReadWrite")
    answer = redirect_query(admin_consent(url, emu.ca_path, org["admin"]["upn"]))
    assert answer["scope"] == "https://graph.microsoft.com/Calendars.ReadWrite"
    assert [c["roles"] for c in ctl.admin_consents()] == [[]]
    token = app_token(emu, org_app)
    assert "roles" not in unverified(token)
    assert Graph(emu, token)("GET", f"/users/{org['eva']['id']}/events").status_code == 403


def test_cancel_on_the_consent_page_is_access_denied_without_tenant(emu, ctl, org_app, org):
    ctl.set_identity(consent_mode="interactive")
    page = requests.get(consent_url(emu, org_app, login_hint=org["admin"]["upn"]), verify=emu.ca_path, timeout=10)
    assert page.status_code == 200 and "Calendars.ReadWrite" in page.text and "MailboxSettings.Read" in page.text
    answer = redirect_query(admin_consent(consent_url(emu, org_app), emu.ca_path, org["admin"]["upn"],
                                          accept=False))
    assert answer["error"] == "access_denied" and answer["error_description"].startswith("AADSTS65004")
    assert answer["error_uri"] == "https://login.microsoftonline.com/error?code=65004"
    assert answer["admin_consent"] == "True" and answer["state"] == "st-1" and "tenant" not in answer
    assert ctl.admin_consents() == []
    # The registered person's own choice drives the button when the test does not say.
    ctl.update_user(org["admin"]["id"], consent="refuse")
    refused = redirect_query(admin_consent(consent_url(emu, org_app), emu.ca_path, org["admin"]["upn"]))
    assert refused["error"] == "access_denied" and ctl.admin_consents() == []
    ctl.update_user(org["admin"]["id"], consent="accept")
    assert "tenant" in redirect_query(admin_consent(consent_url(emu, org_app), emu.ca_path, org["admin"]["upn"]))


def test_auto_mode_applies_the_registered_refusal(emu, ctl, org_app, org):
    refuser = ctl.add_user("it@fabrikam.example", tenant_id=TENANT, is_admin=True, consent="refuse")
    answer = redirect_query(admin_consent(consent_url(emu, org_app), emu.ca_path, refuser["upn"]))
    assert answer["error"] == "access_denied" and "AADSTS65004" in answer["error_description"]


def test_only_an_admin_of_that_tenant_may_consent(emu, ctl, org_app, org):
    not_admin = redirect_query(admin_consent(consent_url(emu, org_app), emu.ca_path, org["eva"]["upn"]))
    assert not_admin["error"] == "access_denied" and not_admin["error_description"].startswith("AADSTS90094")
    assert not_admin["admin_consent"] == "True" and "tenant" not in not_admin
    stranger = redirect_query(admin_consent(consent_url(emu, org_app), emu.ca_path, org["other_admin"]["upn"]))
    assert stranger["error"] == "access_denied" and stranger["error_description"].startswith("AADSTS50020")
    assert ctl.admin_consents() == []


def test_redirect_uri_must_match_and_common_is_refused(emu, ctl, org_app, org):
    bad = requests.get(consent_url(emu, org_app, redirect_uri="https://evil.example/cb"), verify=emu.ca_path,
                       allow_redirects=False, timeout=10)
    assert bad.status_code == 400 and "AADSTS50011" in bad.text and "Location" not in bad.headers
    common = redirect_query(admin_consent(consent_url(emu, org_app, tenant="common"), emu.ca_path,
                                          org["admin"]["upn"]))
    assert common["error"] == "invalid_request" and "tenant" not in common
    assert ctl.admin_consents() == []


# --- client credentials ---------------------------------------------------------------------------------------


def test_client_credentials_needs_the_service_principal_and_default_scope(emu, ctl, org_app, org):
    missing = client_credentials(emu, org_app)
    assert missing.status_code == 401 and missing.json()["error"] == "invalid_client"
    assert missing.json()["error_codes"] == [7000229] and org_app["client_id"] in missing.json()["error_description"]
    ctl.grant_admin_consent(TENANT, org_app["client_id"])
    scoped = client_credentials(emu, org_app, scope="https://graph.microsoft.com/Calendars.ReadWrite")
    assert scoped.status_code == 400 and scoped.json()["error"] == "invalid_scope"
    assert scoped.json()["error_codes"] == [1002012]
    wrong = client_credentials(emu, org_app, client_secret="nope")
    assert wrong.status_code == 401 and wrong.json()["error_codes"] == [7000215]
    ok = client_credentials(emu, org_app)
    assert ok.status_code == 200 and "refresh_token" not in ok.json() and ok.json()["token_type"] == "Bearer"
    claims = unverified(ok.json()["access_token"])
    assert claims["idtyp"] == "app" and claims["tid"] == TENANT and claims["appid"] == org_app["client_id"]
    assert claims["roles"] == ["Calendars.ReadWrite", "MailboxSettings.Read"]
    assert "scp" not in claims and "upn" not in claims
    assert claims["oid"] not in {u["id"] for u in org.values()}  # the service principal, not a user
    # The other organisation never consented.
    assert client_credentials(emu, org_app, tenant=OTHER_TENANT).json()["error_codes"] == [7000229]


def test_real_msal_with_a_certificate_sha1_and_sha256_thumbprints(emu, ctl, org_app, org):
    ctl.grant_admin_consent(TENANT, org_app["client_id"])
    key_pem, cert_pem = certificate()
    thumbs = ctl.add_app_certificate(org_app["client_id"], cert_pem)
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    assert thumbs == {"thumbprint_sha1": cert.fingerprint(hashes.SHA1()).hex().upper(),  # noqa: S303
                      "thumbprint_sha256": cert.fingerprint(hashes.SHA256()).hex().upper()}
    credentials = [  # what MSAL signs with each form (graph-facts-2 §2.2), read off the wire
        ({"private_key": key_pem, "thumbprint": thumbs["thumbprint_sha1"]}, "RS256", "x5t"),
        ({"private_key": key_pem, "public_certificate": cert_pem}, "PS256", "x5t#S256"),  # MSAL >= 1.35
    ]
    for credential, alg, thumbprint_header in credentials:
        wire = _RecordingSession(emu.ca_path)
        client = msal.ConfidentialClientApplication(
            org_app["client_id"], client_credential=credential, authority=f"{emu.authority_host}/{TENANT}",
            instance_discovery=False, http_client=wire, token_cache=msal.TokenCache())
        result = client.acquire_token_for_client([GRAPH_DEFAULT])
        assert "access_token" in result, result
        [form] = [d for d in wire.forms if d.get("grant_type") == "client_credentials"]
        assert "client_secret" not in form
        header = jwt.get_unverified_header(form["client_assertion"])
        assert header["alg"] == alg and thumbprint_header in header, header
        claims = unverified(result["access_token"])
        assert claims["idtyp"] == "app" and claims["appidacr"] == "2" and claims["tid"] == TENANT
        events = Graph(emu, result["access_token"])("GET", f"/users/{org['eva']['upn']}/events")
        assert events.status_code == 200, events.text
    # A key whose certificate is not on the registration is refused.
    other_key, _ = certificate("not-registered")
    stranger = msal.ConfidentialClientApplication(
        org_app["client_id"], client_credential={"private_key": other_key, "thumbprint": "AB" * 20},
        authority=f"{emu.authority_host}/{TENANT}", instance_discovery=False, verify=emu.ca_path)
    refused = stranger.acquire_token_for_client([GRAPH_DEFAULT])
    assert refused["error"] == "invalid_client" and refused["error_codes"] == [700027]


class _RecordingSession(requests.Session):
    """MSAL's http_client: a requests session that keeps the forms MSAL posts."""

    def __init__(self, ca_path: str) -> None:
        super().__init__()
        self.verify = ca_path
        self.forms: list[dict] = []

    def post(self, url, data=None, **kwargs):
        self.forms.append(dict(data or {}))
        return super().post(url, data=data, **kwargs)


def _assertion(emu, client_id, key_pem, cert_pem, *, alg="RS256", sha256=False, **claims) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    digest = cert.fingerprint(hashes.SHA256() if sha256 else hashes.SHA1())  # noqa: S303
    header = {"x5t#S256" if sha256 else "x5t": base64.urlsafe_b64encode(digest).decode().rstrip("=")}
    now = int(time.time())
    payload = {"aud": f"{emu.authority_host}/{TENANT}/oauth2/v2.0/token", "iss": client_id, "sub": client_id,
               "jti": str(uuid.uuid4()), "nbf": now, "iat": now, "exp": now + 600, **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, serialization.load_pem_private_key(key_pem.encode(), None), algorithm=alg,
                      headers=header)


def test_client_assertion_claims_are_checked(emu, ctl, org_app, org):
    ctl.grant_admin_consent(TENANT, org_app["client_id"])
    key_pem, cert_pem = certificate()
    ctl.add_app_certificate(org_app["client_id"], cert_pem)
    cid = org_app["client_id"]

    def token(assertion, **extra):
        return requests.post(f"{emu.authority_host}/{TENANT}/oauth2/v2.0/token", verify=emu.ca_path, timeout=10,
                             data={"client_id": cid, "grant_type": "client_credentials", "scope": GRAPH_DEFAULT,
                                   "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                                   "client_assertion": assertion, **extra})

    assert token(_assertion(emu, cid, key_pem, cert_pem)).status_code == 200
    assert token(_assertion(emu, cid, key_pem, cert_pem, alg="PS256", sha256=True)).status_code == 200
    past = int(time.time()) - 3600
    cases = {
        700024: _assertion(emu, cid, key_pem, cert_pem, exp=past, nbf=past - 600, iat=past - 600),
        50012: _assertion(emu, cid, key_pem, cert_pem, aud=f"{emu.authority_host}/{OTHER_TENANT}/oauth2/v2.0/token"),
        700021: _assertion(emu, cid, key_pem, cert_pem, iss="someone-else"),
    }
    for code, assertion in cases.items():
        answer = token(assertion)
        assert answer.status_code == 401 and answer.json()["error_codes"] == [code], answer.text
    no_jti = token(_assertion(emu, cid, key_pem, cert_pem, jti=None))
    assert no_jti.status_code == 401
    other_key, _ = certificate("thief")
    forged = _assertion(emu, cid, other_key, cert_pem)  # claims the registered thumbprint, wrong key
    assert token(forged).json()["error_codes"] == [700027]
    # An x5t that is a SHA-256 thumbprint (or any unknown one) finds no key.
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    wrong_kind = jwt.encode({"aud": f"{emu.authority_host}/{TENANT}/oauth2/v2.0/token", "iss": cid, "sub": cid,
                             "jti": "j", "exp": int(time.time()) + 600},
                            serialization.load_pem_private_key(key_pem.encode(), None), algorithm="RS256",
                            headers={"x5t": base64.urlsafe_b64encode(cert.fingerprint(hashes.SHA256()))
                                     .decode().rstrip("=")})
    assert token(wrong_kind).json()["error_codes"] == [700027]
    bad_type = token(_assertion(emu, cid, key_pem, cert_pem), client_assertion_type="jwt")
    assert bad_type.status_code == 400


# --- revocation -----------------------------------------------------------------------------------------------


def test_revoked_consent_refuses_new_tokens_and_issued_ones(emu, ctl, org_app, org):
    ctl.grant_admin_consent(TENANT, org_app["client_id"])
    ctl.grant_admin_consent(OTHER_TENANT, org_app["client_id"])
    token = app_token(emu, org_app)
    other = app_token(emu, org_app, OTHER_TENANT)
    assert Graph(emu, token)("GET", f"/users/{org['eva']['id']}/events").status_code == 200
    ctl.revoke_admin_consent(TENANT, org_app["client_id"])
    assert [c["tenant_id"] for c in ctl.admin_consents()] == [OTHER_TENANT]
    after = Graph(emu, token)("GET", f"/users/{org['eva']['id']}/events")
    assert after.status_code == 401 and after.json()["error"]["code"] == "InvalidAuthenticationToken"
    again = client_credentials(emu, org_app)
    assert again.status_code == 401 and again.json()["error_codes"] == [7000229]
    # The other organisation is unaffected.
    assert Graph(emu, other)("GET", f"/users/{org['outsider']['id']}/events").status_code == 200
    # A new consent brings the app back; the revoked token stays dead.
    ctl.grant_admin_consent(TENANT, org_app["client_id"])
    assert Graph(emu, app_token(emu, org_app))("GET", f"/users/{org['eva']['id']}/events").status_code == 200
    assert Graph(emu, token)("GET", f"/users/{org['eva']['id']}/events").status_code == 401


# --- Graph on /users/{id}/... ---------------------------------------------------------------------------------


def test_app_only_token_reaches_every_mailbox_endpoint_under_users(emu, ctl, org_app, org):
    ctl.grant_admin_consent(TENANT, org_app["client_id"])
    g = Graph(emu, app_token(emu, org_app))
    eva = org["eva"]
    for who in (eva["id"], eva["upn"]):
        tz = g("GET", f"/users/{who}/mailboxSettings", params={"$select": "timeZone"})
        assert tz.status_code == 200 and tz.json()["timeZone"] == "Romance Standard Time"
    created = g("POST", f"/users/{eva['upn']}/events", json=event_body("Demo con Contoso"))
    assert created.status_code == 201, created.text
    eid = created.json()["id"]
    assert g("PATCH", f"/users/{eva['id']}/events/{eid}", json={"subject": "Demo 2"}).status_code == 200
    assert g("GET", f"/users/{eva['id']}/events/{eid}").json()["subject"] == "Demo 2"
    window = {"startDateTime": "2030-03-01T00:00:00Z", "endDateTime": "2030-03-31T00:00:00Z"}
    view = g("GET", f"/users/{eva['id']}/calendarView", params=window)
    assert [e["id"] for e in view.json()["value"]] == [eid]
    delta = g("GET", f"/users/{eva['id']}/calendarView/delta", params=window)
    assert delta.status_code == 200 and [e["id"] for e in delta.json()["value"]] == [eid]
    cal = g("POST", f"/users/{eva['id']}/calendars", json={"name": "CRM"})
    assert cal.status_code == 201
    in_cal = g("POST", f"/users/{eva['id']}/calendars/{cal.json()['id']}/events", json=event_body("En CRM"))
    assert in_cal.status_code == 201
    assert {e["subject"] for e in ctl.events(eva["id"])} == {"Demo 2", "En CRM"}
    assert g("DELETE", f"/users/{eva['id']}/events/{eid}").status_code == 204


def test_me_unknown_foreign_out_of_scope_and_missing_role(emu, ctl, org_app, org):
    ctl.grant_admin_consent(TENANT, org_app["client_id"])
    g = Graph(emu, app_token(emu, org_app))
    me = g("GET", "/me/events")
    assert me.status_code == 400 and me.json()["error"]["code"] == "BadRequest"
    assert me.json()["error"]["message"] == "/me request is only valid with delegated authentication flow."
    for who in ("nobody@fabrikam.example", org["outsider"]["upn"], org["outsider"]["id"]):
        r = g("GET", f"/users/{who}/events")
        assert r.status_code == 404 and r.json()["error"]["code"] == "ErrorInvalidUser"
        assert r.json()["error"]["message"] == f"The requested user '{who}' is invalid."
    ctl.set_app_scope(TENANT, org_app["client_id"], [org["eva"]["upn"]])
    assert g("GET", f"/users/{org['eva']['id']}/events").status_code == 200
    raop = g("GET", f"/users/{org['raul']['id']}/events")
    assert raop.status_code == 403 and raop.json()["error"] == {**raop.json()["error"], "code": "ErrorAccessDenied",
                                                                "message": RAOP}
    assert g("GET", f"/users/{org['raul']['id']}/mailboxSettings").status_code == 403
    ctl.set_app_scope(TENANT, org_app["client_id"], None)
    assert g("GET", f"/users/{org['raul']['id']}/events").status_code == 200
    # An app granted only MailboxSettings.Read reads the time zone but not the calendar.
    reader = ctl.add_app(client_id="44444444-5555-6666-7777-888888888888", client_secret="r",
                         redirect_uris=[ADMIN_REDIRECT], application_permissions=["MailboxSettings.Read"])
    ctl.grant_admin_consent(TENANT, reader["client_id"])
    rg = Graph(emu, app_token(emu, reader))
    assert rg("GET", f"/users/{org['eva']['id']}/mailboxSettings").status_code == 200
    denied = rg("POST", f"/users/{org['eva']['id']}/events", json=event_body())
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "ErrorAccessDenied"
    assert denied.json()["error"]["message"] == "Access is denied. Check credentials and try again."


def test_delegated_token_reaches_its_own_mailbox_under_users(emu, ctl, org_app, org):
    eva, raul = org["eva"], org["raul"]
    delegated = Graph(emu, raw_token(emu, org_app, eva)["access_token"])
    assert delegated("GET", f"/users/{eva['id']}/events").status_code == 200
    assert delegated("GET", f"/users/{eva['upn']}/mailboxSettings").status_code == 200
    foreign = delegated("GET", f"/users/{raul['id']}/events")
    assert foreign.status_code == 403 and foreign.json()["error"]["code"] == "ErrorAccessDenied"


def test_batch_with_users_inner_urls_and_auth_counters(emu, ctl, org_app, org):
    ctl.grant_admin_consent(TENANT, org_app["client_id"])
    ctl.set_app_scope(TENANT, org_app["client_id"], [org["eva"]["id"]])
    g = Graph(emu, app_token(emu, org_app))
    ctl.reset_counters()
    eva, raul = org["eva"]["id"], org["raul"]["id"]
    batch = g("POST", "/$batch", json={"requests": [
        {"id": "1", "method": "POST", "url": f"/users/{eva}/events", "headers": {"Content-Type": "application/json"},
         "body": event_body("Uno")},
        {"id": "2", "method": "GET", "url": f"/users/{org['eva']['upn']}/mailboxSettings/timeZone"},
        {"id": "3", "method": "GET", "url": f"/users/{raul}/events"},
        {"id": "4", "method": "GET", "url": "/me/events"},
    ]})
    assert batch.status_code == 200
    by_id = {r["id"]: r for r in batch.json()["responses"]}
    assert by_id["1"]["status"] == 201 and by_id["2"]["status"] == 200
    assert by_id["2"]["body"]["value"] == "Romance Standard Time"
    assert by_id["3"]["status"] == 403 and by_id["3"]["body"]["error"]["message"] == RAOP
    assert by_id["4"]["status"] == 400
    assert [e["subject"] for e in ctl.events(eva)] == ["Uno"]
    counters = ctl.counters(eva)["mailboxes"][eva]
    assert counters["auth"] == {"app": 2, "delegated": 0}


def test_app_only_subscription_gets_notifications_and_raop_refuses_one(emu, ctl, org_app, org, receiver):
    ctl.grant_admin_consent(TENANT, org_app["client_id"])
    g = Graph(emu, app_token(emu, org_app))
    eva = org["eva"]
    expires = (ctl.clock() + timedelta(days=2)).isoformat().replace("+00:00", "Z")
    body = {"changeType": "created,updated,deleted", "notificationUrl": receiver.url,
            "resource": f"/users/{eva['id']}/events", "expirationDateTime": expires, "clientState": "org"}
    sub = g("POST", "/subscriptions", json=body)
    assert sub.status_code == 201, sub.text
    assert sub.json()["creatorId"] is None and sub.json()["applicationId"] == org_app["client_id"]
    assert [s["id"] for s in g("GET", "/subscriptions").json()["value"]] == [sub.json()["id"]]
    ctl.user_create_event(eva["id"], event_body("Desde Outlook"))
    receiver.wait_for(lambda got: any(r["kind"] == "notification" for r in got))
    [note] = receiver.notifications()
    assert note["subscriptionId"] == sub.json()["id"] and note["tenantId"] == TENANT
    assert note["changeType"] == "created" and note["clientState"] == "org"
    # Another organisation's app-only token does not see this tenant's subscriptions.
    ctl.grant_admin_consent(OTHER_TENANT, org_app["client_id"])
    assert Graph(emu, app_token(emu, org_app, OTHER_TENANT))("GET", "/subscriptions").json()["value"] == []
    ctl.set_app_scope(TENANT, org_app["client_id"], [eva["upn"]])
    calendar = g("POST", "/subscriptions", json={**body, "resource": f"/users/{org['raul']['upn']}/events"})
    assert calendar.status_code == 403 and calendar.json()["error"]["code"] == "ExtensionError"
    assert "Access to OData is disabled." in calendar.json()["error"]["message"]


def test_home_tenant_token_has_no_roles_until_consent_and_revocation_sticks(emu, ctl, org):
    home = ctl.add_app(client_id="55555555-6666-7777-8888-999999999999", client_secret="h",
                       redirect_uris=[ADMIN_REDIRECT], tenant_id=TENANT)
    claims = unverified(app_token(emu, home))  # the registration's own enterprise app: no roles yet
    assert "roles" not in claims and claims["idtyp"] == "app"
    assert ctl.admin_consents() == []
    denied = Graph(emu, app_token(emu, home))("GET", f"/users/{org['eva']['id']}/events")
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "ErrorAccessDenied"
    ctl.grant_admin_consent(TENANT, home["client_id"])
    assert unverified(app_token(emu, home))["roles"] == ["Calendars.ReadWrite", "MailboxSettings.Read"]
    ctl.revoke_admin_consent(TENANT, home["client_id"])
    assert client_credentials(emu, home).json()["error_codes"] == [7000229]
