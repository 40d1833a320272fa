"""Identity endpoints exercised by the real MSAL client and by hand."""

from __future__ import annotations

import types
from urllib.parse import parse_qs, urlsplit

import jwt
import msal
import pytest
import requests

from tests.support.sign_in import approve_device_code

from .conftest import REDIRECT_URI, SCOPES, Graph, browser_sign_in, msal_app, raw_token, sign_in

pytestmark = [
    pytest.mark.integration,
    # These sign in with the identity platform's default response mode (query), on purpose; the
    # service itself asks for form_post (shared/outlook/identity.py).
    pytest.mark.filterwarnings("ignore:response_mode='form_post' is recommended:UserWarning"),
]


def test_openid_configuration_and_instance_discovery(emu, ctl):
    cfg = requests.get(f"{emu.authority_host}/common/v2.0/.well-known/openid-configuration",
                       verify=emu.ca_path, timeout=10).json()
    assert cfg["authorization_endpoint"] == f"{emu.authority_host}/common/oauth2/v2.0/authorize"
    assert cfg["token_endpoint"] == f"{emu.authority_host}/common/oauth2/v2.0/token"
    assert cfg["issuer"] == f"{emu.authority_host}/{{tenantid}}/v2.0"
    disc = requests.get(f"{emu.authority_host}/common/discovery/instance", verify=emu.ca_path, timeout=10, params={
        "api-version": "1.0", "authorization_endpoint": f"{emu.authority_host}/common/oauth2/v2.0/authorize"}).json()
    assert disc["tenant_discovery_endpoint"].endswith("/common/v2.0/.well-known/openid-configuration")
    unknown = requests.get(f"{emu.authority_host}/nope/v2.0/.well-known/openid-configuration",
                           verify=emu.ca_path, timeout=10)
    assert unknown.status_code == 400 and "AADSTS90002" in unknown.json()["error_description"]


def test_msal_auth_code_flow_with_pkce_and_signed_id_token(emu, app, user):
    client = msal_app(emu, app)
    flow = client.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI, login_hint=user["upn"])
    query = parse_qs(urlsplit(flow["auth_uri"]).query)
    assert query["code_challenge_method"] == ["S256"]
    result = client.acquire_token_by_auth_code_flow(flow, browser_sign_in(emu, flow["auth_uri"]))
    assert "access_token" in result and "refresh_token" in result, result
    claims = result["id_token_claims"]
    assert claims["oid"] == user["id"] and claims["tid"] == user["tenant_id"]
    assert claims["preferred_username"] == user["upn"]
    # The id_token is RS256-signed with a key published at the JWKS endpoint.
    jwks = jwt.PyJWKClient(f"{emu.authority_host}/common/discovery/v2.0/keys",
                           ssl_context=__import__("ssl").create_default_context(cafile=emu.ca_path))
    key = jwks.get_signing_key_from_jwt(result["id_token"])
    decoded = jwt.decode(result["id_token"], key.key, algorithms=["RS256"], audience=app["client_id"],
                         options={"verify_iat": False, "verify_nbf": False})
    assert decoded["nonce"] and decoded["oid"] == user["id"]
    me = Graph(emu, result["access_token"])("GET", "/me").json()
    assert me["userPrincipalName"] == user["upn"] and me["id"] == user["id"]
    tz = Graph(emu, result["access_token"])("GET", "/me/mailboxSettings").json()["timeZone"]
    assert tz == "Romance Standard Time"


def test_silent_refresh_after_access_token_expiry_rotates_refresh_token(emu, app, user, monkeypatch):
    # MSAL judges cached-token expiry with time.time(); make it read the emulator clock.
    fake_time = types.SimpleNamespace(time=emu.control.clock_timestamp)
    monkeypatch.setattr(msal.token_cache, "time", fake_time)
    monkeypatch.setattr(msal.application, "time", fake_time)
    cache = msal.SerializableTokenCache()
    client, first = sign_in(emu, app, user, cache=cache)
    account = client.get_accounts(username=user["upn"])[0]
    again = client.acquire_token_silent_with_error(SCOPES, account)
    assert again["access_token"] == first["access_token"]  # still valid: served from cache
    emu.control.advance_clock(minutes=61)
    assert Graph(emu, first["access_token"])("GET", "/me").status_code == 401
    refreshed = client.acquire_token_silent_with_error(SCOPES, account)
    assert "access_token" in refreshed, refreshed
    assert refreshed["access_token"] != first["access_token"]
    assert refreshed["refresh_token"] != first["refresh_token"]  # rotated
    assert Graph(emu, refreshed["access_token"])("GET", "/me").status_code == 200


def test_expired_refresh_token_gives_invalid_grant_700082(emu, ctl, app, user):
    cache = msal.SerializableTokenCache()
    client, _ = sign_in(emu, app, user, cache=cache)
    account = client.get_accounts()[0]
    assert ctl.expire_refresh_tokens(user["id"]) >= 1
    result = client.acquire_token_silent_with_error(SCOPES, account, force_refresh=True)
    assert result["error"] == "invalid_grant"
    assert "AADSTS700082" in result["error_description"]
    assert "expired due to inactivity" in result["error_description"]


def test_user_who_refuses_consent_gets_access_denied(emu, ctl, app):
    bob = ctl.add_user("bob@contoso.example", consent="refuse")
    client = msal_app(emu, app)
    flow = client.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI, login_hint=bob["upn"])
    auth = browser_sign_in(emu, flow["auth_uri"])
    assert auth["error"] == "access_denied" and auth["state"] == flow["state"]
    result = client.acquire_token_by_auth_code_flow(flow, auth)
    assert result["error"] == "access_denied"


def test_interactive_consent_page_lets_a_person_pick_and_confirm(emu, ctl, app, user):
    other = ctl.add_user("luis@contoso.example", locale="es-ES")
    ctl.set_identity(consent_mode="interactive")
    client = msal_app(emu, app)
    flow = client.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI)
    page = requests.get(flow["auth_uri"], verify=emu.ca_path, timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert "Calendars.ReadWrite" in page.text and other["upn"] in page.text and user["upn"] in page.text
    # A form post as the browser sends it: the hidden fields plus the person's choice.
    import re

    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text))
    import html

    fields = {k: html.unescape(v) for k, v in fields.items()}
    answer = requests.post(f"{emu.authority_host}/common/oauth2/v2.0/authorize", verify=emu.ca_path, timeout=10,
                           data={**fields, "user_id": other["id"], "consent": "accept"}, allow_redirects=False)
    assert answer.status_code == 302
    auth = {k: v[0] for k, v in parse_qs(urlsplit(answer.headers["Location"]).query).items()}
    result = client.acquire_token_by_auth_code_flow(flow, auth)
    assert result["id_token_claims"]["preferred_username"] == other["upn"]


def test_consent_page_speaks_spanish_with_a_si_button(emu, ctl, app, user):
    ctl.set_identity(consent_mode="interactive")
    flow = msal_app(emu, app).initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI, login_hint=user["upn"])
    page = requests.get(flow["auth_uri"], verify=emu.ca_path, timeout=10).text
    assert ">Sí</button>" in page


def test_next_user_and_default_user_choose_who_signs_in(emu, ctl, app, user):
    other = ctl.add_user("marta@contoso.example")
    ctl.set_identity(next_user=other["id"], default_user=user["id"])
    client = msal_app(emu, app)
    for expected in (other, user):  # next_user is one-shot; then the default user
        flow = client.initiate_auth_code_flow(SCOPES, redirect_uri=REDIRECT_URI)
        result = client.acquire_token_by_auth_code_flow(flow, browser_sign_in(emu, flow["auth_uri"]))
        assert result["id_token_claims"]["oid"] == expected["id"]


def test_token_endpoint_checks_secret_pkce_redirect_and_single_use(emu, app, user):
    import base64
    import hashlib

    verifier = "v" * 43
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")

    def code():
        r = requests.get(f"{emu.authority_host}/common/oauth2/v2.0/authorize", verify=emu.ca_path, timeout=10,
                         allow_redirects=False, params={
                             "client_id": app["client_id"], "response_type": "code", "redirect_uri": REDIRECT_URI,
                             "scope": "Calendars.ReadWrite offline_access", "code_challenge": challenge,
                             "code_challenge_method": "S256", "login_hint": user["upn"]})
        return parse_qs(urlsplit(r.headers["Location"]).query)["code"][0]

    def redeem(c, **over):
        data = {"client_id": app["client_id"], "client_secret": app["client_secret"],
                "grant_type": "authorization_code", "code": c, "redirect_uri": REDIRECT_URI,
                "code_verifier": verifier, **over}
        return requests.post(f"{emu.authority_host}/common/oauth2/v2.0/token", data=data, verify=emu.ca_path,
                             timeout=10)

    assert redeem(code(), client_secret="wrong").status_code == 401
    bad = redeem(code(), code_verifier="x" * 43)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"
    assert redeem(code(), redirect_uri="http://localhost/other").json()["error"] == "invalid_grant"
    c = code()
    assert redeem(c).status_code == 200
    assert "AADSTS54005" in redeem(c).json()["error_description"]
    bad_redirect = requests.get(f"{emu.authority_host}/common/oauth2/v2.0/authorize", verify=emu.ca_path,
                                timeout=10, params={"client_id": app["client_id"], "response_type": "code",
                                                    "redirect_uri": "https://evil.example/cb", "scope": "openid"})
    assert bad_redirect.status_code == 400 and "AADSTS50011" in bad_redirect.text


def test_graph_rejects_missing_unknown_and_expired_tokens(emu, ctl, app, user):
    tok = raw_token(emu, app, user)["access_token"]
    r = requests.get(f"{emu.graph_base}/me", verify=emu.ca_path, timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "InvalidAuthenticationToken"
    assert Graph(emu, "nonsense")("GET", "/me").status_code == 401
    assert Graph(emu, tok)("GET", "/me").status_code == 200
    ctl.advance_clock(seconds=3601)
    r = Graph(emu, tok)("GET", "/me")
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


# --- device code (ENTRA v2-oauth2-device-code.md; RFC 8628) -----------------------------------------


@pytest.fixture
def public_app(ctl):
    """A registration with "Allow public client flows" on, as the live check's sign-in needs."""
    return ctl.add_app(client_id="22222222-3333-4444-5555-666666666666", display_name="Go-live check",
                       public_client=True)


def _device_code(emu, client_id, tenant="organizations", scope="Calendars.ReadWrite offline_access"):
    return requests.post(f"{emu.authority_host}/{tenant}/oauth2/v2.0/devicecode", verify=emu.ca_path,
                         timeout=10, data={"client_id": client_id, "scope": scope})


def _poll(emu, client_id, device_code, tenant="organizations", **extra):
    return requests.post(f"{emu.authority_host}/{tenant}/oauth2/v2.0/token", verify=emu.ca_path, timeout=10,
                         data={"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
                               "client_id": client_id, "device_code": device_code, **extra})


def test_msal_device_flow_waits_for_the_person_then_gets_a_delegated_token(emu, ctl, public_app, user):
    ctl.update_settings(device_code_interval=1)
    client = msal.PublicClientApplication(public_app["client_id"], authority=f"{emu.authority_host}/organizations",
                                          instance_discovery=False, verify=emu.ca_path,
                                          token_cache=msal.SerializableTokenCache())
    flow = client.initiate_device_flow(scopes=SCOPES)
    assert flow["verification_uri"] == f"{emu.authority_host}/devicelogin" and flow["interval"] == 1
    assert flow["expires_in"] == 900 and flow["user_code"] in flow["message"]
    assert flow["verification_uri"] in flow["message"]
    # Nobody signed in yet: one non-blocking poll is answered authorization_pending (70016).
    pending = client.acquire_token_by_device_flow(flow, exit_condition=lambda f: True)
    assert pending["error"] == "authorization_pending" and pending["error_codes"] == [70016], pending
    answer = approve_device_code(flow["verification_uri"], flow["user_code"], user["upn"], emu.ca_path)
    assert 'data-outcome="approved"' in answer.text, answer.text
    result = client.acquire_token_by_device_flow(flow)
    assert "access_token" in result, result
    assert result["id_token_claims"]["preferred_username"] == user["upn"]
    assert Graph(emu, result["access_token"])("GET", "/me").json()["id"] == user["id"]
    # The token cache holds the account: the next run signs in silently, without a person.
    account = client.get_accounts(username=user["upn"])[0]
    assert "access_token" in client.acquire_token_silent_with_error(SCOPES, account)
    # The device code is single use.
    again = _poll(emu, public_app["client_id"], flow["device_code"])
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_polling_faster_than_the_interval_gets_slow_down_and_msal_backs_off(emu, ctl, public_app, user):
    code = _device_code(emu, public_app["client_id"]).json()
    assert code["interval"] == 5  # Entra's usual answer
    first = _poll(emu, public_app["client_id"], code["device_code"])
    assert first.status_code == 400 and first.json()["error"] == "authorization_pending"
    second = _poll(emu, public_app["client_id"], code["device_code"])
    assert second.status_code == 400 and second.json()["error"] == "slow_down"
    # MSAL adds 5 s to the flow's interval on slow_down (RFC 8628 §3.5) and keeps polling.
    client = msal.PublicClientApplication(public_app["client_id"], authority=f"{emu.authority_host}/organizations",
                                          instance_discovery=False, verify=emu.ca_path)
    flow = {**code, "expires_at": 2**40}
    fast = client.acquire_token_by_device_flow(flow, exit_condition=lambda f: True)
    assert fast["error"] == "slow_down" and flow["interval"] == 10


def test_device_code_expires_is_declined_and_needs_public_client_flows(emu, ctl, public_app, app, user):
    code = _device_code(emu, public_app["client_id"]).json()
    ctl.advance_clock(seconds=901)
    expired = _poll(emu, public_app["client_id"], code["device_code"])
    assert expired.status_code == 400 and expired.json()["error"] == "expired_token"
    assert expired.json()["error_codes"] == [70019]
    late = approve_device_code(code["verification_uri"], code["user_code"], user["upn"], emu.ca_path)
    assert late.status_code == 400 and "AADSTS70019" in late.text

    declined = _device_code(emu, public_app["client_id"]).json()
    answer = approve_device_code(declined["verification_uri"], declined["user_code"], user["upn"], emu.ca_path,
                                 accept=False)
    assert 'data-outcome="declined"' in answer.text
    refused = _poll(emu, public_app["client_id"], declined["device_code"])
    assert refused.status_code == 400 and refused.json()["error"] == "authorization_declined"

    wrong = requests.post(code["verification_uri"], data={"otc": "NOSUCHCOD"}, verify=emu.ca_path, timeout=10)
    assert wrong.status_code == 400 and "AADSTS70018" in wrong.text
    # A registration without "Allow public client flows" needs a secret: 401 AADSTS7000218.
    confidential = _device_code(emu, app["client_id"]).json()
    no_secret = _poll(emu, app["client_id"], confidential["device_code"])
    assert no_secret.status_code == 401 and no_secret.json()["error_codes"] == [7000218]
